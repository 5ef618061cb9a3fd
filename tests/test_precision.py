"""Automatic mixed precision on CPU (bf16): both phases stay finite, and a decoder fitted under
bf16 matches the fp32 fit's validation loss within 10%."""

import csv
import math

import lightning.pytorch as pl
import torch

from gorl.decoders import FlowDecoder
from gorl.refinement import DecoderDataModule, validation_loss
from tests.conftest import CONF, run_gorl
from tests.test_decoders import _bimodal


def test_smoke_plan_under_bf16_mixed_has_finite_losses(tmp_path):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.precision", "bf16-mixed",
                   "--model.loop.stages", "[256, 128]", cwd=tmp_path)
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
