"""Paper baselines (gorl.baselines): FPO's CFM-loss ratio and clipped objective, DPPO's per-step
Gaussian log-probs, and a tiny `gorl fit` of each baseline config through the real loop."""

import contextlib
import csv
import io
import math

import pytest
import torch
from tensordict import TensorDict

from gorl.baselines import DPPO, FPO
from gorl.baselines.common import clipped_surrogate
from gorl.decoders.diffusion import cosine_alpha_bar
from tests.conftest import CONF

SMALL = dict(hidden=[16, 16], critic_hidden=[32, 32], epochs=2, minibatch_size=32, unroll=8)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (the policies' heads start at zero, which hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _rollout(policy, n: int = 8, t: int = 8, obs_dim: int = 3, seed: int = 0) -> TensorDict:
    """A rollout ``[n, t]`` acted by ``policy`` on random observations, as the collector stores it."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, t, obs_dim, generator=g)
    out = policy.act(obs.reshape(n * t, obs_dim), deterministic=False)
    done = torch.zeros(n, t, 1, dtype=torch.bool)
    done[:, -1] = True
    td = TensorDict(
        {
            "observation": obs,
            **{k: v.reshape(n, t, *v.shape[1:]) for k, v in out.items()},
            "next": {
                "observation": torch.randn(n, t, obs_dim, generator=g),
                "reward": out["latent"][:, :1].reshape(n, t, 1),  # reward the first action coordinate
                "done": done,
                "terminated": torch.zeros_like(done),
                "truncated": done.clone(),
            },
        },
        batch_size=[n, t],
    )
    return td


def _sgd(module: torch.nn.Module, lr: float = 1e-2):
    opt = torch.optim.Adam(module.parameters(), lr=lr)

    def optimize(loss: torch.Tensor, max_norm: float | None = None) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()

    return optimize


# --- the clipped surrogate ------------------------------------------------------------------------
def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([1.2, 0.9, 1.02, 0.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    log_ratio = ratio.log().requires_grad_()
    loss, stats = clipped_surrogate(log_ratio, adv, clip=0.05)
    # min(r A, clip(r) A): 1.05 (clipped), 0.9, -1.02, -0.95 (clipped); the loss is minus their mean.
    assert math.isclose(float(loss), -(1.05 + 0.9 - 1.02 - 0.95) / 4, abs_tol=1e-6)
    assert math.isclose(float(stats["clip_fraction"]), 0.75)
    loss.backward()
    # Clipped terms carry no gradient; unclipped ones d(-r A / 4)/d log r = -r A / 4.
    assert torch.allclose(log_ratio.grad, torch.tensor([0.0, -0.9 / 4, 1.02 / 4, 0.0]), atol=1e-6)


# --- FPO ---------------------------------------------------------------------------------------------
def _fpo_batch(fpo: FPO, n: int = 64) -> TensorDict:
    obs = torch.randn(n, 3)
    flat = TensorDict({"observation": obs, **fpo.act(obs, deterministic=False)}, batch_size=[n])
    with torch.no_grad():
        return fpo.prepare(flat)


def test_fpo_fresh_policy_samples_the_prior_and_evaluates_at_zero():
    torch.manual_seed(0)
    fpo = FPO(3, 2, **SMALL)
    obs = torch.randn(4096, 3)
    a = fpo.act(obs, deterministic=False)["latent"]
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1.0) < 0.05
    assert torch.equal(fpo.act(obs, deterministic=True)["latent"], torch.zeros(4096, 2))


def test_fpo_ratio_is_exactly_one_at_old_equals_new():
    torch.manual_seed(0)
    fpo = FPO(3, 2, **SMALL)
    _randomise(fpo.velocity_net)
    flat = _fpo_batch(fpo)
    assert flat["cfm_eps"].shape == (64, 8, 2) and flat["cfm_t"].shape == (64, 8, 1)
    new = fpo.cfm_loss(flat["observation"], flat["latent"], flat["cfm_eps"], flat["cfm_t"])
    assert torch.equal(flat["cfm_loss_old"] - new, torch.zeros(64))  # same draws, same weights
    _, stats = fpo.policy_loss(flat, torch.randn(64))
    assert float(stats["ratio"]) == 1.0 and float(stats["clip_fraction"]) == 0.0
    # A shuffled minibatch recomputes the same per-action losses (up to float reassociation).
    idx = torch.randperm(64)[:16]
    sub = flat[idx]
    again = fpo.cfm_loss(sub["observation"], sub["latent"], sub["cfm_eps"], sub["cfm_t"])
    assert torch.allclose(again, sub["cfm_loss_old"], atol=1e-5)


def test_fpo_cfm_loss_is_the_flow_matching_regression():
    fpo = FPO(3, 2, **SMALL)
    _randomise(fpo.velocity_net)
    obs, a = torch.randn(5, 3), torch.randn(5, 2)
    eps, t = torch.randn(5, 4, 2), torch.rand(5, 4, 1)
    expected = torch.zeros(5)
    for i in range(5):
        for j in range(4):
            x_t = t[i, j] * eps[i, j] + (1 - t[i, j]) * a[i]
            net = fpo.velocity_net
            v = net(net.condition(obs[i : i + 1]), x_t[None], net.time_bias(t[i, j][None]))[0]
            expected[i] += (v - (eps[i, j] - a[i])).pow(2).sum() / 4
    assert torch.allclose(fpo.cfm_loss(obs, a, eps, t), expected, atol=1e-5)


def test_fpo_clipped_loss_by_hand():
    fpo = FPO(3, 2, **SMALL, clip_epsilon=0.05)
    _randomise(fpo.velocity_net)
    flat = _fpo_batch(fpo, n=4)
    # Shift the old losses so the ratios exp(L_old - L_new) are 1.2, 0.9, 1.02, 0.5.
    flat.set("cfm_loss_old", flat["cfm_loss_old"] + torch.tensor([1.2, 0.9, 1.02, 0.5]).log())
    loss, stats = fpo.policy_loss(flat, torch.tensor([1.0, 1.0, -1.0, -1.0]))
    assert math.isclose(float(loss), -(1.05 + 0.9 - 1.02 - 0.95) / 4, abs_tol=1e-5)
    assert math.isclose(float(stats["clip_fraction"]), 0.75)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fpo_update_moves_the_cfm_loss_of_the_actions_with_the_advantage(sign):
    """Positive advantages make the actions more likely (lower CFM loss), negative less likely."""
    torch.manual_seed(0)
    fpo = FPO(3, 2, **SMALL, clip_epsilon=0.2)
    _randomise(fpo.velocity_net)
    flat = _fpo_batch(fpo)
    optimize = _sgd(fpo.velocity_net, lr=1e-3)
    for _ in range(5):
        loss, _ = fpo.policy_loss(flat, torch.full((64,), sign))
        optimize(loss)
    with torch.no_grad():
        new = fpo.cfm_loss(flat["observation"], flat["latent"], flat["cfm_eps"], flat["cfm_t"])
    change = float((new - flat["cfm_loss_old"]).mean())
    assert change * sign < 0, change


def test_fpo_train_on_end_to_end():
    torch.manual_seed(0)
    fpo = FPO(3, 2, **SMALL)
    optimize = _sgd(fpo, lr=3e-4)
    metrics = fpo.train_on(_rollout(fpo), optimize, stage=0)
    for key in ("loss", "loss_objective", "loss_critic", "clip_fraction", "kl_approx", "ratio", "cfm_loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert fpo.obs_norm.count == 64
    fpo.reset()
    assert fpo.obs_norm.count == 0 and all(float(p.abs().sum()) == 0 for p in fpo.velocity_net.body[-1].parameters())


# --- DPPO --------------------------------------------------------------------------------------------
def test_dppo_step_log_probs_are_exact_gaussians_around_the_ddim_mean():
    torch.manual_seed(0)
    dppo = DPPO(3, 2, **SMALL)
    _randomise(dppo.noise_net)
    obs = torch.randn(16, 3)
    out = dppo.act(obs, deterministic=False)
    chain, logp = out["chain"], out["chain_log_prob"]
    assert chain.shape == (16, 11, 2) and logp.shape == (16, 10) and torch.equal(out["latent"], chain[:, -1])
    abar = cosine_alpha_bar(10).float()
    net = dppo.noise_net
    cond = net.condition(obs)
    for j in range(10):
        k = 10 - j  # chain position j denoises x_k -> x_{k-1}
        x_k = chain[:, j]
        mean = dppo.means(cond, x_k, j)
        ref = torch.distributions.Normal(mean, 0.05).log_prob(chain[:, j + 1]).sum(-1)
        assert torch.allclose(logp[:, j], ref, atol=1e-4)
        # The mean is the DDIM (eta = 0) step for epshat = eps_id(x_k) + delta.
        r = (abar[k - 1] / abar[k]).sqrt()
        c = (1 - abar[k - 1]).sqrt() - r * (1 - abar[k]).sqrt()
        eps_hat = (1 - r) / c * x_k + net(cond, x_k, net.time_bias(torch.tensor([k / 10.0])))
        x0_hat = (x_k - (1 - abar[k]).sqrt() * eps_hat) / abar[k].sqrt()
        ddim = abar[k - 1].sqrt() * x0_hat + (1 - abar[k - 1]).sqrt() * eps_hat
        assert torch.allclose(mean, ddim, atol=1e-4)
    # The batched recomputation used by training agrees with the sampler's log-probs.
    assert torch.allclose(dppo.chain_log_prob(obs, chain), logp, atol=1e-3)


def test_dppo_ratio_is_one_at_old_equals_new():
    torch.manual_seed(0)
    dppo = DPPO(3, 2, **SMALL)
    _randomise(dppo.noise_net)
    obs = torch.randn(32, 3)
    batch = TensorDict({"observation": obs, **dppo.act(obs, deterministic=False)}, batch_size=[32])
    with torch.no_grad():
        batch = dppo.prepare(batch)
    # The recomputed old log-probs are the sampler's (same weights, same statistics)...
    assert torch.allclose(batch["chain_log_prob_old"], batch["chain_log_prob"], atol=1e-3)
    loss, stats = dppo.policy_loss(batch, torch.randn(32))
    assert float(stats["ratio"]) == 1.0 and float(stats["clip_fraction"]) == 0.0
    # ... and the update starts at ratio 1 even after the obs statistics moved under the rollout.
    dppo.obs_norm.update(torch.randn(100, 3) * 3 + 1)
    with torch.no_grad():
        batch = dppo.prepare(batch)
    _, stats = dppo.policy_loss(batch, torch.randn(32))
    assert float(stats["ratio"]) == 1.0


def test_dppo_fresh_policy_and_deterministic_chain():
    torch.manual_seed(0)
    dppo = DPPO(3, 2, **SMALL)
    obs = torch.randn(4096, 3)
    det = dppo.act(obs, deterministic=True)
    assert torch.equal(det["latent"], torch.zeros(4096, 2)) and torch.equal(det["chain"], torch.zeros(4096, 11, 2))
    a = dppo.act(obs, deterministic=False)["latent"]  # x_K + 10 steps of N(0, 0.05^2) noise
    assert abs(float(a.std()) - math.sqrt(1 + 10 * 0.05**2)) < 0.05


def test_dppo_train_on_end_to_end():
    torch.manual_seed(0)
    dppo = DPPO(3, 2, **SMALL)
    metrics = dppo.train_on(_rollout(dppo), _sgd(dppo, lr=3e-4), stage=0)
    for key in ("loss", "loss_objective", "loss_critic", "clip_fraction", "kl_approx", "ratio"):
        assert key in metrics and math.isfinite(metrics[key]), key


# --- the shared PPO update and hyperparameter set ----------------------------------------------------
def test_one_ppo_config_per_method_keeps_each_methods_defaults_and_drives_the_shared_update():
    from gorl.encoders import EncoderModule
    from gorl.errors import ConfigError

    enc, fpo, dppo = EncoderModule(3, 2), FPO(3, 2), DPPO(3, 2)
    # The authors' per-method values (configs/methods/{gorl_fm,fpo,dppo}.toml at bennidict23/GoRL@8a0209c).
    assert (enc.ppo.lr, enc.ppo.clip_epsilon, enc.ppo.entropy_coef) == (1e-3, [0.15, 0.3], 0.01)
    assert (fpo.ppo.lr, fpo.ppo.clip_epsilon, fpo.ppo.entropy_coef) == (3e-4, 0.05, 0.0)
    assert (dppo.ppo.lr, dppo.ppo.clip_epsilon, dppo.ppo.entropy_coef) == (3e-4, 0.2, 0.0)
    assert enc.ppo.at(1).clip_epsilon == 0.3 and fpo.ppo.at(3).max_grad_norm == 0.5
    for module in (enc, fpo, dppo):
        assert module.configure_optimizers().param_groups[0]["lr"] == module.ppo.at(0).lr
    # Bad values are one clear error, whichever method they reach.
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        FPO(3, 2, epochs=0)
    with pytest.raises(ConfigError, match="gamma must be in"):
        DPPO(3, 2, gamma=1.5)
    with pytest.raises(ConfigError, match="clip_epsilon must be > 0"):
        EncoderModule(3, 2, clip_epsilon=[0.2, 0.0])
    # The update steps epochs x minibatches times, as the set says (64 frames, minibatches of 32).
    for module in (FPO(3, 2, **SMALL), DPPO(3, 2, **SMALL)):
        steps = []
        module.train_on(_rollout(module), lambda loss, norm, steps=steps: steps.append(norm), stage=0)
        assert len(steps) == module.ppo.epochs * 2 and set(steps) == {module.ppo.at(0).max_grad_norm}


# --- configs and the real loop ---------------------------------------------------------------------
def _print_config(path) -> str:
    from gorl.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    return buf.getvalue()


def test_every_baseline_config_parses_and_references_the_shared_task_files():
    configs = sorted((CONF / "baselines").glob("*.yaml"))
    assert len(configs) == 18  # {ppo, fpo, dppo} x six paper tasks
    for path in configs:
        method, task = path.stem.split("_", 1)
        text = path.read_text()
        assert "../env/" in text and "../decoder/identity.yaml" in text and "task:" not in text, path
        out = _print_config(path)
        expected = {"ppo": "gorl.encoders.EncoderModule", "fpo": "gorl.baselines.FPO", "dppo": "gorl.baselines.DPPO"}
        expected = expected[method]
        assert f"class_path: {expected}" in out and "class_path: gorl.decoders.IdentityDecoder" in out, path
        assert "- 180000000" in out or "- 180000000.0" in out, path
        assert ("gamma: 0.95\n" in out) == (task == "finger_spin"), path


@pytest.mark.parametrize(
    "encoder, overrides",
    [
        ("fpo", ["--model.encoder.hidden", "[16,16]"]),
        ("dppo", ["--model.encoder.hidden", "[16,16]"]),
        ("ppo_baseline", ["--model.encoder.actor_hidden", "[16,16]"]),
    ],
)
def test_tiny_gorl_fit_of_each_baseline(tmp_path, gorl_in_process, encoder, overrides):
    res = gorl_in_process(  # in this process: about the baseline's config and training, not the command line
        "fit", "--config", str(CONF / "smoke.yaml"),
        "--model.encoder", str(CONF / "encoder" / f"{encoder}.yaml"),
        "--model.decoder", str(CONF / "decoder" / "identity.yaml"),
        "--model.loop.stages", "[384]", "--model.loop.eval_every", "256",
        "--model.encoder.unroll", "8", "--model.encoder.critic_hidden", "[32,32]",
        "--model.encoder.minibatch_size", "64", "--model.encoder.epochs", "2",
        *overrides,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = tmp_path.glob("runs/gorl/version_*/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    assert any(r.get("eval/return") for r in rows) and any(r.get("encoder/loss_objective") for r in rows)
    assert "final eval/return" in res.stdout + res.stderr
