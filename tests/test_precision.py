"""Automatic mixed precision on CPU (bf16): both phases stay finite, and a decoder fitted under
bf16 matches the fp32 fit's validation loss within 10%. The fp16 GradScaler path of every optimiser
step (clipping on true gradients, overflow skipped rather than fatal) is tested on CPU with
Lightning's MixedPrecision plugin and a CPU GradScaler."""

import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from gorl.decoders import FlowDecoder
from gorl.errors import NonFiniteError
from gorl.optimization import guarded_step
from gorl.refinement import DecoderDataModule, validation_loss
from tests.conftest import CONF
from tests.test_decoders import _bimodal


def test_smoke_plan_under_bf16_mixed_has_finite_losses(tmp_path, gorl_in_process):
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.precision", "bf16-mixed",
                          "--model.loop.stages", "[256, 128]")
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = tmp_path.glob("runs/gorl/version_0/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    for key in ("encoder/loss", "encoder/loss_critic", "decoder/train_loss", "decoder/val_loss", "eval/return"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(math.isfinite(v) for v in values), key


def _fit(precision: str) -> float:
    pl.seed_everything(0)
    dec = FlowDecoder(1, 1, hidden=[64, 64], lr=3e-3)
    train, val = _bimodal(4096), _bimodal(1024, seed=1)
    trainer = pl.Trainer(max_epochs=15, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(dec, DecoderDataModule(train, batch_size=512))
    torch.manual_seed(123)  # same Monte-Carlo noise for both evaluations, in fp32
    return float(validation_loss(dec.float(), val))


def test_decoder_fitted_in_bf16_is_within_10_percent_of_fp32():
    fp32, bf16 = _fit("32-true"), _fit("bf16-mixed")
    assert abs(bf16 - fp32) <= 0.1 * fp32, (fp32, bf16)


class _OneStep(pl.LightningModule):
    """One guarded SGD step (lr 1) on ``loss_fn(w)`` from w = 0."""

    def __init__(self, loss_fn, max_norm):
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.zeros(4))
        self.loss_fn, self.max_norm = loss_fn, max_norm

    def training_step(self, batch, batch_idx):
        guarded_step(self, self.optimizers(), self.loss_fn(self.w), self.max_norm, "test")

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=1.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)


def _one_step(loss_fn, max_norm, fp16_scale=None):
    plugins = [] if fp16_scale is None else [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=fp16_scale))]
    module = _OneStep(loss_fn, max_norm)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", plugins=plugins, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    return module.w.detach().clone(), trainer.precision_plugin


C = torch.tensor([3.0, 4.0, 0.0, 12.0])  # norm 13


@pytest.mark.parametrize("fp16_scale", [None, 1024.0])
def test_step_clips_the_true_gradient_norm_with_and_without_the_fp16_scaler(fp16_scale):
    # Clipping scaled gradients (Lightning's clip_gradients before its own unscale) would move w
    # by 0.5 / 1024 instead of 0.5.
    w, _ = _one_step(lambda w: (w * C).sum(), max_norm=0.5, fp16_scale=fp16_scale)
    torch.testing.assert_close(w, -0.5 * C / 13.0, rtol=1e-3, atol=1e-6)
    w, _ = _one_step(lambda w: (w * C).sum(), max_norm=None, fp16_scale=fp16_scale)
    torch.testing.assert_close(w, -C, rtol=1e-3, atol=1e-6)


def test_non_finite_gradient_is_an_error_in_fp32_but_a_skipped_step_under_the_fp16_scaler():
    inf_grad = lambda w: w.sqrt().sum()  # noqa: E731  (loss 0, gradient +inf at w = 0)
    with pytest.raises(NonFiniteError, match="non-finite gradient in the test"):
        _one_step(inf_grad, max_norm=0.5)
    w, plugin = _one_step(inf_grad, max_norm=0.5, fp16_scale=1024.0)
    assert torch.equal(w, torch.zeros(4))  # the step was skipped ...
    assert plugin.scaler.get_scale() < 1024.0  # ... and the scale lowered, as GradScaler does
