"""The MJX (MuJoCo Playground) env backend on JAX's CPU backend, at tiny sizes.

Needs the ``mjx`` extra. Without it these tests skip, unless ``GORL_REQUIRE_MJX=1`` (set by
``.ci/run``, which installs the extra) turns the missing extra into a failure, so CI cannot go green
by skipping them.
"""

import csv
import os

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from tests.conftest import CONF

if os.environ.get("GORL_REQUIRE_MJX") != "1":
    pytest.importorskip("mujoco_playground", reason="the mjx extra is not installed (pip install -e '.[mjx]')")

from gorl.envs.mjx import MJXBatchEnv, check_task, mjx_tasks, playground_name  # noqa: E402
from gorl.errors import ConfigError  # noqa: E402

N, LIMIT = 4, 6


@pytest.fixture(scope="module")
def env():
    # The Warp pipeline here, the default (jax) in the fit below: both are exercised.
    env = MJXBatchEnv("cheetah-run", num_envs=N, seed=3, episode_length=LIMIT, impl="warp")
    yield env
    env.close()


def _steps(env, k: int, action: float = 0.5) -> list[TensorDict]:
    td = TensorDict({"action": torch.full((N, 6), action)}, [N])
    return [env.step(td)["next"].clone() for _ in range(k)]


def test_paper_tasks_map_to_playground_and_unported_tasks_fail_clearly():
    from gorl.envs.dmc import PAPER_TASKS

    assert [playground_name(t) for t in PAPER_TASKS] == ["CheetahRun", "FingerSpin", "FingerTurnHard", "FishSwim", "HopperStand", "WalkerWalk"]
    for task in PAPER_TASKS:
        check_task(task)
    assert set(PAPER_TASKS) <= set(mjx_tasks())
    with pytest.raises(ConfigError, match="'quadruped-walk' has no MuJoCo Playground port.*cheetah-run"):
        check_task("quadruped-walk")


def test_specs_shapes_and_dtypes(env):
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env)  # a real rollout checked against every spec
    td = env.reset()
    assert td["observation"].shape == (N, 17) and td["observation"].dtype == torch.float32
    (out,) = _steps(env, 1)
    assert out["reward"].shape == (N, 1) and out["reward"].dtype == torch.float32
    for key in ("done", "terminated", "truncated"):
        assert out[key].shape == (N, 1) and out[key].dtype == torch.bool
    assert {out[key].device for key in out.keys()} == {td["observation"].device} == {env.device}  # noqa: SIM118 (a TensorDict iterates its batch)


def test_warp_solver_iteration_warning_is_quiet(env, capfd):
    env.reset()
    _steps(env, 2)
    out, err = capfd.readouterr()
    assert "solver iterations limit reached" not in out + err


def test_outputs_are_views_of_jax_arrays_not_copies(env):
    env.reset()
    obs = torch.from_dlpack(env._state.obs)
    assert obs.data_ptr() == env._state.obs.unsafe_buffer_pointer()


def test_limit_is_truncation_not_termination_and_masked_reset(env):
    env.reset()
    outs = _steps(env, LIMIT)
    assert not any(o["truncated"].any() for o in outs[:-1])
    assert outs[-1]["truncated"].all() and not outs[-1]["terminated"].any()
    assert torch.equal(outs[-1]["done"], outs[-1]["truncated"])
    last = outs[-1]["observation"]
    mask = torch.tensor([True, False, True, False])
    td = env._reset(TensorDict({"_reset": mask.unsqueeze(-1)}, [N]))
    moved = (td["observation"] - last).abs().amax(-1) > 0
    assert torch.equal(moved, mask)  # only the masked envs start anew
    # ...and only they restart their step count: the others truncate at the very next step.
    (nxt,) = _steps(env, 1)
    assert torch.equal(nxt["truncated"].squeeze(-1), ~mask)


def test_actions_in_unit_box_reach_the_simulator_as_the_models_ctrl(env):
    """The loop's squashed actions live in [-1, 1]; the simulator gets them mapped affinely onto the
    actuators' ctrlrange (the identity for every paper task: all their ports use [-1, 1])."""
    from gorl.envs.dmc import PAPER_TASKS
    from gorl.envs.mjx import _playground_env

    env.reset()
    action = torch.linspace(-1, 1, N * 6).reshape(N, 6)
    env.step(TensorDict({"action": action}, [N]))
    low, high = torch.as_tensor(_playground_env("cheetah-run", env.impl).mj_model.actuator_ctrlrange, dtype=torch.float32).T
    torch.testing.assert_close(torch.as_tensor(np.asarray(env._state.data.ctrl)).reshape(N, 6), low + (action + 1) / 2 * (high - low))
    for task in PAPER_TASKS:
        ranges = _playground_env(task, "jax").mj_model.actuator_ctrlrange
        assert (ranges == [-1.0, 1.0]).all(), (task, ranges)


def test_a_non_finite_state_terminates_and_the_auto_reset_restarts_that_env_alone(env):
    """Playground's suite ports mark a non-finite physics state ``done``: that is ``terminated``
    (no bootstrap), and the collector's ``step_and_maybe_reset`` restarts that env only, the others
    carrying on from their simulator states, which their reported observations must be.
    (TorchRL 0.14's ``MujocoPlaygroundWrapper`` restarts every env here and reports stale
    observations for the others: ``benchmarks/playground_env.py``.)"""
    import jax.numpy as jnp

    env.set_seed(0)
    td = env.reset()
    td["action"] = torch.full((N, 6), 0.5)
    td = env.step_and_maybe_reset(td)[1]
    data = env._state.data  # env 0's velocities go non-finite (a NaN action leaves the Warp pipeline's state finite)
    env._state = env._state.replace(data=data.replace(qvel=data.qvel.at[0].set(jnp.nan)))
    td["action"] = torch.full((N, 6), 0.5)
    stepped, nxt = env.step_and_maybe_reset(td)
    assert stepped["next", "terminated"].squeeze(-1).tolist() == [True, False, False, False]
    assert not stepped["next", "truncated"].any()
    assert torch.isfinite(nxt["observation"]).all()  # env 0 starts anew
    assert torch.equal(nxt["observation"][1:], stepped["next", "observation"][1:])  # the others carry on
    assert torch.equal(nxt["observation"], torch.from_dlpack(env._state.obs))  # and report their states


def test_a_step_with_its_auto_reset_reads_the_device_once(env):
    """Each ``step_and_maybe_reset`` (the collector's step) waits for the device once, to know
    whether any env is done; where one is, that env alone restarts (the test above)."""
    import sys

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from host_reads import CountReads

    env.set_seed(0)
    td = env.reset()
    reads = []
    for _ in range(LIMIT + 1):  # through the truncation at LIMIT and the reset after it
        td["action"] = torch.full((N, 6), 0.5)
        with CountReads() as counter:
            stepped, td = env.step_and_maybe_reset(td)
        reads.append(sum(counter.count.values()))
    # One read a step; the step that truncates and resets every env also reads TorchRL's reset path's
    # (once an episode: every 1,000 steps on the paper's tasks).
    assert reads[: LIMIT - 1] == [1] * (LIMIT - 1) and reads[LIMIT] == 1 and reads[LIMIT - 1] > 1, reads


def test_seeding_reproduces_and_each_env_has_its_own_stream(env):
    env.set_seed(11)
    first = env.reset()["observation"].clone()
    rollout_a = torch.stack([o["observation"] for o in _steps(env, 3)])
    env.set_seed(11)
    assert torch.equal(env.reset()["observation"], first)
    assert torch.equal(torch.stack([o["observation"] for o in _steps(env, 3)]), rollout_a)
    assert not torch.equal(first[0], first[1])  # seeds seed+i differ per env
    env.set_seed(12)
    assert torch.equal(env.reset()["observation"][:-1], first[1:])  # env i of seed 12 = env i+1 of seed 11


def test_return_is_on_dm_controls_scale_under_the_same_constant_action(env):
    """Different simulators (MJX vs MuJoCo's C engine, Playground's port of the task): sanity, not
    equality. Cheetah-run's reward is its forward speed over 10 m/s, clipped to [0, 1]."""
    from gorl.envs.dmc import DMControlBatchEnv

    steps, action = LIMIT, 0.5
    env.set_seed(0)
    env.reset()
    mjx = torch.stack([o["reward"] for o in _steps(env, steps, action)]).sum(0).squeeze(-1)
    dmc_env = DMControlBatchEnv("cheetah-run", num_envs=N, seed=0)
    try:
        dmc_env.reset()
        td = TensorDict({"action": torch.full((N, 6), action)}, [N])
        dmc = torch.stack([dmc_env.step(td)["next", "reward"] for _ in range(steps)]).sum(0).squeeze(-1)
    finally:
        dmc_env.close()
    for returns in (mjx, dmc):
        assert torch.isfinite(returns).all() and (returns >= 0).all() and (returns <= steps).all()
    assert abs(mjx.mean() - dmc.mean()) <= 0.25 * steps, (mjx, dmc)


def test_fit_through_both_phases_on_the_mjx_backend(tmp_path, gorl_in_process):
    """The diffusion HumanoidRun recipe (per-refit handoff, stochastic evaluation, plain-epsilon
    decoder) on MJX, through two refits: one env count everywhere, so the step compiles once."""
    res = gorl_in_process(  # in this process: about the backend in the loop, not the command line
        "fit", "--config", str(CONF / "humanoid_run.yaml"), "--trainer.accelerator", "cpu",
        "--model.env.backend", "mjx", "--model.env.num_envs", "2", "--model.env.eval_envs", "2",
        "--model.encoder.unroll", "16", "--model.encoder.epochs", "1", "--model.encoder.minibatch_size", "32",
        "--model.loop.stages", "[32, 32, 32]", "--model.loop.evals_per_stage", "2", "--model.loop.eval_max_steps", "10",
        "--model.refinement.episodes", "2", "--model.refinement.epochs", "2", "--model.refinement.batch_size", "32",
        "--model.refinement.collect_envs", "2", "--model.refinement.max_episode_steps", "10",
        "--model.refinement.min_data_return", "null",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = tmp_path.glob("runs/gorl/version_*/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    stages = {float(r["loop/stage"]) for r in rows if r.get("loop/stage")}
    assert stages == {0.0, 1.0, 2.0}, stages
    assert sum(1 for r in rows if r.get("stage/fit_steps")) == 2  # a decoder was fitted between each pair of stages
    out = res.stdout + res.stderr
    assert "[gorl] stage 1: refit data from its final encoder" in out and "(2 stochastic eval episodes per evaluation)" in out
    assert "final eval/return" in out
    assert "solver iterations limit reached" not in out  # quieted (gorl/envs/mjx.py)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.env.backend", "mjc"], "env.backend must be one of dmc, mjx, got 'mjc'"),
        (["--model.env.backend", "mjx", "--model.env.task", "quadruped-walk"], "'quadruped-walk' has no MuJoCo Playground port"),
        (["--model.env.backend", "mjx", "--model.env.task", "cheetah-run", "--model.env.num_workers", "2"], "env.num_workers must be 1 with env.backend: mjx"),
        (["--model.env.backend", "mjx", "--model.env.task", "cheetah-run", "--model.env.mjx_impl", "c"], "env.mjx_impl must be one of jax, warp"),
        (["--model.env.device", "cuda"], "needs env.backend: mjx"),
        (["--model.loop.eval_lanes", "1"], "loop.eval_lanes runs evaluations in spare lanes of the MJX training batch: it needs env.backend: mjx"),
        (["--model.loop.eval_lanes", "-1"], "loop.eval_lanes must be >= 0, got -1"),
    ],
)
def test_bad_backend_input_is_one_clear_line(gorl_in_process, args, expected):
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), *args)  # tests/test_cli.py runs bad input as a user does
    assert res.returncode != 0
    err_lines = [line for line in res.stderr.splitlines() if line.startswith("gorl: error:")]
    assert len(err_lines) == 1 and expected in err_lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_mjx_evaluation_loop_gives_torchrl_rollouts_returns(env):
    """gorl.evaluation.evaluate runs MJX episodes in the env's own loop (no TensorDict per step);
    same seeds, same policy: the same returns as TorchRL's rollout, across an episode end."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from gorl.evaluation import evaluate, first_episode_returns
    from gorl.networks import ActionSquash
    from gorl.policy import LatentPolicy

    policy = LatentPolicy(lambda obs, det: {"latent": torch.sin(3 * obs[:, :6])}, lambda obs, z: z, ActionSquash(-torch.ones(6), torch.ones(6)))
    env.set_seed(11)
    fast = evaluate(env, policy, max_steps=LIMIT + 3)  # every episode ends (truncation) before the cap
    env.set_seed(11)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.rollout(LIMIT + 3, policy, break_when_any_done=False, break_when_all_done=True)
    reference = first_episode_returns(td["next", "reward"], td["next", "done"])
    torch.testing.assert_close(fast, reference)
    assert fast.abs().sum() > 0


def test_mjx_evaluation_loop_samples_latents_only_when_asked(env):
    """The MJX backend's own evaluation loop honours ``deterministic`` as TorchRL's rollout does
    (same seed: only the policy's draws can differ; each MJX reset costs seconds, so two runs)."""
    from gorl.evaluation import evaluate
    from tests.test_envs import _mean_or_sampled_latent_policy

    policy = _mean_or_sampled_latent_policy(6)
    runs = {}
    for deterministic in (True, False):
        env.set_seed(11)
        runs[deterministic] = evaluate(env, policy, max_steps=20, deterministic=deterministic)
    assert not torch.allclose(runs[False], runs[True])
