"""``loop.eval_lanes`` (gorl/eval_lanes.py): evaluations in side lanes of the MJX training batch.

On JAX's CPU backend at tiny sizes (cheetah-run, MJX's ``jax`` pipeline; two batch shapes, 2 and
4 envs, each compiled once and shared by both tests). Needs the ``mjx`` extra, as tests/test_mjx.py.
"""

import csv
import os

import pytest
import torch
from tensordict import TensorDict

from tests.conftest import CONF

if os.environ.get("GORL_REQUIRE_MJX") != "1":
    pytest.importorskip("mujoco_playground", reason="the mjx extra is not installed (pip install -e '.[mjx]')")

from gorl.envs.mjx import MJXBatchEnv  # noqa: E402
from gorl.eval_lanes import LaneEvaluations  # noqa: E402

STEPS = 10  # steps of an evaluation episode


def _policy(scale: float):
    return lambda obs: torch.tanh(scale * obs[:, :6])


def test_lane_evaluations_score_what_an_evaluation_env_scores_and_leave_the_batch_alone():
    """Side lanes seeded like an evaluation env give its returns, evaluation after evaluation (one
    queued behind the other, the last finished by side-only steps), while the batch's own lanes
    step, reset and truncate exactly as in an env without side lanes (tests/test_cuda.py runs it
    on a GPU)."""
    lanes_against_an_evaluation_env("cpu")


def lanes_against_an_evaluation_env(device: str) -> None:
    # On a GPU, XLA may lay out a batch of 4 lanes' arithmetic otherwise than one of 2: float noise.
    tol = {} if device == "cpu" else {"rtol": 1e-3, "atol": 1e-3}
    n, episodes = 2, 2
    lanes = LaneEvaluations(1, episodes, STEPS, lambda group, snapshot: _policy(snapshot), device=device)
    env = MJXBatchEnv("cheetah-run", num_envs=n, seed=3, side_envs=episodes, side_seed=100, device=device)
    plain = MJXBatchEnv("cheetah-run", num_envs=n, seed=3, device=device)
    env.lanes = lanes
    obs, ref_obs = env.reset()["observation"], plain.reset()["observation"]
    torch.testing.assert_close(obs, ref_obs, **tol)
    lanes.start("a", 0.3)
    lanes.start("b", -0.7)  # queued: one group only
    assert lanes.pending() == 2
    actions = torch.linspace(-1, 1, 6, device=device).expand(n, 6)
    for t in range(15):
        td = TensorDict({"action": actions * (t % 3 - 1)}, [n])
        out, ref = env.step(td)["next"], plain.step(td)["next"]
        for key in ("observation", "reward", "done", "truncated"):
            torch.testing.assert_close(out[key], ref[key], msg=key, **tol)
        if t == 7:  # a partial reset of the batch (as the collector does) never restarts a side lane
            # (TorchRL fills the lanes not reset from the tensordict passed in: compare the reset one,
            # and the steps that follow)
            masks = [TensorDict({"_reset": torch.tensor([[True], [False]], device=device)}, [n]) for _ in range(2)]
            torch.testing.assert_close(env.reset(masks[0])["observation"][0], plain.reset(masks[1])["observation"][0], **tol)
    ((tag, a_returns),) = lanes.take_results()
    assert tag == "a" and lanes.pending() == 1  # "b" started when "a" ended, at step 10
    while lanes.pending():
        env.step_side()
    ((tag, b_returns),) = lanes.take_results()
    assert tag == "b"
    td = TensorDict({"action": actions}, [n])
    torch.testing.assert_close(env.step(td)["next", "observation"], plain.step(td)["next", "observation"], **tol)  # held by step_side
    lanes.start("c", 0.3)  # "a"'s agent again, on the next initial states of the lanes' streams
    while lanes.pending():
        env.step_side()
    ((_, c_returns),) = lanes.take_results()

    # An evaluation env seeded as the side lanes, through the same reset stream (the batch's first
    # reset, then one per evaluation), scores the same.
    reference = MJXBatchEnv("cheetah-run", num_envs=episodes, seed=100, device=device)
    reference.reset()
    for returns, scale in ((a_returns, 0.3), (b_returns, -0.7), (c_returns, 0.3)):
        torch.testing.assert_close(returns, reference.deterministic_returns(_policy(scale), STEPS), **(tol or {"rtol": 1e-5, "atol": 1e-4}))
    assert not torch.allclose(a_returns, c_returns)  # new initial states for each evaluation
    for e in (env, plain, reference):
        e.close()


def test_a_fit_with_lane_evaluations_records_each_at_the_frames_it_was_due(tmp_path, gorl_in_process):
    """A short MJX fit with ``loop.eval_lanes: 1``: the evaluations after updates run in the
    side lanes and are recorded later, each with the frames its agent was frozen at; the phase's
    last evaluation, and a checkpoint, wait for them (20-step episodes: the second one is still
    running at the checkpoint after update 3); the curve puts them where they were due."""
    res = gorl_in_process(
        "fit", "--config", str(CONF / "smoke.yaml"), "--trainer.accelerator", "cpu",
        "--model.env.task", "cheetah-run", "--model.env.backend", "mjx", "--model.env.num_envs", "2", "--model.env.eval_envs", "2",
        "--model.encoder.init_args.unroll", "8", "--model.encoder.init_args.epochs", "1", "--model.encoder.init_args.minibatch_size", "16",
        "--model.loop.stages", "[64, 64]", "--model.loop.evals_per_stage", "4", "--model.loop.eval_max_steps", "20",
        "--model.loop.eval_lanes", "1",
        "--model.refinement.episodes", "2", "--model.refinement.collect_envs", "2", "--model.refinement.max_episode_steps", str(STEPS),
        "--model.refinement.steps", "4", "--checkpoint.every_frames", "40",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "in the training batch's side lanes, ended at frame" in out
    (path,) = tmp_path.glob("runs/gorl/version_*/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    evals = [(float(r["eval/frames"]), float(r["loop/frames"]) if r.get("loop/frames") else None, float(r["loop/stage"]) if r.get("loop/stage") else None)
             for r in rows if r.get("eval/return")]
    frames = [f for f, _, _ in evals]
    # per stage of 4 updates of 16 frames: the first evaluation (before any update / at the boundary),
    # two in the lanes (after updates 1 and 2) and the last (after update 4)
    assert frames == [0.0, 16.0, 32.0, 64.0, 64.0, 80.0, 96.0, 128.0], evals
    lagged = [(f, loop) for f, loop, _ in evals if loop is not None and loop > f]
    assert lagged, evals  # at least one lane result was recorded after the update it evaluates
    # the checkpoint after update 3 (48 frames) finished the evaluation still running, in a row of its own
    drained = [float(r["loop/frames"]) for r in rows if r.get("perf/eval_lanes_drain_seconds")]
    assert 48.0 in drained, drained
    from gorl.analysis.io import eval_points, load_metrics

    xs, _ = eval_points(load_metrics(path))
    assert list(xs) == frames
