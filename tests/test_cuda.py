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


def test_graphed_acting_chain_matches_eager_and_recaptures_when_the_state_changes():
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from gorl.acceleration import GraphedChain
    from tests.test_loop import smoke_system

    system = smoke_system().cuda()
    chain = system.policy.chain
    state = {"k": 0}
    graphed = GraphedChain(chain, lambda: (state["k"],))
    obs = torch.randn(64, system.obs_dim, device="cuda")
    with torch.no_grad():
        for _ in range(2):  # the second call replays the first capture
            torch.testing.assert_close(graphed(obs, True)["action"], chain(obs, True)["action"])
        assert graphed.captures == 1
        with torch.no_grad():
            system.encoder.actor_net.net[-1].weight.normal_()  # in-place weight change: the graph sees it
        torch.testing.assert_close(graphed(obs, True)["latent"], chain(obs, True)["latent"])
        state["k"] = 1  # a new state key: a new capture
        graphed(obs, True)
        assert graphed.captures == 2
        out = graphed(obs, False)  # stochastic: fresh noise on every replay, log-prob consistent with it
        again = graphed(obs, False)
        assert not torch.equal(out["latent"], again["latent"])
        loc, scale = system.encoder.actor_net(obs)
        from gorl.networks import gaussian_log_prob

        torch.testing.assert_close(out["latent_log_prob"], gaussian_log_prob(out["latent"], loc, scale))
    # through the TensorDict policy the collector calls
    system.policy.graphed = graphed
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = system.policy(TensorDict({"observation": obs}, [64]))
    torch.testing.assert_close(td["action"], chain(obs, True)["action"])


def test_a_cuda_system_checkpoints_its_loop_state_on_the_cpu():
    from tests.test_loop import smoke_system

    system = smoke_system().cuda()
    system.best_encoder = system.encoder.snapshot()  # CUDA tensors, as in a GPU run
    assert next(iter(system.best_encoder.values())).is_cuda
    checkpoint: dict = {}
    system.on_save_checkpoint(checkpoint)

    def devices(value):
        if isinstance(value, torch.Tensor):
            yield value.device.type
        elif isinstance(value, dict):
            for v in value.values():
                yield from devices(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from devices(v)

    assert set(devices(checkpoint["gorl_loop"])) == {"cpu"}


@pytest.mark.parametrize("gae", ["rollout", "minibatch"])
def test_ppo_steps_replayed_from_cuda_graphs_match_the_eager_steps(gae):
    """``speed.step_graphs`` for real: the captured PPO steps (two keys, and a re-capture after the
    optimiser's moments restart) give the eager steps' weights and diagnostics, to float tolerance
    (the GPU's scatter-add order in the backward of a gather is not fixed)."""
    from tests.test_step_graphs import _ppo_run

    ref, ref_metrics, _ = _ppo_run(gae, None, device="cuda")
    enc, metrics, graphs = _ppo_run(gae, "cuda", device="cuda")
    assert graphs.enabled and graphs.captures == 3
    for (name, x), y in zip(ref.state_dict().items(), enc.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(ref_metrics, metrics):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("sampling", ["with_replacement", "epoch_permutation"])
def test_refit_steps_replayed_from_cuda_graphs_fit_the_decoder(sampling):
    """The captured refit step draws its own noise (CUDA's generator advances on every replay), so
    it is compared with eager by what it does: the validation loss falls as much."""
    from gorl.decoders import FlowDecoder
    from tests.test_step_graphs import _refit_run

    _, ref_metrics, _ = _refit_run(FlowDecoder, sampling, None, rounds=6, device="cuda")
    _, metrics, graphs = _refit_run(FlowDecoder, sampling, "cuda", rounds=6, device="cuda")
    assert graphs.enabled and graphs.captures == 1
    assert metrics[-1]["best_val"] < metrics[0]["val_loss"]
    assert metrics[-1]["best_val"] == pytest.approx(ref_metrics[-1]["best_val"], rel=0.2)


def test_smoke_fit_with_step_graphs_on_cuda(tmp_path):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.accelerator", "cuda",
                   "--model.speed.step_graphs", "true", cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, res.stderr[-3000:]
    assert "final eval/return" in out and "are off for this run" not in out and "step_graphs is off" not in out


def test_lane_evaluations_on_a_gpu_score_what_an_evaluation_env_scores():
    """``loop.eval_lanes`` with MJX on the GPU: tests/test_eval_lanes.py's check of the side lanes
    against an evaluation env, and of the batch's lanes against an env without side lanes."""
    pytest.importorskip("mujoco_playground", reason="the mjx extra is not installed")
    from tests.test_eval_lanes import lanes_against_an_evaluation_env

    lanes_against_an_evaluation_env("cuda")


# --- the other methods, and the other direction: last, as the slowest (a device check with a
# short budget runs the tests above first)
_SMALL_SAC = '{"class_path": "gorl.encoders.LatentSAC", "init_args": {"actor_hidden": [16, 16], "critic_hidden": [32, 32], "batch_size": 32, "learning_starts": 64}}'
_BASELINE = ["--model.decoder", str(CONF / "decoder" / "identity.yaml"), "--model.loop.stages", "[384]", "--model.encoder.unroll", "8",
             "--model.encoder.critic_hidden", "[32,32]", "--model.encoder.minibatch_size", "64", "--model.encoder.epochs", "2"]


@pytest.mark.parametrize("overrides", [
    ["--model.decoder", str(CONF / "decoder" / "diffusion_cpu.yaml"), "--model.decoder.hidden", "[32,32]"],
    ["--model.encoder", _SMALL_SAC, "--model.loop.stages", "[256,128]"],  # the replay buffer on the GPU
    ["--model.encoder", str(CONF / "encoder" / "fpo.yaml"), "--model.encoder.hidden", "[16,16]", *_BASELINE],
    ["--model.encoder", str(CONF / "encoder" / "dppo.yaml"), "--model.encoder.hidden", "[16,16]", *_BASELINE],
], ids=["diffusion", "sac", "fpo", "dppo"])
def test_every_method_fits_on_cuda(tmp_path, overrides):
    """The smoke plan's other methods with CUDA networks: a diffusion decoder's refits, SAC's replay
    buffer, the FPO and DPPO baselines."""
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.accelerator", "cuda", *overrides, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "final eval/return" in res.stdout + res.stderr


def test_a_cpu_checkpoint_resumes_and_acts_on_cuda(tmp_path):
    """The other way round from tests/test_device_paths.py: a run checkpointed on the CPU goes on
    with CUDA networks, and its policy loads onto the GPU."""
    import gorl

    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.accelerator", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.accelerator", "cuda", "--ckpt_path", str(ckpt),
                   "--model.loop.stages", "[512, 256, 256, 128]", cwd=tmp_path)
    assert res.returncode == 0 and "finished stage 3" in res.stdout + res.stderr, res.stderr[-3000:]
    policy = gorl.load_policy(ckpt, device="cuda")
    obs = torch.randn(8, policy.obs_dim, device="cuda")
    assert policy.act(obs).device.type == "cuda"
