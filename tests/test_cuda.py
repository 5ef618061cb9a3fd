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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ppo_maths_stays_fp32_under_cuda_autocast(dtype):
    from tensordict import TensorDict

    from gorl.encoders import EncoderModule

    enc = EncoderModule(5, 3, actor_hidden=[16], critic_hidden=[16]).cuda()
    n = 64
    batch = TensorDict({"observation": torch.randn(n, 5), "latent": torch.randn(n, 3), "latent_log_prob": torch.randn(n),
                        "advantage": torch.randn(n, 1), "value_target": torch.randn(n, 1)}, [n]).cuda()
    with torch.autocast("cuda", dtype=dtype):
        out, (loc, scale) = enc.ppo_loss(batch, clip=0.2, entropy_coef=0.01)
    assert loc.dtype == torch.float32 and scale.dtype == torch.float32  # networks' outputs are cast first
    for key, value in out.items():
        assert value.dtype == torch.float32, key
