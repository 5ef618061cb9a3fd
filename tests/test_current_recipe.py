"""The mechanisms of the authors' current release, one test each: fits measured in steps, target
clipping, the pairwise term (the only way a rollout latent enters a fit), fixed-noise validation and
the endpoint metric, the linear diffusion schedule, post-/pre-update observation statistics and
their batch-only accumulation, per-minibatch GAE, per-stage reset modes, and the stage boundary
(an evaluation before any update that counts for the stage's best agent)."""

from __future__ import annotations

import csv
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from gorl.decoders import DiffusionDecoder, FlowDecoder
from gorl.decoders.diffusion import linear_alpha_bar
from gorl.errors import ConfigError
from gorl.loop import LoopConfig
from gorl.networks import RunningNorm
from gorl.refinement import DecoderFit, RefinementConfig, clip_targets, decoder_pairs, endpoint_mse, validation_loss
from tests.test_encoder import _encoder, _fixed_rollout
from tests.test_loop import smoke_system


def _pairs(n: int = 256, seed: int = 0, latent: torch.Tensor | None = None) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 3, generator=g)
    action = torch.tanh(obs[:, :2]) + 0.1 * torch.randn(n, 2, generator=g)
    data = {"observation": obs, "action": action}
    if latent is not None:
        data["latent"] = latent
    return TensorDict(data, batch_size=[n])


def _run_fit(cfg: RefinementConfig, train: TensorDict, val: TensorDict, cls=FlowDecoder, lr: float = 3e-4) -> tuple[DecoderFit, torch.nn.Module]:
    torch.manual_seed(0)
    dec = cls(3, 2, hidden=[16, 16], lr=lr)
    opt = dec.configure_optimizers()
    fit = DecoderFit(cfg, train, val)
    while not fit.done:
        fit.step(dec, lambda loss: (opt.zero_grad(), loss.backward(), opt.step()))
    return fit, dec


# --- decoder fits ------------------------------------------------------------------------------
def test_a_fit_in_steps_runs_its_steps_and_keeps_the_best_validation_weights():
    cfg = RefinementConfig(transitions=256, steps=25, val_every=10, batch_size=32)
    fit, dec = _run_fit(cfg, _pairs(), _pairs(64, seed=1))
    assert fit.steps == 25 and fit.rounds == 3  # 10 + 10 + 5: the last round is cut to the budget
    dec.load_state_dict(fit.best_state)
    assert float(validation_loss(dec, fit.val, 32)) == pytest.approx(fit.best_val, rel=1e-5)  # fixed noise: reproducible


def test_early_stopping_is_optional():
    train, val = _pairs(), _pairs(64, seed=1)
    off = RefinementConfig(transitions=256, steps=200, val_every=1, batch_size=32)
    on = RefinementConfig(transitions=256, steps=200, val_every=1, batch_size=32, patience=1)
    # lr 0: validation never improves on step 0, so patience 1 stops after the first round.
    assert _run_fit(off, train, val, lr=0.0)[0].steps == 200
    assert _run_fit(on, train, val, lr=0.0)[0].steps == 1


def test_the_first_round_scores_the_untrained_decoder_as_a_candidate():
    # lr 0: nothing is learned, so the step-0 weights (identity) must be the ones kept.
    train, val = _pairs(), _pairs(64, seed=1)
    torch.manual_seed(0)
    dec = FlowDecoder(3, 2, hidden=[16, 16], lr=0.0)
    start = {k: v.clone() for k, v in dec.state_dict().items()}
    opt = dec.configure_optimizers()
    fit = DecoderFit(RefinementConfig(transitions=256, steps=4, val_every=2, batch_size=32), train, val)
    while not fit.done:
        fit.step(dec, lambda loss: (opt.zero_grad(), loss.backward(), opt.step()))
    assert fit.best_step == 0 and all(torch.equal(start[k], v) for k, v in fit.best_state.items())


def test_steps_and_epochs_are_exclusive_and_epochs_follow_the_authors_rule():
    with pytest.raises(ConfigError, match="exactly one of refinement.steps and refinement.epochs"):
        RefinementConfig(steps=10, epochs=2)
    with pytest.raises(ConfigError, match="exactly one"):
        RefinementConfig(steps=None, epochs=None)
    cfg = RefinementConfig(steps=None, epochs=50, batch_size=8192)
    assert cfg.total_steps(3_687_000) == 22_500  # their 4,096 full episodes, 409 held out


def test_target_clip_clamps_pre_tanh_targets_and_null_means_none():
    data = _pairs()
    data["action"][0] = torch.tensor([7.0, -9.0])
    assert clip_targets(data.clone(), 3.0)["action"].abs().max() == 3.0
    assert clip_targets(data.clone(), None)["action"][0].tolist() == [7.0, -9.0]
    with pytest.raises(ConfigError, match="target_clip"):
        RefinementConfig(target_clip=0.0)


def test_pairwise_term_is_the_only_way_a_rollout_latent_enters_a_fit():
    rollout = TensorDict({
        "observation": torch.randn(2, 8, 3), "latent": torch.randn(2, 8, 2), "pre_tanh": torch.randn(2, 8, 2),
        "collector": {"traj_ids": torch.zeros(2, 8, dtype=torch.long)}, "next": {"reward": torch.zeros(2, 8, 1)},
    }, batch_size=[2, 8])
    assert "latent" not in decoder_pairs(rollout).keys()
    assert torch.equal(decoder_pairs(rollout, keep_latent=True)["latent"], rollout["latent"].reshape(-1, 2))

    val = _pairs(64, seed=1)
    z1, z2 = torch.randn(256, 2), torch.full((256, 2), float("nan"))
    off = RefinementConfig(transitions=256, steps=6, val_every=3, batch_size=32, pairwise_weight=0.0)
    fit_a, dec_a = _run_fit(off, _pairs(latent=z1), val)
    fit_b, dec_b = _run_fit(off, _pairs(latent=z2), val)  # NaN latents: never read with weight 0
    assert "latent" not in fit_a.train.keys()
    assert all(torch.equal(dec_a.state_dict()[k], v) for k, v in dec_b.state_dict().items())

    on = RefinementConfig(transitions=256, steps=6, val_every=3, batch_size=32, pairwise_weight=1.0)
    val_z = _pairs(64, seed=1, latent=torch.randn(64, 2))
    fit_c, dec_c = _run_fit(on, _pairs(latent=z1), val_z)
    fit_d, dec_d = _run_fit(on, _pairs(latent=-z1), val_z)
    assert "latent" in fit_c.train.keys()
    assert not all(torch.equal(dec_c.state_dict()[k], v) for k, v in dec_d.state_dict().items())
    assert math.isfinite(fit_c.best_val) and fit_c.best_val != fit_a.best_val


def test_endpoint_mse_decodes_fresh_prior_noise_not_the_rollout_latent():
    data = _pairs(latent=torch.full((256, 2), float("nan")))
    data["action"].zero_()
    dec = FlowDecoder(3, 2, hidden=[8])  # untrained: the identity, so decode(s, z) = z
    assert float(endpoint_mse(dec, data)) == pytest.approx(1.0, abs=0.15)  # E|z|^2 per dim = 1


# --- diffusion decoder --------------------------------------------------------------------------
def test_linear_alpha_bar_is_the_authors_schedule():
    abar = linear_alpha_bar(10)
    t = torch.arange(11, dtype=torch.float64) / 10
    assert torch.allclose(abar, 1e-3 + (1 - 1e-3) * (1 - t))
    assert abar[0] == 1.0 and abar[-1] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="schedule"):
        DiffusionDecoder(3, 2, schedule="quadratic")
    assert torch.equal(DiffusionDecoder(3, 2).sqrt_abar, abar.sqrt().float())  # alpha_min: theirs by default
    assert float(DiffusionDecoder(3, 2, alpha_min=0.05).sqrt_abar[-1]) == pytest.approx(0.05**0.5)
    with pytest.raises(ConfigError, match="alpha_min"):
        DiffusionDecoder(3, 2, alpha_min=0.0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_diffusion_decoder_is_the_identity_at_init_on_either_schedule(schedule):
    dec = DiffusionDecoder(3, 2, hidden=[16], schedule=schedule, draws=4)
    eps = torch.randn(64, 2)
    assert torch.allclose(dec.decode(torch.randn(64, 3), eps), eps)
    assert dec.loss(torch.randn(5, 3), torch.randn(5, 2)).shape == ()


# --- encoder --------------------------------------------------------------------------------------
def _counts_seen_by_updates(enc, rollout) -> list[float]:
    seen = []
    enc.train_on(rollout, lambda loss, norm: seen.append(float(enc.obs_norm.count)), stage=0)
    return seen


def test_post_update_statistics_keep_the_rollouts_statistics_during_the_update():
    enc = _encoder(obs_stats="post_update", epochs=1)
    enc.obs_norm.update(torch.randn(50, 3))
    rollout = _fixed_rollout(enc)
    seen = _counts_seen_by_updates(enc, rollout)
    assert set(seen) == {50.0} and float(enc.obs_norm.count) == 50 + rollout.numel()
    pre = _encoder(obs_stats="pre_update", epochs=1)
    pre.obs_norm.update(torch.randn(50, 3))
    assert set(_counts_seen_by_updates(pre, _fixed_rollout(pre))) == {50.0 + rollout.numel()}


def test_batch_only_accumulation_is_the_authors_legacy_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, (40, 3)), rng.normal(-1, 0.5, (60, 3))
    norm = RunningNorm(3)
    norm.update(torch.from_numpy(a))
    norm.update(torch.from_numpy(b), batch_only_var=True)
    m0 = a.mean(0)
    m1 = m0 + (b - m0).sum(0) / 100
    expected = ((b - m0) * (b - m1)).sum(0) / 100  # their var_sum of the batch alone over the total count
    assert np.allclose(norm.mean.numpy(), m1) and np.allclose(norm.var.numpy(), expected)


def test_per_minibatch_gae_uses_whole_segments_and_the_current_critic(monkeypatch):
    enc = _encoder(gae="minibatch", epochs=1, minibatch_size=32)  # 2 segments of 16 steps per minibatch
    rollout = _fixed_rollout(enc)
    batches = []
    original = enc._loss_at

    def spy_loss_at(stage):  # the minibatches the update's loss is given
        loss = original(stage)

        def spy(batch, advantage):
            batches.append(batch.clone())
            return loss(batch, advantage)

        return spy

    monkeypatch.setattr(enc, "_loss_at", spy_loss_at)
    reference = rollout.clone()
    reference["next", "reward"] = reference["next", "reward"] * enc.hparams.reward_scale
    with torch.no_grad():
        enc.gae(reference)  # what GAE once per rollout, with the critic before any step, gives
    enc.train_on(rollout, lambda loss, norm: (loss.backward(), [p.data.add_(0.05 * torch.randn_like(p)) for p in enc.parameters()]), stage=0)
    assert len(batches) == 4 and all(len(b) == 32 for b in batches)
    ref = reference.reshape(-1)
    index = {tuple(o.tolist()): i for i, o in enumerate(ref["observation"])}
    rows = [[index[tuple(o.tolist())] for o in b["observation"]] for b in batches]
    assert all(len({r // 16 for r in rs}) == 2 for rs in rows)  # two whole 16-step segments
    first = torch.tensor(rows[0])
    assert torch.allclose(batches[0]["advantage"], ref["advantage"][first], atol=1e-5)  # critic not yet moved
    later = torch.tensor(rows[-1])
    assert not torch.allclose(batches[-1]["advantage"], ref["advantage"][later], atol=1e-5)  # recomputed after steps


def test_reset_modes_per_stage():
    enc = _encoder(reset=["fresh", "fresh", "warm"])
    enc.train_on(_fixed_rollout(enc), lambda loss, norm: (loss.backward(), [p.data.add_(0.1) for p in enc.parameters()]), stage=0)
    best = enc.snapshot()
    enc.reset(best, stage=1)  # stage 1: fresh, a newly initialised network (their FRESH), not the prior
    loc, scale = enc.actor_net(torch.randn(5, 3))
    assert not torch.allclose(loc, torch.zeros_like(loc)) and not torch.allclose(scale, torch.ones_like(scale))
    assert all(torch.equal(enc.state_dict()[k], torch.zeros_like(v)) for k, v in enc.state_dict().items()
               if k.startswith(("actor_net.net.", "critic_net.net.")) and k.endswith(".bias"))
    assert float(enc.obs_norm.count) == 0
    enc.reset(best, stage=2)  # stage 2 and later: warm, the best agent exactly
    assert all(torch.equal(best[k], v) for k, v in enc.state_dict().items())

    wv = _encoder(reset=["fresh", "warm_value"])
    wv.train_on(_fixed_rollout(wv), lambda loss, norm: (loss.backward(), [p.data.add_(0.1) for p in wv.parameters()]), stage=0)
    best = wv.snapshot()
    wv.reset(best, stage=1)
    loc, scale = wv.actor_net(torch.randn(5, 3))
    assert torch.equal(loc, torch.zeros_like(loc)) and torch.allclose(scale, torch.ones_like(scale))  # exactly N(0, I)
    kept = [k for k in best if k.startswith("critic_net.") or k.startswith("obs_norm.")]
    assert kept and all(torch.equal(best[k], wv.state_dict()[k]) for k in kept)
    with pytest.raises(ConfigError, match="reset"):
        _encoder(reset=["fresh", "lukewarm"])


# --- stage boundary -------------------------------------------------------------------------------
def test_evals_per_stage_spread_evaluations_over_each_stage():
    cfg = LoopConfig(stages=[60e6, 30e6], evals_per_stage=10)
    assert cfg.eval_interval(0) == 6e6 and cfg.eval_interval(1) == 3e6


def test_every_stage_starts_with_an_evaluation_before_any_update(tmp_path):
    system = smoke_system()
    logger = pl.loggers.CSVLogger(tmp_path, name="b", version=0)
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system)
    hist = system.loop_state.history
    assert [h.stage for h in hist] == [0, 1, 2]
    rows = list(csv.DictReader(open(tmp_path / "b" / "version_0" / "metrics.csv")))
    for k in (1, 2):
        stage_rows = [r for r in rows if r.get("loop/stage") and int(float(r["loop/stage"])) == k]
        first_eval = next(r for r in stage_rows if r.get("eval/return"))
        # the stage's first evaluation is the initial one, in a row with no encoder update
        assert first_eval.get("stage/initial_return") and not first_eval.get("encoder/loss")
        initial = float(first_eval["stage/initial_return"])
        assert hist[k].initial == pytest.approx(initial)
        assert float(first_eval["stage/drop_from_final"]) == pytest.approx(hist[k - 1].final - initial)
        assert float(first_eval["stage/drop_from_best"]) == pytest.approx(hist[k - 1].best - initial)
        evals = [float(r["eval/return"]) for r in stage_rows if r.get("eval/return")]
        assert hist[k].best == pytest.approx(max(evals))  # the initial evaluation is a candidate
        assert hist[k - 1].fit_steps == 6
