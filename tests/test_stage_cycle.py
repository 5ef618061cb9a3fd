"""The stage cycle (gorl/stage_cycle.py) on tiny inputs, without Lightning: a scripted host stands in
for GoRLSystem (scripted evaluation returns, plain Adam steps, one dict of metrics), so each rule
is seen on its own: the best-encoder pick, the per-stage record and its checkpoint form, the refit
(collect -> top-q -> clip -> split -> fit), the install and the encoder reset."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from gorl.decoders import FlowDecoder
from gorl.encoders import EncoderModule
from gorl.errors import CheckpointError, ConfigError, DataQualityError
from gorl.loop import LoopConfig
from gorl.refinement import DecoderFit, RefinementConfig, data_return_mean, decoder_pairs, split
from gorl.stage_cycle import LoopState, StageCycle, StageRecord, summary_table


class ScriptedHost:
    """A :class:`~gorl.stage_cycle.StageHost` without Lightning."""

    world_size = 1

    def __init__(self, encoder: EncoderModule, trainee: FlowDecoder, returns: list[float],
                 batches: Iterator[TensorDictBase] | None = None) -> None:
        self.returns, self.batches = iter(returns), batches
        self.metrics: dict[str, float] = {}
        self.optimizers = {"encoder": torch.optim.Adam(encoder.parameters(), lr=1e-3),
                           "decoder": torch.optim.Adam(trainee.parameters(), lr=1e-2)}

    def encoder_rollout(self) -> TensorDictBase:
        raise AssertionError("no encoder update in these tests")

    def training_env_batch(self) -> TensorDictBase:
        return next(self.batches)

    def refit_env(self, stage: int):
        raise AssertionError("these tests collect from the training envs")

    def optimizer(self, which):
        return self.optimizers[which]

    def optimize(self, which, loss: torch.Tensor, max_norm: float | None = None) -> None:
        opt = self.optimizers[which]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def step_graphs(self, which):
        return None

    def eval_lanes(self):
        return None

    def new_row(self) -> None:
        pass

    def check_finite(self) -> None:
        pass

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def evaluate_returns(self) -> tuple[float, float]:
        return next(self.returns), 0.5

    def record_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.update({k: float(v) for k, v in metrics.items()})


def _batches(n: int = 4, t: int = 5) -> Iterator[TensorDictBase]:
    """Rollouts of ``n`` envs x ``t`` steps, one whole episode per env (ids unique across batches);
    env i's episode earns reward i, and its pre-tanh actions are 5x a normal draw (clipped to 3)."""
    gen, k = torch.Generator().manual_seed(1), 0
    while True:
        done = torch.zeros(n, t, 1, dtype=torch.bool)
        done[:, -1] = True
        yield TensorDict({
            "observation": torch.randn(n, t, 3, generator=gen),
            "pre_tanh": 5 * torch.randn(n, t, 2, generator=gen),
            "collector": {"traj_ids": (k * n + torch.arange(n)).unsqueeze(1).expand(n, t)},
            "next": {"reward": torch.arange(n, dtype=torch.float32).reshape(n, 1, 1).expand(n, t, 1), "done": done},
        }, batch_size=[n, t])
        k += 1


def _cycle(returns: list[float], reset: str = "warm", **refinement) -> tuple[StageCycle, ScriptedHost]:
    torch.manual_seed(0)
    encoder = EncoderModule(3, 2, actor_hidden=[8], critic_hidden=[8], reset=reset)
    decoder, trainee = FlowDecoder(3, 2, hidden=[8]), FlowDecoder(3, 2, hidden=[8])
    host = ScriptedHost(encoder, trainee, returns, _batches())
    cfg = RefinementConfig(**{"transitions": 40, "collect_from": "training_envs", "steps": 4, "val_every": 2,
                              "batch_size": 8, "val_fraction": 0.25, **refinement})
    cycle = StageCycle(host, encoder, decoder, trainee, lambda: FlowDecoder(3, 2, hidden=[8]), policy=None,
                       loop=LoopConfig(stages=[64, 32], eval_max_steps=5), refinement=cfg, seed=0)
    return cycle, host


def _nudge(encoder: EncoderModule) -> None:
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.1)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the stage's best encoder --------------------------------------------------------------------
def test_the_best_encoder_is_the_first_evaluation_with_the_highest_return():
    cycle, host = _cycle([1.0, 3.0, 3.0, 2.0])
    seen = []
    for _ in range(4):
        cycle.evaluate()
        seen.append(cycle.encoder.snapshot())
        _nudge(cycle.encoder)
    assert cycle.state.best_return == 3.0
    assert _same(cycle.best_encoder, seen[1]) and not _same(cycle.best_encoder, seen[2])  # a tie keeps the earlier one
    assert cycle.last_eval_return == 2.0
    assert host.metrics["eval/return"] == 2.0 and host.metrics["eval/return_std"] == 0.5


def test_ending_the_phase_records_best_and_final_and_restores_the_best_only_when_a_refit_follows():
    for stage, restores in ((0, True), (1, False)):  # stage 1 is the plan's last: no refit follows
        cycle, _ = _cycle([5.0, 4.0])
        cycle.state.stage = stage
        cycle.state.stage_frames = 70
        cycle.evaluate()
        best = cycle.encoder.snapshot()
        _nudge(cycle.encoder)
        cycle.evaluate()
        cycle.end_encoder_phase()
        rec = cycle.record()
        assert (rec.stage, rec.best, rec.final, rec.frames) == (stage, 5.0, 4.0, 70)
        assert cycle.state.phase == ("decoder" if restores else "done")
        assert _same(cycle.encoder.snapshot(), best) == restores


class _Lanes:
    """:class:`~gorl.eval_lanes.LaneEvaluations`' interface; the test says when each evaluation
    ends and what it returns."""

    def __init__(self) -> None:
        self.started: list[dict] = []
        self.ended: list[tuple[dict, torch.Tensor]] = []

    def start(self, tag: dict, snapshot: dict) -> None:
        self.started.append(tag)

    def pending(self) -> int:
        return len(self.started)

    def end_next(self, returns: list[float]) -> None:
        self.ended.append((self.started.pop(0), torch.tensor(returns)))

    def take_results(self) -> list:
        out, self.ended = self.ended, []
        return out


def test_lane_evaluations_offer_the_agent_as_it_was_when_due_in_the_order_they_were_due():
    """``loop.eval_lanes``: the result of an evaluation that ran while training went on is offered
    with the snapshot taken when it was due (not the encoder as it is when the result comes), and is
    logged with the frames of that moment; a phase end finishes those still running first."""
    cycle, host = _cycle([1.0])
    lanes = _Lanes()
    host.eval_lanes = lambda: lanes
    rows = []
    host.new_row = lambda: rows.append(dict(host.metrics))
    finished = []

    def finish() -> None:  # side-only steps until every lane evaluation has ended: here the second, mean 1.0
        while lanes.pending():
            lanes.end_next([0.5, 1.5])
        finished.append(True)

    host.finish_eval_lanes = finish
    st = cycle.state
    st.frames = 16
    due = cycle.encoder.snapshot()
    cycle.start_lane_evaluation(lanes)
    _nudge(cycle.encoder)
    st.frames = 32
    cycle.start_lane_evaluation(lanes)
    _nudge(cycle.encoder)
    st.frames = 48
    lanes.end_next([4.0, 6.0])  # the first ends while training goes on: mean 5.0
    cycle.take_lane_results()
    assert st.best_return == 5.0 and _same(cycle.best_encoder, due) and not _same(cycle.best_encoder, cycle.encoder.snapshot())
    assert host.metrics["eval/frames"] == 16.0 and host.metrics["eval/return"] == 5.0
    # the phase ends: the second (mean 1.0) is finished first, in a row of its own, then the final one
    cycle._eval_in_row = False
    cycle.finish_lane_evaluations()
    cycle.evaluate()  # scripted: 1.0
    assert finished and rows and rows[-1]["eval/frames"] == 32.0 and rows[-1]["eval/return"] == 1.0
    assert host.metrics["eval/frames"] == 48.0 and _same(cycle.best_encoder, due)


# --- the per-stage record --------------------------------------------------------------------------
def test_stage_records_checkpoint_as_plain_dicts_and_load_back_typed(tmp_path):
    state = LoopState(stage=1, phase="encoder", frames=96)
    state.record(0).best = 3.5
    state.record(1).initial = 2.0
    saved = state.state_dict()
    assert saved["history"] == [{**StageRecord(stage=0).__dict__, "best": 3.5},
                                {**StageRecord(stage=1).__dict__, "initial": 2.0}]
    torch.save(saved, tmp_path / "s.pt")
    restored = LoopState()
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored == state and isinstance(restored.history[0], StageRecord)
    with pytest.raises(CheckpointError, match="fields this version does not know: \\['surprise'\\]"):
        LoopState().load_state_dict({**saved, "history": [{"stage": 0, "surprise": 1}]})


def test_summary_table_puts_each_refit_on_the_stage_it_produced():
    records = [StageRecord(stage=0, best=10.0, final=9.0, frames=64, fit_steps=1500, best_val_loss=0.25,
                           fit_seconds=12.4),
               StageRecord(stage=1, initial=8.0, best=11.0, final=float("nan"), frames=32)]
    lines = summary_table(records).splitlines()
    assert lines[2] == "| 0 | - | 10.0 | 9.0 | 64 | - | - | - |"
    assert lines[3] == "| 1 | 8.0 | 11.0 | - | 32 | 1,500 | 0.2500 | 12 s |"


# --- refit, install, reset -------------------------------------------------------------------------
def test_a_refit_collects_filters_clips_fits_and_then_starts_the_next_stage():
    cycle, host = _cycle([6.0, 7.0, 4.0], top_q=0.5)
    st = cycle.state
    cycle.evaluate()
    _nudge(cycle.encoder)
    cycle.evaluate()  # the stage's best: 7.0
    best = cycle.encoder.snapshot()
    cycle.end_encoder_phase()
    host.optimize("encoder", sum(p.sum() for p in cycle.encoder.parameters()))  # Adam moments to be dropped
    assert st.phase == "decoder" and host.optimizers["encoder"].state

    cycle.decoder_iteration()  # collect and prepare
    fit = cycle.fit
    # 40 frames = 2 batches of 4 episodes x 5 steps; the top half by return: rewards 2 and 3 of each batch
    assert st.collect_frames == 40 and cycle.record(0).decoder_data == 40 and host.metrics["decoder/dataset_size"] == 20
    assert len(fit.train) + len(fit.val) == 20 and len(fit.val) == 5  # 1 of 4 episodes validates
    assert fit.train["action"].abs().max() == 3.0  # clipped at 3, and the clip did bite

    cycle.decoder_iteration()  # round 1: steps 0 -> 2
    assert st.phase == "decoder" and cycle.fit.steps == 2
    cycle.decoder_iteration()  # round 2: the fit's last; installs, resets, evaluates stage 1
    assert cycle.fit is None and (st.stage, st.phase) == (1, "encoder") and st.best_return == 4.0
    for module in (cycle.decoder, cycle.trainee):
        assert _same(module.state_dict(), fit.best_state)
    assert _same(cycle.encoder.snapshot(), best)  # reset "warm": from the finished stage's best snapshot
    assert not host.optimizers["encoder"].state  # stale Adam moments dropped
    prev, rec = cycle.record(0), cycle.record(1)
    assert (prev.fit_steps, prev.best_val_loss) == (4, fit.best_val) and prev.fit_seconds > 0
    assert (rec.initial, rec.drop_from_best, rec.drop_from_final) == (4.0, 3.0, 3.0)
    assert host.metrics["stage/initial_return"] == 4.0 and host.metrics["stage/fit_steps"] == 4
    # the initial evaluation is a candidate for the new stage's best agent
    assert _same(cycle.best_encoder, cycle.encoder.snapshot())


def test_reset_fresh_starts_away_from_the_best_and_warm_start_fits_from_the_acting_decoder():
    cycle, host = _cycle([1.0], reset="fresh", warm_start=True)
    best = cycle.best_encoder = cycle.encoder.snapshot()
    fit = SimpleNamespace(steps=2, best_val=0.1, best_step=2, best_state=FlowDecoder(3, 2, hidden=[8]).state_dict())
    cycle.record().best = cycle.record().final = 1.0
    cycle.state.phase = "decoder"
    cycle.begin_stage(fit)
    assert not _same(cycle.encoder.snapshot(), best)  # a fresh encoder, not the best one
    # stage 1's refit warm-starts the trainee from the acting (just installed) decoder's network
    # (its observation statistics are the new data's)
    with torch.no_grad():
        cycle.trainee.net.inp.bias.add_(1.0)
    cycle.start_fit(cycle.collect_decoder_data())
    def net(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if k.startswith("net.")}

    assert _same(net(cycle.trainee.state_dict()), net(cycle.decoder.state_dict()))
    assert _same(net(cycle.decoder.state_dict()), net(fit.best_state))
    cycle.refine_cfg.warm_start = False
    cycle.start_fit(cycle.collect_decoder_data())
    assert not _same(net(cycle.trainee.state_dict()), net(cycle.decoder.state_dict()))  # a fresh decoder otherwise


# --- per-refit settings, handoff, quality gate, warm statistics -------------------------------------
def test_per_refit_settings_resolve_by_the_stage_the_refit_ends_and_are_checked_whole():
    cfg = RefinementConfig(steps=None, epochs=[100, 20], warm_start=[False, True], pairwise_weight=[0.0, 0.1, 100.0],
                           episodes=[1024, 128], handoff=["final", "best"], min_data_return=[60.0, None],
                           decoder_obs_stats=["refit", "cumulative", "frozen"])
    first, second, later = cfg.for_refit(0), cfg.for_refit(1), cfg.for_refit(5)
    assert (first.epochs, first.warm_start, first.pairwise_weight, first.episodes, first.handoff, first.min_data_return) == \
        (100, False, 0.0, 1024, "final", 60.0)
    assert (second.epochs, second.warm_start, second.pairwise_weight, second.episodes, second.handoff, second.min_data_return) == \
        (20, True, 0.1, 128, "best", None)
    assert (later.pairwise_weight, later.decoder_obs_stats, later.epochs) == (100.0, "frozen", 20)  # the last entry holds
    assert later.batch_size == cfg.batch_size and later.val_fraction == cfg.val_fraction  # the rest is shared
    with pytest.raises(ConfigError, match="exactly one of refinement.steps and refinement.epochs"):
        RefinementConfig(steps=None, epochs=[100, None])  # the second refit would have neither
    with pytest.raises(ConfigError, match=r"refinement.epochs must be >= 1 or null, got 0 \(in the settings of the refit after stage 1\)"):
        RefinementConfig(steps=None, epochs=[100, 0])
    with pytest.raises(ConfigError, match="refinement.handoff must be one of best, final, got 'bset'"):
        RefinementConfig(handoff=["best", "bset"])
    with pytest.raises(ConfigError, match="at least one entry"):
        RefinementConfig(warm_start=[])
    with pytest.raises(ConfigError, match="min_data_return needs collect_from: reset"):
        RefinementConfig(collect_from="training_envs", min_data_return=1.0)


def test_final_handoff_keeps_the_encoder_as_it_ended_for_the_data_and_the_warm_start():
    cycle, host = _cycle([5.0, 4.0, 1.0], handoff="final", warm_start=False)
    cycle.evaluate()
    best = cycle.encoder.snapshot()
    _nudge(cycle.encoder)
    cycle.evaluate()  # the final one, worse than the best
    final = cycle.encoder.snapshot()
    cycle.end_encoder_phase()
    assert cycle.state.phase == "decoder" and _same(cycle.encoder.snapshot(), final) and not _same(final, best)
    cycle.decoder_iteration()  # collects with the encoder as it ended
    cycle.decoder_iteration()
    cycle.decoder_iteration()  # the fit's last round: install, warm reset, stage 1
    assert cycle.state.stage == 1 and _same(cycle.encoder.snapshot(), final)  # warm from the final agent
    # ... and per refit: "best" for the refit after stage 1 restores that stage's best as before
    cycle, _ = _cycle([5.0, 4.0], handoff=["final", "best"])
    cycle.state.stage = 1
    cycle.loop_cfg.stages = [64, 32, 32]
    cycle.evaluate()
    best = cycle.encoder.snapshot()
    _nudge(cycle.encoder)
    cycle.evaluate()
    cycle.end_encoder_phase()
    assert _same(cycle.encoder.snapshot(), best)


def test_the_quality_gate_stops_the_run_before_a_fit_on_weak_data():
    cycle, host = _cycle([1.0])
    rc = RefinementConfig(min_data_return=60.0)
    cycle.check_data_quality(60.0, rc)  # at the threshold: passes
    with pytest.raises(DataQualityError, match="stage 0's refit data has mean episode return 59.9, below refinement.min_data_return 60"):
        cycle.check_data_quality(59.9, rc)
    with pytest.raises(DataQualityError):
        cycle.check_data_quality(float("nan"), rc)  # a NaN return never passes
    cycle.check_data_quality(-1e9, RefinementConfig())  # no gate
    data = next(_batches())  # 4 episodes earning 0, 1, 2, 3 per step for 5 steps
    assert data_return_mean(decoder_pairs(data)) == pytest.approx(5 * (0 + 1 + 2 + 3) / 4)


@pytest.mark.parametrize("mode", ["refit", "cumulative", "frozen", "legacy_new_batch"])
def test_warm_fits_carry_the_decoder_observation_statistics_as_configured(mode):
    cycle, host = _cycle([1.0], warm_start=True, decoder_obs_stats=mode)
    old_obs = 3.0 + 2.0 * torch.randn(500, 3)
    cycle.decoder.fit_obs_statistics(old_obs)
    cycle.state.stage = 1  # a warm start needs an acting decoder that has been fitted
    new_obs = cycle.start_fit(cycle.collect_decoder_data()).train["observation"]
    expected = FlowDecoder(3, 2, hidden=[8]).obs_norm
    if mode != "refit":
        expected.update(old_obs)
    if mode in ("refit", "cumulative", "legacy_new_batch"):
        expected.update(new_obs, batch_only_var=mode == "legacy_new_batch")
    got = cycle.trainee.obs_norm
    for name in ("count", "mean", "var"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name))
    if mode == "frozen":
        assert float(got.count) == 500.0
    # the first refit always recomputes (its acting decoder is the identity, with no statistics)
    cycle, _ = _cycle([1.0], warm_start=True, decoder_obs_stats=mode)
    fit = cycle.start_fit(cycle.collect_decoder_data())
    assert float(cycle.trainee.obs_norm.count) == len(fit.train)


def test_transition_split_and_epoch_permutations_as_the_authors_humanoid_fits():
    pairs = decoder_pairs(torch.cat([next(_batches(n=8, t=10)) for _ in range(1)]))  # 80 pairs, 8 episodes
    train, val = split(pairs, RefinementConfig(split_unit="transition", val_fraction=0.25), torch.Generator().manual_seed(0))
    assert (len(train), len(val)) == (60, 20)
    assert set(train["episode"].tolist()) & set(val["episode"].tolist())  # episodes cut across the split
    train_e, val_e = split(pairs, RefinementConfig(val_fraction=0.25), torch.Generator().manual_seed(0))
    assert not set(train_e["episode"].tolist()) & set(val_e["episode"].tolist())  # the default keeps them whole

    cfg = RefinementConfig(steps=None, epochs=3, batch_size=16, batch_sampling="epoch_permutation", val_every=None)
    fit = DecoderFit(cfg, train, val, seed=7)
    per_epoch = 60 // 16  # 3 batches, 12 rows of each epoch dropped
    rows = [fit.batch_indices(step, 60, 16, torch.device("cpu")) for step in range(3 * per_epoch)]
    for epoch in range(3):
        seen = torch.cat(rows[epoch * per_epoch : (epoch + 1) * per_epoch])
        assert len(seen) == 48 and len(set(seen.tolist())) == 48  # without replacement within an epoch
    assert not torch.equal(rows[0], rows[per_epoch])  # a new permutation each epoch
    resumed = DecoderFit.from_state_dict(cfg, fit.state_dict())  # a resumed fit draws the same batches
    assert all(torch.equal(resumed.batch_indices(step, 60, 16, torch.device("cpu")), rows[step]) for step in range(len(rows)))
    assert fit.total_steps == 3 * per_epoch
