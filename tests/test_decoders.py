"""Decoders: exact identity at initialisation, bimodal fits (a Gaussian cannot), standalone
Lightning training, and the refinement data path never carrying the rollout latent."""

import lightning.pytorch as pl
import pytest
import torch
from tensordict import TensorDict

from gorl.decoders import DiffusionDecoder, FlowDecoder, IdentityDecoder
from gorl.refinement import DecoderDataModule, DecoderFit, RefinementConfig, decoder_pairs, split_by_episode, top_q_episodes

DECODERS = [FlowDecoder, DiffusionDecoder]


@pytest.mark.parametrize("cls", DECODERS + [IdentityDecoder])
def test_untrained_decoder_is_the_identity(cls):
    torch.manual_seed(0)
    dec = cls(11, 4)
    dec.obs_norm.update(torch.randn(50, 11) * 3)  # any statistics: the head is zero
    obs, eps = torch.randn(256, 11) * 5, torch.randn(256, 4) * 3
    assert torch.equal(dec.decode(obs, eps), eps)


@pytest.mark.parametrize("cls", DECODERS)
def test_decoder_layers_are_lecun_uniform_with_zero_biases_and_a_zero_head(cls):
    """The authors' decoders: ``mlp_init`` (LeCun-uniform weights, zero biases) on every layer,
    then the final layer zeroed (``zero_final_layer = True``)."""
    torch.manual_seed(0)
    dec = cls(17, 6, hidden=[128, 128, 128, 128])
    layers = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 5 and layers[0].in_features == 17 + 6 + 8  # one first layer on [obs, x, t]
    head = layers[-1]
    assert torch.equal(head.weight, torch.zeros_like(head.weight)) and torch.equal(head.bias, torch.zeros_like(head.bias))
    for layer in layers[:-1]:
        bound = (3.0 / layer.in_features) ** 0.5
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias)) and layer.weight.abs().max() <= bound
        assert abs(layer.weight.var().item() * layer.in_features - 1.0) < 0.15  # PyTorch's default: 1/3
    old = cls(17, 6, hidden=[128, 128], init="torch_default")
    assert old.net.inp.bias.abs().sum() > 0


def _bimodal(n: int, seed: int = 0) -> TensorDict:
    """Context c ~ U(-1, 1); pre-tanh action +-(0.8 + 0.4 c) with equal odds, small noise."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g) * 2 - 1
    sign = torch.randint(0, 2, (n, 1), generator=g) * 2 - 1
    a = sign * (0.8 + 0.4 * c) + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDict({"observation": c, "action": a}, batch_size=[n])


def _mode_fractions(samples: torch.Tensor, context: float) -> tuple[float, float, float]:
    m = 0.8 + 0.4 * context
    plus = ((samples - m).abs() < 0.25).float().mean().item()
    minus = ((samples + m).abs() < 0.25).float().mean().item()
    valley = (samples.abs() < 0.25).float().mean().item()
    return plus, minus, valley


@pytest.mark.parametrize("cls", DECODERS)
def test_decoder_fitted_standalone_reproduces_both_modes(cls):
    torch.manual_seed(0)
    dec = cls(1, 1, hidden=[64, 64, 64], lr=3e-3)
    dm = DecoderDataModule(_bimodal(4096), _bimodal(512, seed=1), batch_size=256)
    trainer = pl.Trainer(max_epochs=40, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(dec, dm)
    assert dec.obs_norm.count == 4096  # statistics frozen from the training data at fit start
    for context in (-0.5, 0.0, 0.5):
        with torch.no_grad():
            samples = dec.decode(torch.full((2000, 1), context), torch.randn(2000, 1))
        plus, minus, valley = _mode_fractions(samples, context)
        assert plus >= 0.3 and minus >= 0.3, (cls.__name__, context, plus, minus)
        assert valley < 0.1, (cls.__name__, context, valley)


def test_a_gaussian_fit_cannot_reproduce_both_modes():
    data = _bimodal(4096)
    c, a = data["observation"], data["action"]
    # Conditional Gaussian MLE: linear mean in c, one std (the best a unimodal policy can do here).
    X = torch.cat([c, torch.ones_like(c)], 1)
    w = torch.linalg.lstsq(X, a).solution
    std = (a - X @ w).std()
    for context in (-0.5, 0.0, 0.5):
        mean = w[0] * context + w[1]
        samples = mean + std * torch.randn(2000, 1)
        plus, minus, valley = _mode_fractions(samples, context)
        assert min(plus, minus) < 0.3 or valley >= 0.1


def _rollout(n_envs: int = 4, t: int = 25) -> TensorDict:
    traj = torch.arange(n_envs).repeat_interleave(t).reshape(n_envs, t)
    return TensorDict(
        {
            "observation": torch.randn(n_envs, t, 3),
            "latent": torch.full((n_envs, t, 2), float("nan")),  # poison: must never be read
            "pre_tanh": torch.randn(n_envs, t, 2),
            "collector": {"traj_ids": traj},
            "next": {"reward": torch.rand(n_envs, t, 1)},
        },
        batch_size=[n_envs, t],
    )


def test_refinement_data_never_carries_the_rollout_latent():
    pairs = decoder_pairs(_rollout())
    assert "latent" not in pairs.keys()
    assert set(pairs.keys()) == {"observation", "action", "episode", "reward"}
    train, val = split_by_episode(pairs, 0.25, torch.Generator().manual_seed(0))
    fit = DecoderFit(RefinementConfig(transitions=100, steps=4, val_every=2, batch_size=32), train, val)
    dec = FlowDecoder(3, 2, hidden=[16])
    opt = dec.configure_optimizers()
    metrics = fit.step(dec, lambda loss: (opt.zero_grad(), loss.backward(), opt.step()))
    assert torch.isfinite(torch.tensor([metrics["train_loss"], metrics["val_loss"]])).all()


def test_collect_by_frames_or_by_finished_episodes():
    from gorl.refinement import collect

    def batches():
        while True:
            roll = _rollout(n_envs=2, t=10)
            done = torch.zeros(2, 10, 1, dtype=torch.bool)
            done[:, -1] = True  # each batch finishes 2 episodes
            roll["next", "done"] = done
            yield roll

    data, frames = collect(batches(), frames=50)
    assert frames == 60 and len(data) == 60
    data, frames = collect(batches(), frames=10**9, episodes=5)
    assert frames == 60  # three batches of 2 finished episodes each


def test_split_by_episode_keeps_episodes_whole():
    pairs = decoder_pairs(_rollout(n_envs=10))
    train, val = split_by_episode(pairs, 0.2, torch.Generator().manual_seed(0))
    assert len(set(train["episode"].tolist()) & set(val["episode"].tolist())) == 0
    assert len(set(val["episode"].tolist())) == 2 and len(train) + len(val) == len(pairs)


def test_top_q_keeps_the_best_episodes():
    pairs = decoder_pairs(_rollout(n_envs=4, t=5))
    pairs["reward"] = pairs["episode"].float()  # episode k has return 5k
    kept = top_q_episodes(pairs, 0.5)
    assert set(kept["episode"].tolist()) == {2, 3}


def test_early_stopping_keeps_the_best_validation_weights():
    torch.manual_seed(0)
    data = _bimodal(512)
    train, val = data[:448], data[448:]
    fit = DecoderFit(RefinementConfig(transitions=512, steps=42, val_every=7, batch_size=64), train, val)
    dec = DiffusionDecoder(1, 1, hidden=[32])
    opt = dec.configure_optimizers()
    while not fit.done:
        fit.step(dec, lambda loss: (opt.zero_grad(), loss.backward(), opt.step()))
    assert fit.steps == 42 and fit.rounds == 6
    dec.load_state_dict(fit.best_state)
    from gorl.refinement import validation_loss

    torch.manual_seed(123)
    # validation losses are Monte-Carlo estimates: the restored weights score near the best.
    assert float(validation_loss(dec, fit.val)) < fit.best_val * 1.5


@pytest.mark.parametrize("parameterization", ["epsilon_delta", "epsilon"])
def test_ddim_with_the_exact_noise_lands_on_a_point_mass_in_either_parameterization(parameterization):
    """For data at one point ``a0`` the exact noise is ``(x_k - sqrt(abar_k) a0) / sqrt(1 - abar_k)``;
    fed that (as a residual around the identity noise, or whole), DDIM must decode every latent to
    ``a0`` and the training loss must be zero."""
    dec = DiffusionDecoder(3, 2, hidden=[8], schedule="cosine", output_scale=1.0, parameterization=parameterization)
    a0 = torch.tensor([0.7, -1.2])
    rows = dec.net.time_bias(torch.arange(1, dec.steps + 1, dtype=torch.float32).unsqueeze(-1) / dec.steps)

    def oracle(cond, x, t_bias):
        k = 1 + int((rows - t_bias.reshape(-1, rows.shape[-1])[:1]).abs().sum(-1).argmin())  # which step this is
        if t_bias.dim() == 2 and t_bias.shape[0] == x.shape[0]:  # training: one k per row
            k = 1 + (rows.unsqueeze(0) - t_bias.unsqueeze(1)).abs().sum(-1).argmin(-1, keepdim=True)
        eps = (x - dec.sqrt_abar[k] * a0) / dec.sqrt_one_minus_abar[k]
        return eps - dec.id_gain[k - 1] * x  # the network's share: all of it under plain epsilon (gain 0)

    dec.net.forward = oracle
    obs, eps = torch.randn(6, 3), torch.randn(6, 2)
    torch.testing.assert_close(dec.decode(obs, eps), a0.expand(6, 2), atol=1e-4, rtol=0)
    assert float(dec.loss(obs, a0.expand(6, 2))) < 1e-8


def test_a_decoder_starts_as_the_identity_only_with_a_zeroed_last_layer():
    torch.manual_seed(0)
    obs, eps = torch.randn(5, 3), torch.randn(5, 2)
    for cls in (FlowDecoder, DiffusionDecoder):
        assert torch.equal(cls(3, 2, hidden=[8]).decode(obs, eps), eps)
        assert not torch.allclose(cls(3, 2, hidden=[8], zero_final_layer=False).decode(obs, eps), eps)
    assert not torch.allclose(DiffusionDecoder(3, 2, hidden=[8], parameterization="epsilon").decode(obs, eps), eps)


@pytest.mark.parametrize("cls", [FlowDecoder, DiffusionDecoder])
def test_the_compiled_decoder_loss_gives_the_eager_loss_and_gradients(cls):
    """``model.speed.compile`` on a decoder's training loss, through the ``aot_eager`` backend with
    the same random draws (eager RNG), so the two must agree; validation keeps the eager loss."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    dec = cls(3, 2, hidden=[16, 16], zero_final_layer=False)
    obs, action = torch.randn(32, 3), torch.randn(32, 2)
    dec.fit_obs_statistics(obs)

    def loss_and_grads():
        dec.zero_grad()
        torch.manual_seed(5)
        loss = dec.training_loss(obs, action)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in dec.parameters() if p.grad is not None])

    eager = loss_and_grads()
    dec.compile_loss(backend="aot_eager")
    compiled = loss_and_grads()
    assert dec._compiled_loss.enabled and dec._compiled_loss.compiled is not None
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-6)
