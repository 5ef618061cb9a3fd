"""One PPO update, shared by latent PPO and the whole-policy baselines; each supplies only its loss.

Latent PPO (:mod:`gorl.encoders.ppo`), FPO (:mod:`gorl.baselines.fpo`) and DPPO
(:mod:`gorl.baselines.dppo`) differ in *where the likelihood ratio comes from* (a latent Gaussian's
log-prob; a CFM-loss difference; per-denoising-step Gaussians). Everything around the ratio is plain
PPO, written once here. :func:`ppo_update`, top to bottom, on a rollout ``[rows, T]`` whose rewards
the caller has already scaled:

1. advantages: with ``gae="rollout"`` GAE(gamma, lambda) once for the whole rollout with TorchRL's
   ``GAE`` (truncation bootstraps, termination does not), then ``prepare`` (what the method fixes
   once per rollout before any step: FPO's draws and old CFM losses, DPPO's old per-step
   log-probs); with ``gae="minibatch"`` recomputed inside each minibatch with the current critic
   (minibatches of whole unroll segments, as Brax's PPO and the authors' ``src/flow_policy/ppo.py``
   at bennidict23/GoRL@8a0209c);
2. ``epochs`` passes over shuffled minibatches (:func:`minibatches`);
3. per minibatch: the advantages standardised (``normalize_advantage``), the method's loss
   (:data:`PolicyLoss`: its clipped policy objective, the value loss :func:`value_loss`, and whatever
   else it adds: latent PPO's entropy bonus and prior regulariser), one optimiser step through the
   system's ``optimize`` (backward, gradient averaging, NaN guard, norm clipping at
   ``max_grad_norm``: :func:`gorl.optimization.guarded_step`);
4. the loss and every diagnostic the loss returned, averaged over the update's steps.

The statistics of the observations and the reward scaling stay with each method (latent PPO has
options for both, :class:`gorl.encoders.EncoderModule`).
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterator, Literal, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives.value import GAE

from gorl.encoders.advantage import segment_gae
from gorl.encoders.base import OptimizeFn
from gorl.encoders.ppo_config import PPOConfig
from gorl.networks import InitScheme, RunningNorm, mlp
from gorl.step_graphs import StepGraphs

GAEMode = Literal["rollout", "minibatch"]

#: a loss and its diagnostics (fp32 scalars).
LossAndStats = tuple[torch.Tensor, dict[str, torch.Tensor]]
#: (minibatch, its advantages ``[n]``, standardised if asked) -> (loss to step on, diagnostics to log).
PolicyLoss = Callable[[TensorDictBase, torch.Tensor], LossAndStats]
#: (flat rollout with advantages) -> the same, with what the loss needs fixed before the first step.
Prepare = Callable[[TensorDictBase], TensorDictBase]

# Numerical guard only: exp(20) ~ 5e8 is far beyond any ratio the clip lets matter; without it a
# degenerate minibatch could overflow the ratio to inf and end the run with a non-finite loss.
MAX_LOG_RATIO = 20.0


class Critic(nn.Module):
    """State-value network on normalised observations."""

    def __init__(self, obs_norm: RunningNorm, obs_dim: int, hidden: Sequence[int], init: InitScheme = "lecun") -> None:
        super().__init__()
        self.obs_norm = obs_norm
        self.net = mlp(obs_dim, hidden, 1, init=init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.obs_norm(obs)).float()


def clipped_surrogate(log_ratio: torch.Tensor, advantage: torch.Tensor, clip: float) -> LossAndStats:
    """PPO's pessimistic objective ``-E[min(r A, clip(r, 1 - c, 1 + c) A)]`` with ``r = exp(log_ratio)``.

    ``log_ratio`` and ``advantage`` broadcast together (DPPO: ``[n, K]`` against ``[n, 1]``); all
    in fp32. Returns the loss and diagnostics (clip fraction, the k3 estimate of KL(old || new)).
    """
    log_ratio = log_ratio.float().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    advantage = advantage.float()
    ratio = log_ratio.exp()
    unclipped = ratio * advantage
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantage
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
            "kl_approx": ((ratio - 1.0) - log_ratio).mean(),
            "ratio": ratio.mean(),
        }
    return loss, stats


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit std (fp32); a single element is only centred."""
    x = x.float()
    centred = x - x.mean()
    return centred / (x.std() + eps) if x.numel() > 1 else centred


def advantages(batch: TensorDictBase, normalize_advantage: bool) -> torch.Tensor:
    """A minibatch's advantages ``[n]`` in fp32, standardised if asked."""
    advantage = batch["advantage"].float().reshape(-1)
    return normalize(advantage) if normalize_advantage else advantage


def value_loss(critic: Critic, batch: TensorDictBase, value_coef: float) -> torch.Tensor:
    """``value_coef * mean (V(s) - value_target)^2`` on a minibatch (fp32)."""
    return value_loss_of(critic, batch["observation"], batch["value_target"], value_coef)


def value_loss_of(critic: Critic, obs: torch.Tensor, value_target: torch.Tensor, value_coef: float | torch.Tensor) -> torch.Tensor:
    """:func:`value_loss` on plain tensors (the form a compiled loss takes)."""
    value = critic(obs).reshape(-1)
    return value_coef * (value - value_target.float().reshape(-1)).pow(2).mean()


def minibatches(data: TensorDictBase, config: PPOConfig, keys: Sequence[str], critic: Critic, gae: GAE,
                gae_mode: GAEMode = "rollout", segment_gae_in_tensors: bool = True,
                prepare: Prepare | None = None) -> Iterator[TensorDictBase]:
    """``epochs`` passes of shuffled, flat minibatches of ``keys`` plus ``advantage`` and ``value_target``.

    ``gae="rollout"``: GAE once (``gae``, a TorchRL module on ``critic``), ``prepare``, then
    minibatches of single frames. ``gae="minibatch"``: minibatches of ``minibatch_size // T`` whole
    unroll segments, GAE recomputed in each with the current critic (the value targets follow the
    critic as it learns within the update), by :func:`~gorl.encoders.advantage.segment_gae` in plain
    tensors (``segment_gae_in_tensors``: one critic call per minibatch, no host reads) or by TorchRL's
    ``GAE`` (the reference; it reads segment lengths on the host in every minibatch). Both give the
    same minibatches (same shuffle) and the same advantages; ``prepare`` is for ``gae="rollout"`` only.
    """
    keys = (*keys, "advantage", "value_target")
    if gae_mode == "rollout":
        flat = _flat_with_advantages(data, keys, gae)
        if prepare is not None:
            with torch.no_grad():
                flat = prepare(flat)
        n = flat.numel()
        for idx in minibatch_indices(n, min(n, config.minibatch_size), config.epochs, flat.device):
            yield flat[idx]
        return
    if prepare is not None:
        raise ValueError("prepare() needs the whole rollout's advantages: gae='rollout'")
    if segment_gae_in_tensors:
        yield from _segment_minibatches(data, config, keys, critic)
        return
    segments = data.select(*(k for k in keys if k not in ("advantage", "value_target")), "next")
    for idx in minibatch_indices(segments.shape[0], _segments_per_minibatch(segments, config), config.epochs, segments.device):
        batch = segments[idx]
        with torch.no_grad():
            gae(batch)
        yield batch.select(*keys).reshape(-1)


def minibatch_indices(rows: int, per_mb: int, epochs: int, device: torch.device) -> Iterator[torch.Tensor]:
    """``epochs`` shuffles of ``rows`` cut into minibatches of ``per_mb`` rows (the rest of each
    shuffle dropped): every path through an update draws the same minibatches from the same seed."""
    for _ in range(epochs):
        perm = torch.randperm(rows, device=device)
        for start in range(0, rows - per_mb + 1, per_mb):
            yield perm[start : start + per_mb]


def _segments_per_minibatch(data: TensorDictBase, config: PPOConfig) -> int:
    """Whole unroll segments per minibatch with ``gae="minibatch"`` (``data`` is ``[rows, T]``)."""
    rows, unroll = data.shape[:2]
    return max(1, min(rows, config.minibatch_size // unroll))


def _flat_with_advantages(data: TensorDictBase, keys: Sequence[str], gae: GAE) -> TensorDictBase:
    """``gae="rollout"``: GAE once over the whole rollout, then its frames flat."""
    with torch.no_grad():
        gae(data)
    return data.select(*keys).reshape(-1)


def _segment_minibatches(data: TensorDictBase, config: PPOConfig, keys: Sequence[str], critic: Critic) -> Iterator[TensorDictBase]:
    """``gae="minibatch"`` in plain tensors: the same shuffle and advantages as the TorchRL path."""
    segments = segment_tensors(data, keys)
    for idx in minibatch_indices(data.shape[0], _segments_per_minibatch(data, config), config.epochs, data.device):
        batch = segment_batch(segments, idx, critic, config.gamma, config.lmbda)
        yield TensorDict(batch, batch_size=[batch["observation"].shape[0]], device=data.device)


def segment_tensors(data: TensorDictBase, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """What :func:`segment_batch` reads from a rollout ``[rows, T]``, as plain tensors."""
    tensors = {k: data[k] for k in keys if k not in ("advantage", "value_target")}
    tensors.update(next_observation=data["next", "observation"], reward=data["next", "reward"],
                   done=data["next", "done"], terminated=data["next", "terminated"])
    return tensors


def segment_batch(segments: dict[str, torch.Tensor], idx: torch.Tensor, critic: Critic, gamma: float,
                  lmbda: float) -> dict[str, torch.Tensor]:
    """The flat minibatch of segments ``idx`` with its GAE from the current critic, in plain tensors
    and with no host read (the body of a captured PPO step too: :func:`graphed_ppo_update`)."""
    o = segments["observation"][idx]
    per_mb, unroll = o.shape[:2]
    with torch.no_grad():
        values = critic(torch.cat([o, segments["next_observation"][idx]], 0))
        value, next_value = values[:per_mb], values[per_mb:]
        advantage = segment_gae(segments["reward"][idx], value, next_value, segments["done"][idx],
                                segments["terminated"][idx], gamma, lmbda)
    n = per_mb * unroll
    batch = {"observation": o.reshape(n, -1)}
    skip = ("observation", "next_observation", "reward", "done", "terminated")
    batch.update({k: v[idx].reshape(n, *v.shape[2:]) for k, v in segments.items() if k not in skip})
    batch.update(advantage=advantage.reshape(n, 1), value_target=(advantage + value).reshape(n, 1))
    return batch


def ppo_update(batches: Iterator[TensorDictBase], loss: PolicyLoss, optimize: OptimizeFn, config: PPOConfig,
               stage: int) -> dict[str, float]:
    """Step on every minibatch of ``batches`` (from :func:`minibatches`); return the averaged stats.

    ``loss`` returns the total loss to step on and its diagnostics; ``"loss"`` (the total) is added.
    """
    max_norm = config.at(stage).max_grad_norm
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    for batch in batches:
        total, stats = loss(batch, advantages(batch, config.normalize_advantage))
        optimize(total, max_norm)
        for k, v in {"loss": total, **stats}.items():
            # Accumulate as tensors: one host sync per update, not one per metric per step.
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        steps += 1
    return {k: float(v) / max(steps, 1) for k, v in sums.items()}


def graphed_ppo_update(data: TensorDictBase, loss: PolicyLoss, graphs: StepGraphs, config: PPOConfig,
                       keys: Sequence[str], critic: Critic, gae: GAE, gae_mode: GAEMode, stage: int, key: Hashable) -> dict[str, float]:
    """:func:`ppo_update` over :func:`minibatches`' plain-tensor path, each minibatch step taken by
    ``graphs`` (:class:`gorl.step_graphs.StepGraphs`: on a GPU, one replayed CUDA graph per step).

    The same minibatches (same shuffles, drawn in the same order), advantages, losses and optimiser
    steps as the eager path (tested); what differs is that the gather of a minibatch, its GAE
    (``gae="minibatch"``) and the whole optimiser step are inside the step's body. ``key`` names what
    the caller's ``loss`` decides in Python (the stage's constants, normaliser states).
    """
    keys = (*keys, "advantage", "value_target")
    if gae_mode == "rollout":
        flat = _flat_with_advantages(data, keys, gae)
        tensors = {k: flat[k] for k in keys}
        rows = flat.numel()
        per_mb = min(rows, config.minibatch_size)

        def body(d: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> LossAndStats:
            batch = {k: v[inputs["idx"]] for k, v in d.items()}
            return loss(batch, advantages(batch, config.normalize_advantage))
    else:
        tensors = segment_tensors(data, keys)
        rows, per_mb = data.shape[0], _segments_per_minibatch(data, config)

        def body(d: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> LossAndStats:
            batch = segment_batch(d, inputs["idx"], critic, config.gamma, config.lmbda)
            return loss(batch, advantages(batch, config.normalize_advantage))

    max_norm = config.at(stage).max_grad_norm
    graphs.begin(("ppo", gae_mode, key), tensors)
    for idx in minibatch_indices(rows, per_mb, config.epochs, data.device):
        graphs.step(body, {"idx": idx}, max_norm)
    return graphs.end()
