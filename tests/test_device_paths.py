"""The members of the CUDA-correctness class that a CPU can show (the rest run in tests/test_cuda.py
on a GPU machine, through benchmarks/gpu_check.py):

- a checkpoint written on a GPU loads on a CPU-only machine, in every path that loads one;
- the loop's own tensors follow the data's device and need no host read per step (episode returns,
  per-minibatch GAE, finiteness checks, observation statistics);
- MJX's ``jax`` pipeline starts without the ``warp-lang`` package.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives.value import GAE

import gorl
from gorl.encoders.advantage import segment_gae
from gorl.errors import NonFiniteError
from gorl.networks import RunningNorm
from gorl.optimization import FiniteGuard
from gorl.evaluation import episode_returns
from tests.conftest import CONF, ROOT


# --- a checkpoint from a GPU, on a CPU-only machine ------------------------------------------------
@pytest.fixture(scope="module")
def cuda_tagged_checkpoint(tmp_path_factory, trained):
    """A real checkpoint (the smoke plan's end, shared with tests/test_inference.py) re-saved as a GPU
    run writes it: every storage tagged ``cuda:0``."""
    tmp = tmp_path_factory.mktemp("cuda_ckpt")
    _, path = trained(None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, tmp / "from_gpu.ckpt")
    finally:
        torch.serialization.location_tag = original
    return path, tmp / "from_gpu.ckpt"


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows what a CPU-only machine does with a GPU checkpoint")
def test_a_checkpoint_written_on_a_gpu_loads_on_a_cpu_only_machine(cuda_tagged_checkpoint, gorl_in_process):
    cpu_path, gpu_path = cuda_tagged_checkpoint
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really carries CUDA storages
        torch.load(gpu_path, weights_only=True)
    # the policy API
    obs = torch.randn(16, gorl.load_policy(cpu_path).obs_dim)
    assert torch.equal(gorl.load_policy(gpu_path).act(obs), gorl.load_policy(cpu_path).act(obs))
    # gorl export: the TorchScript policy of the GPU checkpoint acts as the CPU one does
    from gorl.cli import main as cli

    out = cuda_tagged_checkpoint[1].parent / "policy.pt"
    cli(["export", "--ckpt_path", str(gpu_path), "--out", str(out)])
    assert torch.allclose(torch.jit.load(str(out))(obs), gorl.load_policy(cpu_path).act(obs), atol=1e-6)
    # the CLI: validate and resume (a longer plan, so the resumed run trains a further stage), in this
    # process: the loading is the question here, not the command line
    res = gorl_in_process("validate", "--config", str(CONF / "smoke.yaml"), "--ckpt_path", str(gpu_path))
    assert res.returncode == 0 and "eval/return" in res.stdout, res.stderr[-2000:]
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), "--ckpt_path", str(gpu_path),
                          "--model.loop.stages", "[512, 256, 256, 128]", "--curves", "false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "finished stage 3" in res.stdout + res.stderr


def test_reduced_values_and_training_returns_live_where_they_are_used(trained, monkeypatch):
    """The CPU can show two members of the device class with the ``meta`` device standing in for a
    GPU: a value reduced over processes goes to the module's device first (NCCL cannot reduce the
    CPU tensors computed beside dm_control envs), and the training-return accumulator lives on the
    rollout's device (the first CUDA run died on a CPU one)."""
    from types import SimpleNamespace

    system, _ = trained(None)
    seen = []
    monkeypatch.setattr(system, "_trainer", SimpleNamespace(strategy=SimpleNamespace(reduce=lambda v, reduce_op: seen.append(v.device) or v)))
    monkeypatch.setattr(system, "_device", torch.device("meta"))
    system.reduce_mean(torch.tensor(1.0))
    assert seen == [torch.device("meta")]

    monkeypatch.setattr(system, "_ep_return", None)
    monkeypatch.setattr(system, "_finished", {"sum": None, "count": None})
    rollout = TensorDict({"next": {"reward": torch.ones(4, 6, 1), "done": torch.zeros(4, 6, 1, dtype=torch.bool)}}, batch_size=[4, 6])
    system._track_returns(rollout.to("meta"))
    assert system._ep_return.device.type == "meta" and system._finished["count"].device.type == "meta"


# --- training-episode returns, vectorised ------------------------------------------------------
def _returns_by_loop(reward, done, carry):
    carry = carry.clone()
    ended = torch.zeros_like(reward)
    for t in range(reward.shape[1]):
        carry += reward[:, t]
        ended[:, t] = carry
        carry[done[:, t]] = 0.0
    return ended, carry


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_episode_returns_match_the_step_by_step_sum(seed):
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(7, 25, generator=g)
    done = torch.rand(7, 25, generator=g) < 0.2
    done[0] = False  # an env with no episode end in the rollout
    done[1, 3:5] = True  # two ends in a row
    carry = torch.randn(7, generator=g)
    ended, carry_out = episode_returns(reward, done, carry)
    want_ended, want_carry = _returns_by_loop(reward, done, carry)
    torch.testing.assert_close(ended[done], want_ended[done])
    torch.testing.assert_close(carry_out, want_carry)


def test_train_return_is_absent_where_no_episode_ended():
    from tests.test_loop import smoke_system

    system = smoke_system()
    td = TensorDict({"next": {"reward": torch.ones(4, 6, 1), "done": torch.zeros(4, 6, 1, dtype=torch.bool)}}, [4, 6])
    system._track_returns(td)
    system._record_train_return()
    assert "train/return" not in system._row  # nothing ended: no (stale) value
    td["next", "done"][:2, -1] = True
    system._track_returns(td)
    system._record_train_return()
    assert system._row["train/return"] == 12.0  # two episodes of 6 + 6 steps of reward 1


# --- per-minibatch GAE without host reads -----------------------------------------------------
def test_segment_gae_matches_torchrl_gae_with_episode_ends_inside_segments():
    g = torch.Generator().manual_seed(0)
    b, t = 12, 30
    critic = torch.nn.Linear(3, 1)
    obs, nxt = torch.randn(b, t, 3, generator=g), torch.randn(b, t, 3, generator=g)
    done = torch.rand(b, t, 1, generator=g) < 0.15
    terminated = done & (torch.rand(b, t, 1, generator=g) < 0.5)  # the rest are truncations
    reward = torch.randn(b, t, 1, generator=g)
    td = TensorDict({"observation": obs, "next": {"observation": nxt, "reward": reward, "done": done, "terminated": terminated,
                                                   "truncated": done & ~terminated}}, [b, t])
    from torchrl.modules import ValueOperator

    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ValueOperator(critic, in_keys=["observation"]), average_gae=False)
    with torch.no_grad():
        gae(td)
        ours = segment_gae(reward, critic(obs), critic(nxt), done, terminated, 0.99, 0.95)
    torch.testing.assert_close(ours, td["advantage"], rtol=1e-5, atol=1e-5)


# --- finiteness checks read once per update -------------------------------------------------
def test_deferred_finiteness_guard_reports_at_the_end_of_the_update():
    guard = FiniteGuard()
    ok = torch.tensor(True)
    guard.note(ok, ok)
    guard.raise_if_bad("encoder phase, stage 0, frame 0")  # all finite: nothing
    guard.note(ok, torch.tensor(False))
    guard.note(ok, ok)  # a later good step does not clear it
    with pytest.raises(NonFiniteError, match="non-finite gradient in the encoder phase"):
        guard.raise_if_bad("encoder phase, stage 0, frame 0")
    guard.note(torch.tensor(False), None)
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        guard.raise_if_bad("decoder phase")
    guard.raise_if_bad("decoder phase")  # reported once, then cleared


def test_running_norm_knows_it_is_empty_without_reading_the_device():
    norm = RunningNorm(3)
    x = torch.randn(5, 3) * 20
    assert norm.empty and torch.equal(norm(x), x)
    norm.update(x)
    assert not norm.empty and not torch.equal(norm(x), x)
    fresh = RunningNorm(3)
    fresh.load_state_dict(norm.state_dict())
    assert not fresh.empty and torch.equal(fresh(x), norm(x))
    norm.load_state_dict(RunningNorm(3).state_dict())
    assert norm.empty
    fresh.reset_()
    assert fresh.empty and float(fresh.count) == 0


# --- MJX without Warp -------------------------------------------------------------------------
_NO_WARP = """
import sys
sys.modules["warp"] = None  # as if warp-lang were not installed: `import warp` raises ImportError
from gorl.envs.mjx import mjx_dims, _playground_env
from gorl.errors import ConfigError
print("dims", mjx_dims("cheetah-run", "jax"))
try:
    _playground_env("hopper-stand", "warp")
except ConfigError as err:
    print("warp:", err)
"""


def test_mjx_jax_pipeline_needs_no_warp_and_the_warp_pipeline_says_what_it_needs():
    pytest.importorskip("mujoco_playground")
    res = subprocess.run([sys.executable, "-c", _NO_WARP], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dims (17, 6)" in res.stdout
    assert "warp: env.mjx_impl: warp needs the warp-lang package" in res.stdout
    assert "Failed to import warp" not in res.stdout + res.stderr


# --- rollouts of a policy on another device than its env -----------------------------------------
def test_rollouts_cast_observations_and_actions_between_env_and_policy_devices():
    """TorchRL's auto_cast_to_device finds no device on a LatentPolicy (it owns no parameters):
    evaluation and refit collection wrap it so each step's tensors cross explicitly. The meta device
    stands in for "another device" on a CPU-only machine."""
    from types import SimpleNamespace

    from gorl.networks import ActionSquash
    from gorl.policy import LatentPolicy, OnDevice, on_env_device

    policy = LatentPolicy(lambda obs, det: {"latent": obs[:, :2] * 2}, lambda obs, z: z, ActionSquash(-torch.ones(2), torch.ones(2)))
    assert on_env_device(policy, SimpleNamespace(device=torch.device("cpu"))) is policy  # same device: as it is
    wrapped = on_env_device(policy, SimpleNamespace(device=torch.device("meta")))
    assert isinstance(wrapped, OnDevice)
    td = wrapped(TensorDict({"observation": torch.randn(5, 3)}, [5]))
    assert {td[k].device.type for k in ("latent", "pre_tanh", "action")} == {"meta"}


# --- installing beside a GPU machine's own torch and jax ------------------------------------------
def test_dependency_ranges_admit_the_cpu_and_the_gpu_machines_versions():
    """pyproject's ranges keep a GPU machine's CUDA torch 2.11 and jax 0.11 (what the device check
    ran on) instead of replacing them, and still admit what the README installs on a CPU."""
    import tomllib

    from packaging.requirements import Requirement

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = {Requirement(r).name: Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["mjx"]}
    for version in ("2.11.0+cu130", "2.13.0", "2.13.0+cpu"):
        assert reqs["torch"].specifier.contains(version, prereleases=True), version
    assert not reqs["torch"].specifier.contains("2.14.0")  # untested: mujoco/torchrl pins were checked up to 2.13
    for version in ("0.10.2", "0.11.2"):
        assert reqs["jax"].specifier.contains(version), version
