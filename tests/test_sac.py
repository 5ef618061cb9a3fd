"""Latent SAC: its losses on hand-computed numbers, gradient isolation, Polyak averaging, the replay
buffer across decoder refits and checkpoints, stage resets, and a two-stage `gorl fit`."""

import json
import math

import pytest
import torch
from tensordict import TensorDict

from gorl.encoders import LatentSAC
from gorl.encoders.sac import actor_loss, critic_loss, polyak_, soft_target, temperature_loss
from tests.conftest import CONF

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _sac(**kw) -> LatentSAC:
    base = dict(actor_hidden=[16, 16], critic_hidden=[32, 32], batch_size=8, buffer_size=1000, learning_starts=16)
    enc = LatentSAC(3, 2, **{**base, **kw})
    enc.bind(lambda obs, eps: eps, torch.tanh)  # the identity decoder of stage 0
    return enc


def _rollout(n: int = 4, t: int = 4, seed: int = 0, terminated: bool = False) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, t, 2, generator=g)
    done = torch.zeros(n, t, 1, dtype=torch.bool)
    done[:, -1] = True
    term = done.clone() if terminated else torch.zeros_like(done)
    return TensorDict(
        {
            "observation": torch.randn(n, t, 3, generator=g),
            "latent": latent,
            "latent_log_prob": torch.zeros(n, t),
            "action": torch.tanh(latent),
            "next": {
                "observation": torch.randn(n, t, 3, generator=g),
                "reward": torch.randn(n, t, 1, generator=g),
                "done": done,
                "terminated": term,
                "truncated": done & ~term,
            },
        },
        batch_size=[n, t],
    )


def _optimizer_step(enc: LatentSAC):
    opt = enc.configure_optimizers()

    def optimize(loss, max_norm):
        opt.zero_grad()
        loss.backward()
        opt.step()

    return optimize


def _constant_critics(enc: LatentSAC, online: tuple[float, float], target: tuple[float, float]) -> None:
    """Q_i(s, x) == constant: zero the output weights, set the output biases."""
    with torch.no_grad():
        for net, (c1, c2) in ((enc.critic, online), (enc.critic_target, target)):
            for q, c in ((net.q1, c1), (net.q2, c2)):
                q[-1].weight.zero_()
                q[-1].bias.fill_(c)


# --- the maths on hand-computed numbers --------------------------------------------------------
def test_soft_target_by_hand():
    reward, terminated = torch.tensor([1.0, 2.0]), torch.tensor([False, True])
    next_q = torch.tensor([[3.0, 4.0], [5.0, 1.0]])  # [critic, batch]: mins 3 and 1
    next_log_prob = torch.tensor([-1.0, 2.0])
    y = soft_target(reward, terminated, next_q, next_log_prob, alpha=0.5, gamma=0.9)
    # 1 + 0.9 * (3 - 0.5 * -1) = 4.15; a terminated transition keeps only its reward
    assert torch.allclose(y, torch.tensor([4.15, 2.0]))


def test_critic_and_actor_losses_by_hand():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    # critic 1: ((1-2)^2 + 0) / 2 = 0.5; critic 2: (1 + 4) / 2 = 2.5; half their sum
    assert torch.isclose(critic_loss(q, torch.tensor([2.0, 2.0])), torch.tensor(1.5))
    q_pi = torch.tensor([[1.0, 4.0], [3.0, 2.0]])  # mins 1 and 2
    # mean(2 * 0.5 - 1, 2 * -1 - 2) = mean(0, -4)
    assert torch.isclose(actor_loss(q_pi, torch.tensor([0.5, -1.0]), alpha=2.0), torch.tensor(-2.0))


def test_temperature_gradient_sign():
    # entropy 5 below the target -2 (log-prob +5): alpha must grow, so d loss / d log_alpha < 0
    log_alpha = torch.zeros((), requires_grad=True)
    temperature_loss(log_alpha, torch.full((4,), 5.0), target_entropy=-2.0).backward()
    assert log_alpha.grad < 0 and torch.isclose(log_alpha.grad, torch.tensor(-3.0))
    log_alpha.grad = None
    temperature_loss(log_alpha, torch.full((4,), -5.0), target_entropy=-2.0).backward()
    assert log_alpha.grad > 0 and torch.isclose(log_alpha.grad, torch.tensor(7.0))


def test_polyak_exact_numbers():
    target, online = [torch.tensor([0.0, 0.0])], [torch.tensor([1.0, 2.0])]
    polyak_(target, online, 0.1)
    assert torch.allclose(target[0], torch.tensor([0.1, 0.2]))
    polyak_(target, online, 0.1)
    assert torch.allclose(target[0], torch.tensor([0.19, 0.38]))


def test_module_losses_match_the_hand_formula():
    """Constant critics, a fixed actor and replayed noise: every term of ``losses`` by hand."""
    enc = _sac(critic_input="latent", gamma=0.9, reward_scale=2.0, prior_reg="kl")
    _constant_critics(enc, online=(1.0, 4.0), target=(3.0, 5.0))
    with torch.no_grad():
        enc.log_alpha.fill_(math.log(0.5))
        enc.actor.net[-1].bias[:2] = 0.5  # loc = 0.5, scale = 1 everywhere: KL = 0.5 * 2 * 0.25
    batch = _rollout().reshape(-1)[:6]
    batch["next", "terminated"][:2] = True
    torch.manual_seed(3)
    loss, parts = enc.losses(batch, beta=0.2)
    torch.manual_seed(3)
    n_next, n = torch.randn(6, 2), torch.randn(6, 2)  # the draws for s', then for s
    logp_next = (-0.5 * n_next.pow(2) - HALF_LOG_2PI).sum(-1)
    logp = (-0.5 * n.pow(2) - HALF_LOG_2PI).sum(-1)
    r = 2.0 * batch["next", "reward"].reshape(-1)
    live = 1.0 - batch["next", "terminated"].reshape(-1).float()
    y = r + 0.9 * live * (3.0 - 0.5 * logp_next)
    expect_critic = 0.5 * ((1.0 - y).pow(2).mean() + (4.0 - y).pow(2).mean())
    expect_actor = (0.5 * logp - 1.0).mean()
    expect_alpha = -(math.log(0.5) * (logp - 2.0)).mean()  # target entropy -latent_dim = -2
    assert torch.isclose(parts["loss_critic"], expect_critic, atol=1e-5)
    assert torch.isclose(parts["loss_actor"], expect_actor, atol=1e-5)
    assert torch.isclose(parts["prior"], torch.tensor(0.25), atol=1e-6)
    assert torch.isclose(parts["loss_alpha"], expect_alpha, atol=1e-5)
    assert torch.isclose(loss, expect_critic + expect_actor + 0.2 * 0.25 + expect_alpha, atol=1e-5)


# --- gradients go where they belong ----------------------------------------------------------------
def _grads(enc: LatentSAC, term: str, seed: int = 0) -> dict[str, torch.Tensor | None]:
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    _, parts = enc.losses(_rollout().reshape(-1), beta=0.1)
    (parts["loss"] if term == "total" else parts[term]).backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in enc.named_parameters()}


def test_actor_loss_moves_the_actor_only_and_goes_through_the_decoder():
    enc = _sac(critic_input="action")
    calls = []
    enc.bind(lambda obs, eps: (calls.append(eps.requires_grad), 2.0 * eps + 0.1)[1], torch.tanh)
    with torch.no_grad():
        enc.actor.net[-1].weight.normal_()  # a non-trivial actor
    actor = _grads(enc, "loss_actor")
    assert True in calls and False in calls  # decoded with grad (actor) and without (target)
    assert all(g is None or not g.any() for n, g in actor.items() if n.startswith("critic") or n == "log_alpha")
    assert all(actor[n] is not None and actor[n].abs().sum() > 0 for n in actor if n.startswith("actor.net"))
    critic = _grads(enc, "loss_critic")
    assert all(g is None for n, g in critic.items() if n.startswith("actor") or n == "log_alpha")
    total = _grads(enc, "total")
    for n, g in critic.items():  # the critics' gradient of the summed loss is the critic loss's alone
        if n.startswith("critic."):
            assert torch.allclose(total[n], g, atol=1e-6), n
    assert not any(p.requires_grad for p in enc.critic_target.parameters())


def test_update_polyak_averages_the_targets():
    enc = _sac(tau=0.5, utd_ratio=1.0 / 16, learning_starts=8)  # one update for a 16-frame rollout
    before = [p.detach().clone() for p in enc.critic_target.parameters()]
    metrics = enc.train_on(_rollout(), _optimizer_step(enc), stage=1)
    assert metrics["updates"] == 1
    for old, new, online in zip(before, enc.critic_target.parameters(), enc.critic.parameters()):
        assert torch.allclose(new, old + 0.5 * (online - old), atol=1e-6)


# --- replay: warm-up, update-to-data ratio, refits, checkpoints ----------------------------------
def test_learning_starts_and_fractional_utd():
    enc = _sac(learning_starts=32, utd_ratio=0.1)
    optimize = _optimizer_step(enc)
    counts = [enc.train_on(_rollout(seed=i), optimize, 0).get("updates", 0.0) for i in range(4)]
    # 16 frames per call: nothing before the buffer holds 32; then 1.6 -> 1, 1.6 + 0.6 -> 2, ...
    assert counts == [0.0, 1.0, 2.0, 1.0]
    assert enc.buffer_size == 64


def test_decoder_change_clears_latent_replay_and_keeps_action_replay():
    for critic_input, kept in (("latent", 0), ("action", 16)):
        enc = _sac(critic_input=critic_input)
        enc.push(_rollout().reshape(-1))
        enc.on_decoder_change()
        assert enc.buffer_size == kept, critic_input
        enc.push(_rollout().reshape(-1))  # the buffer refills after a clear
        assert enc.buffer_size == kept + 16


def test_replay_buffer_is_in_no_state_dict_and_snapshot_is_the_actor():
    enc = _sac()
    keys = set(enc.state_dict())
    enc.train_on(_rollout(n=8), _optimizer_step(enc), 0)
    assert enc.buffer_size == 32 and set(enc.state_dict()) == keys
    assert not any("buffer" in k or "storage" in k for k in keys)
    assert set(enc.snapshot()) == {k for k in keys if k.startswith("actor.")}
    clone = _sac()
    clone.load_state_dict(enc.state_dict())  # a checkpoint round trip: weights back, buffer empty
    assert clone.buffer_size == 0


def _stored(enc: LatentSAC) -> list[tuple[float, ...]]:
    rows = enc._buffer.storage[torch.arange(len(enc._buffer))]
    return sorted(map(tuple, torch.cat([rows["observation"], rows["next", "reward"].unsqueeze(-1)], -1).tolist()))


def test_checkpointed_replay_buffer_resumes_with_the_same_transitions_and_overwrite_order(tmp_path):
    enc = _sac(buffer_size=40)
    for seed in range(3):  # 48 transitions into 40 slots: the ring has wrapped
        enc.push(_rollout(seed=seed).reshape(-1))
    torch.save(enc.checkpoint_state(), tmp_path / "state.pt")
    resumed = _sac(buffer_size=40)
    resumed.load_checkpoint_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.buffer_size == 40
    for e in (enc, resumed):  # the next push must overwrite the same (oldest) transitions in both
        e.push(_rollout(seed=9).reshape(-1))
    assert resumed.buffer_size == 40 and _stored(resumed) == _stored(enc)
    resumed.clear_buffer()
    assert resumed.buffer_size == 0 and resumed.checkpoint_state()["replay"] is None
    assert _sac(checkpoint_buffer=False).checkpoint_state()["replay"] is None


@pytest.mark.parametrize("checkpoint_buffer", [True, False])
def test_fractional_update_credit_survives_a_checkpoint(tmp_path, checkpoint_buffer):
    enc = _sac(utd_ratio=0.3, learning_starts=8, checkpoint_buffer=checkpoint_buffer)
    enc.train_on(_rollout(n=8), _optimizer_step(enc), 0)  # 0.3 x 32 frames = 9 updates, 0.6 left
    assert enc._update_credit == pytest.approx(0.6)
    torch.save(enc.checkpoint_state(), tmp_path / "state.pt")
    resumed = _sac(utd_ratio=0.3, learning_starts=8, checkpoint_buffer=checkpoint_buffer)
    resumed.load_checkpoint_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed._update_credit == pytest.approx(0.6)


def _perturb(enc: LatentSAC) -> None:
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.5)
        for p in enc.critic_target.parameters():
            p.add_(0.5)


def test_reset_modes_and_restore():
    obs = torch.randn(5, 3)
    enc = _sac()  # critic_input action, reset auto = actor
    enc.push(_rollout().reshape(-1))
    _perturb(enc)
    critic, alpha = enc.critic(obs, torch.zeros(5, 2)).clone(), float(enc.log_alpha)
    best = enc.snapshot()
    enc.reset(best)
    loc, scale = enc.actor(obs)
    assert torch.allclose(loc, torch.zeros_like(loc)) and torch.allclose(scale, torch.ones_like(scale), atol=1e-6)
    assert torch.allclose(enc.critic(obs, torch.zeros(5, 2)), critic) and float(enc.log_alpha) == alpha
    assert enc.buffer_size == 16
    enc.restore(best)  # restoring the best actor leaves the critics as they are now
    assert not torch.allclose(enc.actor(obs)[0], torch.zeros(5, 2))
    assert torch.allclose(enc.critic(obs, torch.zeros(5, 2)), critic)

    fresh = _sac(reset="fresh")
    reference = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("critic")}
    fresh.push(_rollout().reshape(-1))
    _perturb(fresh)
    fresh.reset()
    assert fresh.buffer_size == 0 and abs(float(fresh.log_alpha.exp()) - 0.1) < 1e-6
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in reference.items())  # re-drawn...
    assert all(torch.equal(a, b) for a, b in zip(fresh.critic.parameters(), fresh.critic_target.parameters()))  # ...and synced

    latent = _sac(critic_input="latent")  # auto = fresh: Q(s, eps) is stale after a refit
    assert latent.reset_mode == "fresh" and not latent.needs_decoder

    warm = _sac(reset="warm")
    best = warm.snapshot()
    _perturb(warm)
    critic = warm.critic(obs, torch.zeros(5, 2)).clone()
    warm.reset(best)
    assert all(torch.equal(v, best[k]) for k, v in warm.state_dict().items() if k in best)
    assert torch.allclose(warm.critic(obs, torch.zeros(5, 2)), critic)


def _bandit(prior_reg: str, iters: int = 40, seed: int = 0) -> float:
    """Reward -(a - 0.5)^2, episodes of one step, decoder eps -> eps + 1, actor started saturated
    (mean latent 6, tanh(7) = 1.0). Returns the deterministic action at the end."""
    torch.manual_seed(seed)
    fast = dict(actor_lr=3e-3, critic_lr=3e-3, alpha_lr=3e-3)
    enc = LatentSAC(1, 1, actor_hidden=[32], critic_hidden=[64, 64], batch_size=64, learning_starts=64, prior_reg=prior_reg, prior_coef=1e-3, **fast)
    with torch.no_grad():
        enc.actor.net[-1].bias[0] = 6.0
    enc.bind(lambda obs, eps: eps + 1.0, torch.tanh)
    optimize = _optimizer_step(enc)
    obs, done = torch.zeros(32, 1, 1), torch.ones(32, 1, 1, dtype=torch.bool)
    for _ in range(iters):
        with torch.no_grad():
            out = enc.act(obs, deterministic=False)
        action = torch.tanh(out["latent"] + 1.0)
        nxt = {"observation": obs, "reward": -(action - 0.5).pow(2), "terminated": done, "done": done}
        enc.train_on(TensorDict({"observation": obs, **out, "action": action, "next": nxt}, batch_size=[32, 1]), optimize, 0)
    with torch.no_grad():
        return float(torch.tanh(enc.act(torch.zeros(1, 1), deterministic=True)["latent"] + 1.0))


def test_sac_learns_through_a_decoder_and_the_prior_pulls_it_out_of_saturation():
    """With the tanh-free latent entropy, a saturated actor sees a flat Q and stays put unless the
    prior regulariser pulls it back; with it, SAC finds the optimum (a = 0.5, eps = -0.45)."""
    assert abs(_bandit("kl") - 0.5) < 0.1
    assert _bandit("none") > 0.99


# --- the whole loop --------------------------------------------------------------------------------
def test_gorl_fit_two_stages_with_sac(tmp_path, gorl_in_process):
    # In this process (about the encoder, not the command line), where torch runs on one thread
    # (tests/conftest.py): hundreds of tiny updates on oversubscribed cores slow down 10x+.
    small = {"actor_hidden": [16, 16], "critic_hidden": [32, 32], "batch_size": 32, "learning_starts": 64}
    encoder = {"class_path": "gorl.encoders.LatentSAC", "init_args": small}
    res = gorl_in_process(
        "fit", "--config", str(CONF / "smoke.yaml"), "--model.encoder", json.dumps(encoder),
        "--model.loop.stages", "[256,128]",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, res.stderr[-3000:]
    assert "decoder fitted" in out and "finished stage 1" in out
    (metrics,) = tmp_path.glob("runs/gorl/version_0/metrics.csv")
    header = metrics.read_text().splitlines()[0]
    assert "encoder/loss_critic" in header and "encoder/alpha" in header
    # The checkpoint carries the replay buffer, and a resumed (here: extended) run starts from it.
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    replay = torch.load(ckpt, weights_only=True)["gorl_loop"]["encoder"]["replay"]
    n = replay["observation"].shape[0]
    assert n > 0 and replay["next"]["reward"].shape == (n,)
    res = gorl_in_process(  # the replay buffer comes back from the checkpoint file
        "fit", "--config", str(CONF / "smoke.yaml"), "--model.encoder", json.dumps(encoder),
        "--model.loop.stages", "[256,128,128]", "--ckpt_path", str(ckpt),  # a further stage: a finished plan is refused
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"restored {n:,} replay transitions" in res.stdout + res.stderr
