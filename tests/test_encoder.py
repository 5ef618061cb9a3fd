"""Latent PPO encoder: the authors' initialisation (fresh and exact-prior), log-prob agreement, a PPO update improves its loss,
the KL regulariser, per-stage schedules and reset modes."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from gorl.encoders import EncoderModule
from gorl.errors import ConfigError
from gorl.policy import LatentPolicy
from gorl.prior import kl_to_standard_normal, prior_regulariser


def _encoder(**kw) -> EncoderModule:
    base = dict(actor_hidden=[16, 16], critic_hidden=[32, 32], epochs=4, minibatch_size=64, unroll=16)
    return EncoderModule(3, 2, **{**base, **kw})


def _fixed_rollout(enc: EncoderModule, n: int = 8, t: int = 16, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, t, 3, generator=g)
    nxt = torch.randn(n, t, 3, generator=g)
    with torch.no_grad():
        loc, scale = enc.actor_net(obs)
        latent = loc + scale * torch.randn(loc.shape, generator=g)
        logp = torch.distributions.Normal(loc, scale).log_prob(latent).sum(-1)
    reward = latent[..., :1]  # reward the first latent coordinate: a learnable signal
    done = torch.zeros(n, t, 1, dtype=torch.bool)
    done[:, -1] = True
    return TensorDict(
        {
            "observation": obs,
            "latent": latent,
            "latent_log_prob": logp,
            "next": {"observation": nxt, "reward": reward, "done": done, "terminated": torch.zeros_like(done), "truncated": done.clone()},
        },
        batch_size=[n, t],
    )


def _lecun_reference_policy(obs: torch.Tensor, hidden: list[int], latent_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) of a newly initialised network as the authors build one (``mlp_init``:
    LeCun-uniform weights, zero biases; SiLU; ``scale = softplus(raw) + 1e-3``), written out here
    independently of gorl.networks."""
    g = torch.Generator().manual_seed(seed)
    x, dims = obs, [obs.shape[-1], *hidden, 2 * latent_dim]
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        bound = (3.0 / fan_in) ** 0.5
        w = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound
        x = x @ w  # biases are zero
        if i < len(dims) - 2:
            x = torch.nn.functional.silu(x)
    loc, raw = x.chunk(2, -1)
    return loc, torch.nn.functional.softplus(raw) + 1e-3


def _policy_stats(pairs) -> tuple[float, float, float]:
    """Over networks and observations: mean |loc|, mean scale, mean within-network std of scale."""
    locs, scales = zip(*pairs)
    return (torch.stack(locs).abs().mean().item(), torch.stack(scales).mean().item(),
            torch.stack([s.std(0).mean() for s in scales]).mean().item())


def test_fresh_encoder_is_a_newly_initialised_network_like_the_authors():
    """Their fresh encoder (``PpoState.init``) is a random function of the observation with scale
    ~ softplus(small) + 1e-3, not exactly N(0, I): ours matches a LeCun-uniform, zero-bias network
    of the same shape in distribution (over many networks and observations)."""
    hidden, obs_dim, latent = [32, 32, 32, 32], 17, 6
    obs = torch.randn(256, obs_dim)
    ours, ref = [], []
    for seed in range(24):
        torch.manual_seed(seed)
        with torch.no_grad():
            ours.append(EncoderModule(obs_dim, latent, actor_hidden=hidden, critic_hidden=[8]).actor_net(obs))
        ref.append(_lecun_reference_policy(obs, hidden, latent, 1000 + seed))
    (loc_o, scale_o, spread_o), (loc_r, scale_r, spread_r) = _policy_stats(ours), _policy_stats(ref)
    assert abs(scale_o - scale_r) < 0.02 and 0.6 < scale_o < 0.8  # ~ softplus(0) + 1e-3 = 0.694, not 1
    assert abs(loc_o / loc_r - 1) < 0.2 and loc_o > 0.02  # a small random mean, not 0
    assert abs(spread_o / spread_r - 1) < 0.3  # scale varies with the observation as theirs does
    # The exact prior stays reachable: their GAUSSIAN initialisation, for stage 0 too.
    loc, scale = _encoder(reset="gaussian").actor_net(obs[:, :3])
    assert torch.equal(loc, torch.zeros_like(loc)) and torch.allclose(scale, torch.ones_like(scale), atol=1e-6)
    loc, scale = _encoder(reset=["gaussian", "fresh"]).actor_net(obs[:, :3])
    assert torch.equal(loc, torch.zeros_like(loc))


def _linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_actor_and_critic_layers_are_lecun_uniform_with_zero_biases():
    """The authors' ``mlp_init``: weights U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)), biases 0."""
    torch.manual_seed(0)
    enc = EncoderModule(17, 6)  # their shapes: actor 4 x 32, critic 5 x 256
    layers = _linears(enc.actor_net) + _linears(enc.critic_net)
    assert len(layers) == 5 + 6
    for layer in layers:
        bound = (3.0 / layer.in_features) ** 0.5
        w = layer.weight
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert w.abs().max() <= bound
        if w.numel() >= 500:  # variance 1 / fan_in (PyTorch's default: 1 / (3 fan_in))
            assert abs(w.var().item() * layer.in_features - 1.0) < 0.15
    # PyTorch's default stays reachable.
    old = EncoderModule(17, 6, init="torch_default")
    assert all(layer.bias.abs().sum() > 0 for layer in _linears(old.critic_net))
    with pytest.raises(ConfigError):
        EncoderModule(17, 6, init="xavier")


def test_acting_policy_log_prob_matches_the_loss_actor():
    enc = _encoder()
    with torch.no_grad():
        enc.actor_net.net[-1].weight.normal_()
    policy = LatentPolicy(enc.act, lambda obs, eps: eps, torch.tanh)
    td = policy(TensorDict({"observation": torch.randn(6, 3)}, batch_size=[6]))
    dist = enc.actor.get_dist(td.select("observation"))
    assert torch.allclose(dist.log_prob(td["latent"]), td["latent_log_prob"], atol=1e-5)
    assert torch.allclose(td["action"], torch.tanh(td["pre_tanh"]))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        det = policy(TensorDict({"observation": td["observation"]}, batch_size=[6]))
    assert torch.allclose(det["latent"], enc.actor_net(td["observation"])[0])


def test_ppo_update_on_a_fixed_batch_reduces_its_loss():
    torch.manual_seed(0)
    enc = _encoder(lr=1e-3, prior_reg="none", entropy_coef=0.0, reward_scale=1.0)
    enc.loss_module.normalize_advantage = False  # compare like with like on the frozen advantages
    rollout = _fixed_rollout(enc)
    data = rollout.clone().reshape(-1, rollout.shape[-1])
    data.set(("next", "reward"), data["next", "reward"] * enc.hparams.reward_scale)
    with torch.no_grad():
        enc.gae(data)
    flat = data.reshape(-1)

    def loss_of() -> float:
        with torch.no_grad():
            out = enc.loss_module(flat.clone())
        return float(out["loss_objective"] + out["loss_critic"])

    before = loss_of()
    opt = enc.configure_optimizers()

    def optimize(loss, max_norm):
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        for start in range(0, len(flat), 32):
            out = enc.loss_module(flat[start : start + 32].clone())
            optimize(out["loss_objective"] + out["loss_critic"], 0.0)
    assert loss_of() < before


@pytest.mark.parametrize("normalize_advantage,entropy_coef,clip", [(True, 0.01, 0.15), (False, 0.0, 0.3)])
def test_fused_loss_equals_torchrl_clip_ppo_loss_in_value_and_gradient(normalize_advantage, entropy_coef, clip):
    torch.manual_seed(0)
    enc = _encoder(normalize_advantage=normalize_advantage, entropy_coef=entropy_coef, value_coef=0.5, clip_epsilon=clip)
    rollout = _fixed_rollout(enc)
    enc.obs_norm.update(rollout["observation"])
    g = torch.Generator().manual_seed(1)
    batch = rollout.reshape(-1)[:64].clone()
    batch["advantage"] = torch.randn(64, 1, generator=g) * 3 + 1
    batch["value_target"] = torch.randn(64, 1, generator=g)
    # Old log-probs of a slightly different policy, so that some ratios fall outside the clip.
    batch["latent_log_prob"] = batch["latent_log_prob"] + 0.3 * torch.randn(64, generator=g)

    def losses_and_grads(impl):
        enc.zero_grad()
        out = enc.ppo_loss(batch, clip)[0] if impl == "fused" else enc.loss_module(batch)
        total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
        total.backward()
        return out, torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None])

    ours, ours_grad = losses_and_grads("fused")
    ref, ref_grad = losses_and_grads("torchrl")
    assert 0.05 < float(ref["clip_fraction"]) < 0.95  # the clip is exercised
    for key in ("loss_objective", "loss_critic", "loss_entropy", "entropy", "clip_fraction"):
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_both_loss_implementations_train_identically():
    runs = {}
    for impl in ("fused", "torchrl"):
        torch.manual_seed(0)
        enc = _encoder(loss_impl=impl, prior_reg="kl", entropy_coef=0.01)
        opt = enc.configure_optimizers()
        torch.manual_seed(1)  # same minibatch order
        metrics = enc.train_on(_fixed_rollout(enc), lambda loss, n: (opt.zero_grad(), loss.backward(), opt.step()), stage=0)
        runs[impl] = (metrics, torch.cat([p.detach().flatten() for p in enc.parameters()]))
    for key in ("loss", "loss_objective", "loss_critic", "entropy", "prior", "clip_fraction"):
        assert abs(runs["fused"][0][key] - runs["torchrl"][0][key]) < 1e-4 * max(1.0, abs(runs["torchrl"][0][key])), key
    torch.testing.assert_close(runs["fused"][1], runs["torchrl"][1], rtol=1e-3, atol=1e-5)


def test_unknown_loss_impl_is_a_config_error():
    with pytest.raises(ConfigError, match="loss_impl"):
        _encoder(loss_impl="clip")


def test_train_on_runs_end_to_end_and_reports_metrics():
    enc = _encoder()
    opt = enc.configure_optimizers()
    metrics = enc.train_on(_fixed_rollout(enc), lambda loss, n: (opt.zero_grad(), loss.backward(), opt.step()), stage=0)
    for key in ("loss", "loss_objective", "loss_critic", "entropy", "prior", "clip_fraction"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key]))
    assert enc.obs_norm.count == 8 * 16


def test_kl_regulariser_matches_torch_distributions():
    loc, scale = torch.randn(7, 4), torch.rand(7, 4) + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1),
        torch.distributions.Independent(torch.distributions.Normal(torch.zeros(4), torch.ones(4)), 1),
    )
    assert torch.allclose(kl_to_standard_normal(loc, scale), ref, atol=1e-5)
    assert torch.allclose(prior_regulariser(loc, scale, "kl"), ref.mean(), atol=1e-5)
    assert torch.allclose(prior_regulariser(loc, scale, "l2"), loc.pow(2).mean() + scale.pow(2).mean())
    assert prior_regulariser(torch.zeros(3, 2), torch.ones(3, 2), "kl") == 0


def test_per_stage_schedule_applies_clip_and_lr():
    enc = _encoder(clip_epsilon=[0.15, 0.3], lr=[1e-3, 5e-4])
    opt = enc.configure_optimizers()
    enc.set_stage(0, opt)
    assert abs(float(enc.loss_module.clip_epsilon) - 0.15) < 1e-6 and opt.param_groups[0]["lr"] == 1e-3
    enc.set_stage(3, opt)
    assert abs(float(enc.loss_module.clip_epsilon) - 0.3) < 1e-6 and opt.param_groups[0]["lr"] == 5e-4


def _perturb(enc: EncoderModule) -> None:
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    enc.obs_norm.update(torch.randn(10, 3) * 5)


def test_reset_modes():
    obs = torch.randn(4, 3)
    fresh = _encoder(reset="fresh")
    _perturb(fresh)
    fresh.reset()
    loc, scale = fresh.actor_net(obs)
    # A newly initialised network (the authors' FRESH): zero biases, random weights, not the prior.
    assert fresh.obs_norm.count == 0 and all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in _linears(fresh))
    assert not torch.allclose(loc, torch.zeros_like(loc)) and not torch.allclose(scale, torch.ones_like(scale), atol=1e-2)

    gauss = _encoder(reset=["fresh", "gaussian"])
    _perturb(gauss)
    gauss.reset(gauss.snapshot(), stage=1)
    loc, scale = gauss.actor_net(obs)
    assert torch.equal(loc, torch.zeros_like(loc)) and torch.allclose(scale, torch.ones_like(scale), atol=1e-6)
    assert gauss.obs_norm.count == 0 and torch.equal(gauss.critic_net.net[0].bias, torch.zeros_like(gauss.critic_net.net[0].bias))

    wv = _encoder(reset="warm_value")
    _perturb(wv)
    critic_before = wv.critic_net(obs).clone()
    actor_before = wv.actor_net.net[0].weight.clone()
    wv.reset()
    assert torch.allclose(wv.critic_net(obs), critic_before) and wv.obs_norm.count == 10
    # their gaussian_warm_value: a fresh actor (new hidden layers) whose output layer is set to N(0, I)
    loc, scale = wv.actor_net(obs)
    assert torch.equal(loc, torch.zeros(4, 2)) and torch.allclose(scale, torch.ones_like(scale), atol=1e-6)
    assert not torch.allclose(wv.actor_net.net[0].weight, actor_before)
    assert torch.equal(wv.actor_net.net[0].bias, torch.zeros_like(wv.actor_net.net[0].bias))

    warm = _encoder(reset="warm")
    best = warm.snapshot()
    _perturb(warm)
    warm.reset(best)
    assert all(torch.equal(v, best[k]) for k, v in warm.state_dict().items())


def test_reward_norm_divides_by_the_running_std_of_the_discounted_return():
    enc = _encoder(reward_norm=True, gamma=0.5)
    reward = torch.ones(2, 3, 1)
    done = torch.zeros(2, 3, 1, dtype=torch.bool)
    done[0, 1] = True  # env 0's episode ends after step 1: its return restarts
    out = enc._normalize_reward(reward, done)
    returns = torch.tensor([[1.0, 1.5, 1.0], [1.0, 1.5, 1.75]])  # per env, per step
    assert torch.allclose(out, reward / returns.var(unbiased=False).sqrt(), atol=1e-5)
    # The return carries over to the next rollout (env 1 continues: 1.75 * 0.5 + 1).
    enc._normalize_reward(torch.ones(2, 1, 1), torch.zeros(2, 1, 1, dtype=torch.bool))
    assert torch.allclose(enc._running_return.reshape(-1), torch.tensor([1.5, 1.875]))
    assert enc.hparams.reward_norm and not _encoder().hparams.reward_norm


def test_tanh_entropy_adds_the_tanh_log_det_jacobian_at_a_policy_sample():
    """Brax's tanh_normal entropy: the Gaussian's plus ``sum log(1 - tanh(u)^2)`` at ``u ~ pi``.
    With the policy's scale pinned near 0 the sample is ``loc``, so the bonus is known exactly."""
    torch.manual_seed(0)
    plain, tanh = _encoder(), _encoder(tanh_entropy=True)
    tanh.load_state_dict(plain.state_dict())
    batch = _fixed_rollout(plain).reshape(-1)[:32].clone()
    batch["advantage"], batch["value_target"] = torch.ones(32, 1), torch.zeros(32, 1)
    loc = torch.linspace(-2, 2, 64).reshape(32, 2)
    for enc in (plain, tanh):
        enc.actor_net.forward = lambda obs: (loc, torch.full_like(loc, 1e-6))
    gap = tanh.ppo_loss(batch, 0.2)[0]["entropy"] - plain.ppo_loss(batch, 0.2)[0]["entropy"]
    torch.testing.assert_close(gap, torch.log(1 - torch.tanh(loc) ** 2).sum(-1).mean(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="tanh_entropy needs loss_impl: fused"):
        _encoder(tanh_entropy=True, loss_impl="torchrl")


def test_a_bounded_latent_is_decoded_as_tanh_of_the_gaussian_sample_it_is_scored_on():
    enc = _encoder()
    enc.bounded_latent = True
    obs = torch.randn(16, 3)
    for deterministic in (True, False):
        out = enc.act(obs, deterministic)
        loc, scale = enc.actor_net(obs)
        torch.testing.assert_close(out["squashed_latent"], torch.tanh(out["latent"]))
        torch.testing.assert_close(out["latent_log_prob"], torch.distributions.Normal(loc, scale).log_prob(out["latent"]).sum(-1))
        if deterministic:
            torch.testing.assert_close(out["squashed_latent"], torch.tanh(loc))  # Brax's mode of tanh_normal


@pytest.mark.parametrize("use_prior", [False, True])
def test_the_compiled_ppo_loss_gives_the_eager_loss_and_gradients(use_prior):
    """``model.speed.compile`` traces the fused loss with torch.compile; here through the
    ``aot_eager`` backend (the same capture and autograd graphs, without inductor's seconds of C++
    compile; ``benchmarks/gpu_check.py``'s step 4 times inductor itself, on a CPU with ``--quick``). Every stage's constants are
    tensors, so a new stage does not recompile."""
    import torch._dynamo

    torch._dynamo.reset()
    enc = _encoder(prior_reg="l2", prior_coef=[0.0, 1e-3] if use_prior else 0.0)
    rollout = _fixed_rollout(enc)
    enc.obs_norm.update(rollout["observation"])
    batch = rollout.reshape(-1)[:64].clone()
    batch["advantage"], batch["value_target"] = torch.randn(64, 1), torch.randn(64, 1)
    adv = batch["advantage"].reshape(-1)

    def loss_and_grads(stage: int):
        enc.zero_grad()
        total, stats = enc._loss_at(stage)(batch, adv)
        total.backward()
        return total.detach(), {k: v.detach() for k, v in stats.items()}, torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None])

    from torch._dynamo.backends.debugging import aot_eager

    graphs = []

    def counting_aot_eager(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    eager = [loss_and_grads(stage) for stage in (0, 1)]
    enc.compile_loss(backend=counting_aot_eager)
    compiled = [loss_and_grads(stage) for stage in (0, 1)]
    assert enc._compiled_terms.enabled and enc._compiled_terms.compiled is not None  # no fallback to eager
    # one graph, no graph break; with the prior on in stage 1 only, that stage's graph is a second one
    assert len(graphs) == (2 if use_prior else 1)
    for (e_total, e_stats, e_grad), (c_total, c_stats, c_grad) in zip(eager, compiled):
        torch.testing.assert_close(c_total, e_total, rtol=1e-5, atol=1e-6)
        for key in e_stats:
            torch.testing.assert_close(c_stats[key], e_stats[key], rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(c_grad, e_grad, rtol=1e-4, atol=1e-6)
    if use_prior:
        assert float(eager[1][1]["prior"]) > 0 and float(eager[0][1]["prior"]) == 0  # stage 1 has the prior term
