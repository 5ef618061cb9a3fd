"""The stage loop: walks every phase of a tiny plan, and resumes mid-stage from a checkpoint to
the same stage / phase / frame count as an uninterrupted run."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from gorl.decoders import FlowDecoder
from gorl.encoders import EncoderModule
from gorl.envs.factory import EnvConfig
from gorl.loop import LoopConfig, authors_eval_updates
from gorl.refinement import RefinementConfig
from gorl.system import GoRLSystem
from tests.conftest import CONF


def smoke_system(seed: int = 0) -> GoRLSystem:
    return GoRLSystem(
        env=EnvConfig(task="toy-bandit", num_envs=16, eval_envs=8),
        encoder=partial(EncoderModule, actor_hidden=[16, 16], critic_hidden=[32, 32], unroll=8, epochs=2, minibatch_size=64),
        decoder=partial(FlowDecoder, hidden=[32, 32]),
        loop=LoopConfig(stages=[512, 256, 256], eval_every=256, eval_max_steps=10),
        refinement=RefinementConfig(transitions=512, steps=6, val_every=2, batch_size=128),
        seed=seed,
    )


class Recorder(pl.Callback):
    """Records (stage, phase, frames) after every iteration; optionally stops and saves at a point."""

    def __init__(self, stop_when=None, path=None):
        self.trace, self.stop_when, self.path = [], stop_when, path
        self.start = None

    def on_train_start(self, trainer, module):
        st = module.loop_state
        self.start = (st.stage, st.phase, st.frames)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        st = module.loop_state
        self.trace.append((st.stage, st.phase, st.frames))
        if self.stop_when is not None and self.stop_when(module):
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True
            self.stop_when = None


def _fit(system, callbacks, ckpt_path=None):
    pl.seed_everything(0)
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(system, ckpt_path=ckpt_path)
    return trainer


def _phases(trace):
    seen = []
    for stage, phase, _ in trace:
        if not seen or seen[-1] != (stage, phase):
            seen.append((stage, phase))
    return seen


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[GoRLSystem, Recorder]:
    """One uninterrupted fit of the smoke plan, shared by the tests that compare against it."""
    rec = Recorder()
    system = smoke_system()
    _fit(system, [rec])
    return system, rec


def _stopped_in_decoder(m: GoRLSystem) -> bool:
    return m.loop_state.phase == "decoder" and m.fit_state is not None and m.fit_state.rounds >= 1


@pytest.fixture(scope="module")
def stopped_in_decoder(tmp_path_factory) -> tuple[GoRLSystem, Recorder, Path]:
    """The smoke plan stopped (and saved) after one round of stage 0's decoder refinement."""
    ckpt = tmp_path_factory.mktemp("loop") / "mid.ckpt"
    first = Recorder(stop_when=_stopped_in_decoder, path=ckpt)
    system = smoke_system()
    _fit(system, [first])
    return system, first, ckpt


def test_loop_walks_every_phase_of_the_plan(uninterrupted):
    system, rec = uninterrupted
    assert _phases(rec.trace) == [(0, "encoder"), (0, "decoder"), (1, "encoder"), (1, "decoder"), (2, "encoder"), (2, "done")]
    assert system.loop_state.frames >= 1024 and system.loop_state.collect_frames >= 1024
    # The acting decoder after stage 0 is the fitted one, no longer the identity.
    obs, eps = torch.randn(4, 1), torch.randn(4, 1)
    assert not torch.allclose(system.acting_decoder().decode(obs, eps), eps)


def _resume_matches_uninterrupted(full: Recorder, first: Recorder, ckpt: Path) -> tuple[int, str, int]:
    """Resumes ``ckpt`` (saved where ``first`` stopped); returns the (stage, phase, frames) it resumed at."""
    saved = first.trace[-1]
    second = Recorder()
    _fit(smoke_system(), [second], ckpt_path=str(ckpt))
    # Resumes exactly where it stopped, then walks the same remaining phases to the same end.
    assert second.start == saved
    assert _phases(first.trace + second.trace) == _phases(full.trace)
    assert second.trace[-1] == full.trace[-1]
    return saved


def test_resume_mid_encoder_phase(tmp_path, uninterrupted):
    ckpt = tmp_path / "mid.ckpt"
    first = Recorder(stop_when=lambda m: m.loop_state.stage == 1 and m.loop_state.phase == "encoder" and m.loop_state.stage_frames > 0, path=ckpt)
    _fit(smoke_system(), [first])
    saved = _resume_matches_uninterrupted(uninterrupted[1], first, ckpt)
    assert saved[0:2] == (1, "encoder") and 512 < saved[2] < 768


def test_resume_mid_decoder_refinement(uninterrupted, stopped_in_decoder):
    _, first, ckpt = stopped_in_decoder
    saved = _resume_matches_uninterrupted(uninterrupted[1], first, ckpt)
    assert saved[0:2] == (0, "decoder")


def test_checkpoint_restores_loop_state_and_dataset(stopped_in_decoder):
    system, _, ckpt = stopped_in_decoder
    restored = smoke_system()
    restored.on_load_checkpoint(torch.load(ckpt, weights_only=False))
    assert restored.loop_state.state_dict() == system.loop_state.state_dict()
    assert restored.fit_state.steps == system.fit_state.steps
    assert torch.equal(restored.fit_state.train["action"], system.fit_state.train["action"])


def test_hopper_config_runs_two_decoder_refinements_on_real_dm_control(gorl_in_process):
    res = gorl_in_process(  # in this process: about the config and the loop, not the command line
        "fit", "--config", str(CONF / "hopper.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--model.env.num_envs", "8", "--model.env.eval_envs", "2",
        "--model.encoder.unroll", "16", "--model.encoder.epochs", "1", "--model.encoder.minibatch_size", "128",
        "--model.loop.stages", "[256, 128, 128]", "--model.loop.eval_every", "1e9", "--model.loop.eval_max_steps", "20",
        "--model.refinement.episodes", "null", "--model.refinement.transitions", "256", "--model.refinement.epochs", "2",
        "--model.refinement.val_every", "2", "--model.refinement.batch_size", "64",
        "--model.refinement.collect_envs", "2", "--model.refinement.max_episode_steps", "20",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert out.count("decoder fitted") == 2
    assert "finished stage 2" in out
    # Every boundary is measured: an evaluation before the new stage's first update, and the table.
    assert out.count("starts at eval return") == 2
    assert "| stage | initial | best | final |" in out


def test_collector_runs_the_policy_on_the_module_device_and_stores_on_the_env_device():
    # Left to TorchRL's defaults, the collector copies every step onto the env device even on an
    # all-CPU run.
    system = smoke_system()
    system.setup("fit")
    try:
        # Lightning calls setup() before it moves the module to its device, so the collector (which
        # binds the policy's device) must not exist yet; it is built in on_fit_start, after the move.
        # (Built in setup, every CUDA run acted with a CPU policy beside CUDA weights: H200, 2026-12-04.)
        assert system.collector is None
        system.on_fit_start()
        collector = system.collector
        assert collector.policy_device == system.device
        assert collector.env_device == collector.storing_device == system.train_env.device
        rollout = next(system._batches)
        assert rollout.device == system.train_env.device and rollout["action"].shape[:1] == (16,)
    finally:
        system.teardown("fit")


def test_rollouts_per_update_feeds_one_update_with_k_rollouts_of_the_same_weights(monkeypatch):
    """The authors' update shape (conf/recipes/paper_gpu.yaml): k rollouts side by side, one update."""
    k = 3
    system = GoRLSystem(
        env=EnvConfig(task="toy-bandit", num_envs=4, eval_envs=2),
        encoder=partial(EncoderModule, actor_hidden=[8], critic_hidden=[8], unroll=8, rollouts_per_update=k, epochs=1, minibatch_size=64),
        decoder=partial(FlowDecoder, hidden=[8]),
        loop=LoopConfig(stages=[192], eval_every=96, eval_max_steps=5),
        refinement=RefinementConfig(transitions=32, steps=2, val_every=1, batch_size=16),
    )
    seen, train_on = [], system.encoder.train_on

    def spy(rollout, optimize, stage):
        seen.append((tuple(rollout.shape), torch.nn.utils.parameters_to_vector(system.encoder.actor_net.parameters()).detach().clone()))
        return train_on(rollout, optimize, stage)

    monkeypatch.setattr(system.encoder, "train_on", spy)
    rec = Recorder()
    _fit(system, [rec])
    assert [shape for shape, _ in seen] == [(k * 4, 8), (k * 4, 8)]  # 2 updates of 3 x 4 envs x 8 steps
    assert [frames for _, phase, frames in rec.trace if phase != "decoder"][:2] == [96, 192]
    assert not torch.equal(seen[0][1], seen[1][1])  # an update between them, none within


def test_rollouts_per_update_refuses_reward_norm():
    from gorl.errors import ConfigError

    with pytest.raises(ConfigError, match="rollouts_per_update: 1"):
        EncoderModule(3, 2, rollouts_per_update=2, reward_norm=True)


def test_authors_evaluation_points():
    """``np.linspace(1, U, num_evals - 1, dtype=int)`` plus U (train_stage, dm_control_training.py
    @8a0209c): for their 61-update stage 0 of 983,040-frame updates, and a stage shorter than N."""
    assert authors_eval_updates(61, 10) == {1, 8, 16, 23, 31, 38, 46, 53, 61}
    assert authors_eval_updates(31, 10) == {1, 4, 8, 12, 16, 19, 23, 27, 31}
    assert authors_eval_updates(3, 10) == {1, 2, 3}
    assert authors_eval_updates(5, 1) == {1, 5}


def _eval_points(schedule: str) -> list[tuple[int, int]]:
    """(stage, updates made in the stage) at every evaluation of a 2-stage toy plan of 10 + 5 updates."""
    system = GoRLSystem(
        env=EnvConfig(task="toy-bandit", num_envs=16, eval_envs=4),
        encoder=partial(EncoderModule, actor_hidden=[8], critic_hidden=[8], unroll=8, epochs=1, minibatch_size=128),
        decoder=partial(FlowDecoder, hidden=[8]),
        loop=LoopConfig(stages=[1280, 640], evals_per_stage=4, eval_schedule=schedule, eval_max_steps=10),
        refinement=RefinementConfig(transitions=64, collect_envs=8, max_episode_steps=10, steps=1, val_every=1, batch_size=32),
    )
    points, evaluate_returns = [], system.evaluate_returns

    def spy():
        points.append((system.loop_state.stage, system.loop_state.stage_updates))
        return evaluate_returns()

    system.evaluate_returns = spy
    _fit(system, [])
    return points


def test_evaluations_per_stage_are_counted_and_placed_as_the_authors():
    # 128 frames per update: stage 0 has 10 updates, stage 1 has 5. With N = 4 the authors evaluate
    # before the first update and after updates floor(linspace(1, U, 3)) and U, in every stage.
    assert _eval_points("authors") == [(0, 0), (0, 1), (0, 5), (0, 10), (1, 0), (1, 1), (1, 3), (1, 5)]
    # Ours before, still reachable: no stage-0 evaluation before an update, none after update 1 of later stages.
    assert _eval_points("even") == [(0, 1), (0, 4), (0, 7), (0, 10), (1, 0), (1, 2), (1, 4), (1, 5)]


def test_bounded_action_semantics_need_a_latent_policy_that_can_be_bounded():
    from gorl.encoders import LatentSAC
    from gorl.errors import ConfigError

    env = EnvConfig(task="toy-bandit", num_envs=2, eval_envs=2)
    with pytest.raises(ConfigError, match="action_semantics: bounded needs a latent policy that can be tanh-bounded"):
        GoRLSystem(env=env, encoder=partial(LatentSAC, actor_hidden=[8], critic_hidden=[8]), action_semantics="bounded")
    with pytest.raises(ConfigError, match="must be squashed or bounded, got 'clamped'"):
        GoRLSystem(env=env, action_semantics="clamped")
    system = GoRLSystem(env=env, encoder=partial(EncoderModule, actor_hidden=[8], critic_hidden=[8]), action_semantics="bounded")
    assert system.encoder.bounded_latent and system.squash.bounded


def test_a_first_decoder_of_another_type_cannot_seed_a_warm_refit():
    from gorl.decoders import DiffusionDecoder
    from gorl.errors import ConfigError

    env = EnvConfig(task="toy-bandit", num_envs=2, eval_envs=2)
    kw = dict(env=env, encoder=partial(EncoderModule, actor_hidden=[8], critic_hidden=[8]), decoder=partial(FlowDecoder, hidden=[8]),
              first_decoder=partial(DiffusionDecoder, hidden=[8]), loop=LoopConfig(stages=[64, 64, 64]))
    with pytest.raises(ConfigError, match="cannot warm-start a FlowDecoder from the first refit's DiffusionDecoder"):
        GoRLSystem(**kw, refinement=RefinementConfig(warm_start=[False, True]))
    system = GoRLSystem(**kw, refinement=RefinementConfig(warm_start=[False, False, True]))  # warm from refit 2 on: same type
    assert system.acting_decoder() is system.identity
    system._norms = []
    keys = {}
    for stage, acting in ((1, system.first_decoder), (2, system.decoder), (3, system.decoder)):
        system.cycle.state.stage = stage
        assert system.acting_decoder() is acting
        keys[stage] = system._acting_state()
    # the CUDA graphs of the acting chain are keyed by which decoder acts (gorl/acceleration.py)
    assert keys[1] != keys[2] and keys[2] == keys[3]


def test_speed_compile_runs_the_loop_with_compiled_losses():
    """``model.speed.compile`` through a whole smoke plan (both refits): the encoder's and the
    decoder's compiled losses take every step (``aot_eager``: the capture without kernel
    generation; tests/test_encoder.py and tests/test_decoders.py compare them with eager)."""
    import dataclasses

    import torch._dynamo

    from gorl.acceleration import SpeedConfig

    torch._dynamo.reset()
    base = smoke_system()
    system = GoRLSystem(env=base.env_cfg, encoder=partial(EncoderModule, actor_hidden=[16, 16], critic_hidden=[32, 32], unroll=8, epochs=2,
                                                          minibatch_size=64),
                        decoder=base._make_decoder, loop=dataclasses.replace(base.loop_cfg, stages=[256, 128]),
                        refinement=base.refine_cfg, seed=0, speed=SpeedConfig(compile=True, compile_backend="aot_eager"))
    _fit(system, [])
    assert system.loop_state.phase == "done" and system.loop_state.history[0].fit_steps == 6
    for compiled in (system.encoder._compiled_terms, system.trainee._compiled_loss, system.policy.graphed):
        assert compiled.enabled and compiled.compiled is not None  # compiled, and never fell back to eager
    # The acting chain, compiled, acts as the eager chain does: deterministic, and sampling with the
    # same generator state (aot_eager draws from eager's generators; inductor's own are tested below).
    obs = torch.randn(32, system.obs_dim)
    with torch.no_grad():
        for deterministic in (True, False):
            torch.manual_seed(1)
            eager = system.policy.chain(obs, deterministic)
            torch.manual_seed(1)
            compiled = system.policy.graphed(obs, deterministic)
            for key in ("latent", "pre_tanh", "action"):
                torch.testing.assert_close(compiled[key], eager[key], msg=key)


def test_the_acting_chain_compiled_by_inductor_acts_as_the_eager_chain():
    """``model.speed.compile``'s acting chain through inductor's generated CPU kernels (what a CPU
    run uses): the deterministic actions within float tolerance, through the identity and a fitted
    (here: random) flow decoder."""
    import torch._dynamo

    from gorl.acceleration import CompiledFn

    torch._dynamo.reset()
    system = smoke_system()
    obs = torch.randn(64, system.obs_dim)
    with torch.no_grad():
        for p in system.decoder.parameters():
            p.normal_(0, 0.1)
        compiled = CompiledFn(system.policy.chain, "the acting chain")
        for stage in (0, 1):  # stage 0 acts through the identity, stage 1 through the flow decoder's sampler
            system.loop_state.stage = stage
            torch.testing.assert_close(compiled(obs, True)["action"], system.policy.chain(obs, True)["action"], rtol=1e-5, atol=1e-5)
            assert compiled.enabled


def test_step_graphs_take_the_smoke_plans_steps(monkeypatch):
    """``model.speed.step_graphs`` through the whole smoke plan (both refits), with the CPU's
    stand-in for a CUDA graph (``mode="emulate"``: each step recorded once, then re-run on the static
    buffers, tests/test_step_graphs.py): every stage's returns, refit and optimiser-step count are
    the eager run's, and both optimisers' steps were replayed."""
    import dataclasses

    from gorl.acceleration import SpeedConfig

    pl.seed_everything(0)  # before the networks' initialisation, as the CLI seeds
    ref = smoke_system()
    _fit(ref, [])
    monkeypatch.setattr(GoRLSystem, "_step_graphs_mode", lambda self: ("emulate", ""))
    pl.seed_everything(0)
    system = smoke_system()
    system.speed_cfg = SpeedConfig(step_graphs=True)
    trainer = _fit(system, [])
    assert system.step_graphs("encoder").captures >= 2 and system.step_graphs("decoder").captures >= 1

    def outcome(s: GoRLSystem) -> list[dict]:
        return [{k: v for k, v in dataclasses.asdict(r).items() if k != "fit_seconds"} for r in s.loop_state.history]

    assert outcome(system) == outcome(ref)
    assert trainer.global_step == ref.trainer.global_step > 0  # graphed steps are counted as Lightning's


def test_step_graphs_off_the_gpu_say_so_and_step_eagerly():
    import dataclasses

    from gorl.acceleration import SpeedConfig

    system = smoke_system()
    system.speed_cfg = SpeedConfig(step_graphs=True)
    system.loop_cfg = dataclasses.replace(system.loop_cfg, stages=[128])
    with pytest.warns(UserWarning, match="step_graphs is off for this run: the networks are not on a GPU"):
        _fit(system, [])
    assert system.step_graphs("encoder") is None and system.encoder._step_graphs is None


def test_the_matmul_precision_holds_for_the_run_and_is_put_back_after_it():
    """``model.speed.matmul_precision`` reaches torch (process-wide there) for the run's time only:
    a notebook or test that trains in process keeps its own setting afterwards."""
    from gorl.acceleration import SpeedConfig

    system = smoke_system()
    system.speed_cfg = SpeedConfig(matmul_precision="high")
    before = torch.get_float32_matmul_precision()
    system.setup("predict")
    assert torch.get_float32_matmul_precision() == "high"
    system.teardown("predict")
    assert torch.get_float32_matmul_precision() == before == "highest"


@pytest.mark.parametrize("collect_from", ["reset", "training_envs"])
def test_the_collector_tracks_trajectory_ids_only_where_a_refit_reads_them(collect_from):
    """TorchRL's trajectory ids cost a host read of every step's done flags; only refit data
    collected from the training envs reads them (their ``episode`` ids)."""
    import dataclasses

    system = smoke_system()
    system.refine_cfg = dataclasses.replace(system.refine_cfg, collect_from=collect_from)
    system.setup("fit")
    try:
        collector = system._build_collector()
        assert collector.track_traj_ids == (collect_from == "training_envs")
        batch = next(iter(collector))
        assert (("collector", "traj_ids") in batch.keys(True)) == (collect_from == "training_envs")
        collector.shutdown()
    finally:
        system.teardown("fit")
