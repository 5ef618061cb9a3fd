"""Paths that only a CUDA machine exercises: networks on the GPU, envs on the CPU. They skip here
(no GPU) and run wherever ``torch.cuda.is_available()``, e.g. in ``benchmarks/gpu_check.py``'s
test subset."""

import pytest
import torch

from tests.conftest import CONF, run_gorl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_evaluation_moves_cpu_observations_to_a_cuda_policy():
    from gorl.envs.factory import EnvConfig, make_env
    from gorl.evaluation import evaluate
    from tensordict.nn import TensorDictModule

    env = make_env(EnvConfig(task="toy-bandit", num_envs=4), seed=0)
    net = torch.nn.Sequential(torch.nn.Linear(env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]), torch.nn.Tanh())
    policy = TensorDictModule(net.cuda(), in_keys=["observation"], out_keys=["action"])
    returns = evaluate(env, policy, max_steps=5)
    assert returns.shape == (4,) and torch.isfinite(returns).all()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_smoke_fit_on_cuda(tmp_path, precision):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.accelerator", "cuda",
                   "--trainer.precision", precision, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "final eval/return" in res.stdout + res.stderr
