"""Latent SAC: a Gaussian policy pi_theta(eps | s) over GoRL's latent, trained by Soft Actor-Critic.

GoRL only asks its encoder for a tractable Gaussian in latent space; the optimiser is free. Here it is
off-policy: twin soft Q critics, Polyak-averaged target critics, a learned temperature ``alpha``
and a TorchRL replay buffer. With the identity decoder and one stage this is Gaussian SAC in
pre-tanh action space with a weak pull toward N(0, I) (``conf/sac_gaussian_cheetah.yaml``): exactly
GoRL-SAC's stage 0, the baseline it is compared to.

What the critics see (``critic_input``):

- ``"action"`` (default): ``Q(s, a)`` on the env action ``a = squash(decode(s, eps))``. A decoder
  refinement changes what a latent *means* but not what an action does, so replayed
  ``(s, a, r, s')`` stay valid and the critics, their targets, ``alpha`` and the buffer carry over
  to the next stage. The price: the actor loss differentiates ``Q(s, squash(decode(s, mu + sigma n)))``
  through the frozen decoder, and every target needs a decoder pass (``needs_decoder = True``).
- ``"latent"``: ``Q(s, eps)``. No decoder in the update (cheaper), but ``Q(s, eps)`` is really
  ``Q(s, g(s, eps))`` for the decoder that acted: after a refit every stored latent and the critics
  are stale, so :meth:`LatentSAC.on_decoder_change` empties the buffer and (``reset: auto``) the
  critics start afresh.

One update, top to bottom (:meth:`LatentSAC.losses`), all losses and log-probs in fp32:

1. target (no grad): ``eps' ~ pi(.|s')``, ``y = r + gamma (1 - terminated)
   (min_i Q'_i(s', x(s', eps')) - alpha log pi(eps'|s'))`` with the target critics (truncation
   bootstraps, termination does not);
2. critic loss ``0.5 sum_i mean (Q_i(s, x) - y)^2`` on the replayed input ``x``;
3. actor loss ``mean(alpha log pi(eps|s) - min_i Q_i(s, x(s, eps))) + beta * prior_regulariser``
   with a reparameterised ``eps``; the critics enter through *detached* parameters, so this term
   moves the actor only;
4. temperature loss ``-mean(log_alpha (log pi(eps|s) + target_entropy))`` on a detached log-prob.

The system hands an encoder one optimiser and an ``optimize(loss, max_grad_norm)`` callback (it owns
backward, DDP gradient averaging and the NaN guard), so the three losses are summed into one scalar
and stepped once, with one Adam parameter group (and learning rate) each; the targets are then
Polyak-averaged. Unlike textbook SAC, the actor sees the critics of *before* this step (as in most
single-optimiser/JAX implementations); the difference is one step of critic lag.

The entropy is that of the latent Gaussian (no tanh Jacobian): through a generative decoder the
action density is intractable, and the latent is where GoRL's policy lives. TorchRL's ``SACLoss`` is
not used for the same reason: it samples the action from one distribution over the action key,
while here the action is ``squash(decode(s, eps))`` of a latent sample. Without the Jacobian nothing
in the entropy term penalises a saturated tanh: once the mean drifts where tanh is flat, Q's
gradient vanishes and the actor stays there. The prior regulariser is what pulls it back (Adam
makes any ``beta > 0`` effective once Q is flat; tested), so keep ``prior_reg`` on, stage 0 included.

Replay buffer: TorchRL ``TensorDictReplayBuffer`` over ``LazyTensorStorage``; it stores raw
observations, so normalisation (optional, ``normalize_obs``) is applied with the *current*
statistics whenever a batch is used and old and new data are always normalised alike. The buffer is
not a module: it is in no ``state_dict`` or best-encoder snapshot. Checkpoints carry it
(``checkpoint_buffer``, on by default) as plain tensors, oldest transition first, so a resumed run
samples from the same transitions and overwrites them in the same order (storage slots differ, so
sampled indices are not bit-identical). It costs about ``4 * (2 * obs_dim + x_dim + 2)`` bytes per stored
transition in every checkpoint (~34 MB per 200k cheetah-run transitions); with
``checkpoint_buffer: false`` a resumed run refills it and makes no updates until it holds
``learning_starts`` transitions again. Under DDP rank 0 writes the checkpoint, so every rank
resumes with rank 0's buffer.
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torch.func import functional_call
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from gorl.encoders.base import LatentEncoder, OptimizeFn
from gorl.errors import ConfigError
from gorl.networks import GaussianHead, RunningNorm, gaussian_log_prob, mlp, stage_value
from gorl.prior import PriorReg, prior_regulariser

CriticInput = Literal["action", "latent"]
ResetMode = Literal["auto", "actor", "fresh", "warm"]
StageFloat = float | list[float]


# --- the SAC maths, as plain functions (unit-tested on hand-computed numbers) ----------------------
def soft_target(
    reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, next_log_prob: torch.Tensor, alpha: torch.Tensor | float, gamma: float
) -> torch.Tensor:
    """``r + gamma (1 - terminated) (min_i Q'_i - alpha log pi')``; ``next_q`` is ``[2, B]``, the rest ``[B]``."""
    soft_value = next_q.float().min(0).values - alpha * next_log_prob.float()
    return reward.float() + gamma * (1.0 - terminated.float()) * soft_value


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum_i mean_b (Q_i - y)^2`` over the twin critics (``q`` is ``[2, B]``)."""
    return 0.5 * (q.float() - target.float()).pow(2).mean(-1).sum()


def actor_loss(q_pi: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """``mean_b(alpha log pi - min_i Q_i)`` (before the prior regulariser)."""
    return (alpha * log_prob.float() - q_pi.float().min(0).values).mean()


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """``-mean(log_alpha (log pi + H_target))``: alpha grows while the entropy is below its target."""
    return -(log_alpha * (log_prob.detach().float() + target_entropy)).mean()


@torch.no_grad()
def polyak_(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], tau: float) -> None:
    """``target <- (1 - tau) target + tau online``, in place."""
    torch._foreach_lerp_(list(target), list(online), tau)


class TwinQ(nn.Module):
    """Two independent Q MLPs on ``[normalised obs, x]``; returns ``[2, B]`` in fp32.

    The normalisation lives outside (in :class:`LatentSAC`), so online and target critics always
    see observations normalised with the same, current statistics.
    """

    def __init__(self, obs_dim: int, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        # SAC is ours, not in the authors' code: its networks keep the init they were tuned with.
        self.q1 = mlp(obs_dim + in_dim, hidden, 1, init="torch_default")
        self.q2 = mlp(obs_dim + in_dim, hidden, 1, init="torch_default")

    def forward(self, obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([obs, x.to(obs.dtype)], dim=-1)
        return torch.stack([self.q1(h), self.q2(h)]).squeeze(-1).float()


class LatentSAC(LatentEncoder):
    """Soft Actor-Critic on GoRL's latent, with the prior regulariser in the actor loss.

    Args:
        obs_dim, act_dim: given by the system from the env.
        latent_dim: latent size; ``None`` = action dim (required by the identity decoder).
        actor_hidden, critic_hidden: MLP widths (SiLU).
        critic_input: ``action`` or ``latent`` (see the module docstring).
        actor_lr, critic_lr, alpha_lr: Adam learning rates (one parameter group each).
        gamma: discount. tau: Polyak rate of the target critics (after every update).
        batch_size: transitions per gradient update.
        buffer_size: replay capacity (transitions, per rank).
        learning_starts: no updates until the buffer holds this many transitions; until then the
            actor acts as initialised, i.e. from the prior N(0, I) (a reset actor is the prior).
        utd_ratio: gradient updates per collected env frame (fractions accumulate across calls).
        unroll: env steps per env per :meth:`train_on` call (rollout frames = envs x unroll).
        init_alpha: initial temperature. target_entropy: ``None`` = ``-latent_dim``.
        reward_scale: rewards are multiplied by this in the critic target.
        max_grad_norm: gradient-norm clip over *all* encoder parameters jointly (the system clips
            per optimiser), hence off by default.
        prior_reg: ``kl``, ``l2`` or ``none`` (``none`` risks a saturated actor, module docstring).
        prior_coef: beta, per stage. The actor loss is on the scale of Q (about
            reward / (1 - gamma)), not of PPO's normalised advantages: the default is the authors'
            PPO betas times 1 / (1 - 0.99) = 100 (untuned).
        normalize_obs: keep running observation statistics (from every collected frame) and
            normalise actor and critic inputs with them. The actor has its own copy so that a
            restored best actor brings back the statistics it was trained with, while the critics
            keep theirs.
        checkpoint_buffer: save the replay buffer in checkpoints (module docstring).
        reset: at a stage boundary: ``actor`` (fresh actor at the prior; critics, targets, alpha
            and buffer kept), ``fresh`` (everything new, buffer emptied), ``warm`` (the stage's best
            actor; the rest kept) or ``auto`` (``actor`` with action critics, ``fresh`` with latent
            critics, whose values are stale after a refit).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        latent_dim: int | None = None,
        actor_hidden: Sequence[int] = (256, 256),
        critic_hidden: Sequence[int] = (256, 256),
        critic_input: CriticInput = "action",
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        learning_starts: int = 5000,
        utd_ratio: float = 1.0,
        unroll: int = 1,
        init_alpha: float = 0.1,
        target_entropy: float | None = None,
        reward_scale: float = 1.0,
        max_grad_norm: float | None = None,
        prior_reg: PriorReg = "kl",
        prior_coef: StageFloat = [0.05, 0.1],  # noqa: B006  (read-only, jsonargparse shows it)
        normalize_obs: bool = False,
        reset: ResetMode = "auto",
        checkpoint_buffer: bool = True,
    ) -> None:
        super().__init__()
        # Explicit dict: frame inspection picks the wrong frame when jsonargparse builds us.
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if critic_input not in ("action", "latent"):
            raise ConfigError(f"encoder critic_input must be 'action' or 'latent', got {critic_input!r}")
        if not 0.0 < tau <= 1.0 or utd_ratio <= 0 or batch_size < 1 or buffer_size < batch_size or unroll < 1:
            raise ConfigError("encoder: need 0 < tau <= 1, utd_ratio > 0, unroll >= 1 and buffer_size >= batch_size >= 1")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.latent_dim = act_dim if latent_dim is None else latent_dim
        self.needs_decoder = critic_input == "action"
        self.x_key = critic_input  # the rollout entry the critics are trained on
        self.target_entropy = -float(self.latent_dim) if target_entropy is None else float(target_entropy)
        # The actor starts (and is reset) exactly at the prior, with PyTorch's init, as it always has:
        # SAC is not in the authors' code, so their PPO encoder's init does not apply to it.
        self.actor = GaussianHead(RunningNorm(obs_dim), obs_dim, actor_hidden, self.latent_dim, init="torch_default", prior=True)
        self.critic_norm = RunningNorm(obs_dim)
        x_dim = act_dim if critic_input == "action" else self.latent_dim
        self.critic = TwinQ(obs_dim, x_dim, critic_hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(init_alpha)).log())
        self._buffer: TensorDictReplayBuffer | None = None  # built on first use, on the data's device
        self._pushed = 0  # transitions written since the buffer was built (locates the oldest)
        self._restored: dict | None = None  # a checkpoint's buffer, refilled on the first push
        self._update_credit = 0.0  # fractional updates carried between train_on calls

    # --- the interface the stage loop drives (gorl.encoders.base) -----------------------------
    @property
    def rollout_steps(self) -> int:
        return self.hparams.unroll

    @property
    def latent_head(self) -> GaussianHead:
        return self.actor

    def act(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """A latent ``~ N(loc, scale)`` (``loc`` when deterministic) and its log-prob."""
        loc, scale = self.actor(obs)
        latent = loc if deterministic else loc + scale * torch.randn_like(loc)
        return {"latent": latent, "latent_log_prob": gaussian_log_prob(latent, loc, scale)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = [
            {"params": list(self.actor.parameters()), "lr": hp.actor_lr, "name": "actor"},
            {"params": list(self.critic.parameters()), "lr": hp.critic_lr, "name": "critic"},
            {"params": [self.log_alpha], "lr": hp.alpha_lr, "name": "alpha"},
        ]
        return torch.optim.Adam(groups, fused=True)

    def update_obs_statistics(self, obs: torch.Tensor) -> None:
        if self.hparams.normalize_obs:
            self.actor.obs_norm.update(obs)
            self.critic_norm.update(obs)

    def train_on(self, rollout: TensorDictBase, optimize: OptimizeFn, stage: int) -> dict[str, float]:
        """Store the rollout's transitions, then take ``utd_ratio`` gradient updates per frame."""
        hp = self.hparams
        flat = rollout.reshape(-1)
        self.update_obs_statistics(flat["observation"])
        self.push(flat)
        metrics: dict[str, float] = {"buffer_size": float(len(self._buffer))}
        if len(self._buffer) < max(hp.learning_starts, hp.batch_size):
            return metrics
        self._update_credit += hp.utd_ratio * flat.numel()
        n_updates = int(self._update_credit)
        self._update_credit -= n_updates
        beta = stage_value(hp.prior_coef, stage)
        sums: dict[str, torch.Tensor] = {}
        for _ in range(n_updates):
            loss, parts = self.losses(self._buffer.sample(), beta)
            optimize(loss, hp.max_grad_norm)
            polyak_(self.critic_target.parameters(), self.critic.parameters(), hp.tau)
            for k, v in parts.items():
                # Accumulate as tensors: one host sync per train_on, not one per metric per step.
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        metrics.update({k: float(v) / max(n_updates, 1) for k, v in sums.items()})
        metrics["updates"] = float(n_updates)
        return metrics

    # --- replay --------------------------------------------------------------------------------
    def push(self, flat: TensorDictBase) -> None:
        """Add transitions ``[N]`` to the replay buffer; only what the losses read is stored."""
        nxt = flat.get("next")
        terminated = nxt.get("terminated", None)
        if terminated is None:  # envs without the split: treat every done as a termination
            terminated = nxt.get("done")
        data = TensorDict(
            {
                "observation": flat.get("observation"),
                self.x_key: flat.get(self.x_key),
                "next": {"observation": nxt.get("observation"), "reward": nxt.get("reward").reshape(-1), "terminated": terminated.reshape(-1)},
            },
            batch_size=flat.batch_size,
        ).detach()
        if self._buffer is None:
            device = flat.get("observation").device
            storage = LazyTensorStorage(self.hparams.buffer_size, device=device)
            self._buffer = TensorDictReplayBuffer(storage=storage, batch_size=self.hparams.batch_size)
            self._pushed = 0
            if self._restored is not None:  # deferred to here so it lands on the data's device
                rows = TensorDict(self._restored, batch_size=[]).auto_batch_size_(batch_dims=1)
                self._restored = None
                self._extend(rows.to(device))
        self._extend(data)

    def _extend(self, data: TensorDictBase) -> None:
        self._buffer.extend(data)
        self._pushed += data.numel()

    @property
    def buffer_size(self) -> int:
        """Transitions currently in the replay buffer (or waiting in a restored checkpoint)."""
        if self._buffer is None:
            return 0 if self._restored is None else int(self._restored["observation"].shape[0])
        return len(self._buffer)

    def clear_buffer(self) -> None:
        self._buffer = None  # drops the storage; the next push builds a new one
        self._restored = None

    def checkpoint_state(self) -> dict | None:
        """The fractional update credit and the replay buffer's transitions, oldest first, as a
        nested dict of tensors (``replay`` is ``None`` with ``checkpoint_buffer: false``)."""
        state: dict = {"update_credit": self._update_credit}
        if not self.hparams.checkpoint_buffer:
            return {**state, "replay": None}
        if self._buffer is None:
            return {**state, "replay": self._restored}
        n, cap = len(self._buffer), self.hparams.buffer_size
        # Storage rows in write order: once the ring wrapped, the oldest row is the next to overwrite.
        order = torch.arange(n) if n < cap else (torch.arange(cap) + self._pushed) % cap
        rows = self._buffer.storage[order.to(self._buffer.storage.device)]
        return {**state, "replay": rows.exclude("index").cpu().to_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.clear_buffer()
        self._restored = state.get("replay")
        self._update_credit = float(state.get("update_credit", 0.0))

    # --- the losses ----------------------------------------------------------------------------
    def critic_x(self, obs: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """What the critics take for a latent: the env action through the acting decoder, or the
        latent itself."""
        if self.x_key == "action":
            return self.squash(self.decode(obs, latent))
        return latent

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised ``eps ~ pi(.|s)``: (latent, log-prob, loc, scale)."""
        loc, scale = self.actor(obs)
        latent = loc + scale * torch.randn_like(loc)
        return latent, gaussian_log_prob(latent, loc, scale), loc, scale

    def losses(self, batch: TensorDictBase, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The summed SAC loss on a replayed batch (see the module docstring) and its parts."""
        hp = self.hparams
        obs, nxt = batch["observation"], batch["next"]
        next_obs = nxt["observation"]
        alpha = self.log_alpha.exp().detach().float()
        with torch.no_grad():
            next_latent, next_log_prob, _, _ = self.sample(next_obs)
            next_q = self.critic_target(self.critic_norm(next_obs), self.critic_x(next_obs, next_latent))
            y = soft_target(nxt["reward"].reshape(-1) * hp.reward_scale, nxt["terminated"].reshape(-1), next_q, next_log_prob, alpha, hp.gamma)
        q = self.critic(self.critic_norm(obs), batch[self.x_key])
        loss_critic = critic_loss(q, y)

        latent, log_prob, loc, scale = self.sample(obs)
        # The critics through detached copies of their parameters: the actor term's gradient reaches
        # the actor (through x and, for action critics, the frozen decoder) but never the critics.
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        q_pi = functional_call(self.critic, frozen, (self.critic_norm(obs), self.critic_x(obs, latent)))
        loss_actor = actor_loss(q_pi, log_prob, alpha)
        prior = prior_regulariser(loc, scale, hp.prior_reg) if hp.prior_reg != "none" and beta > 0 else loss_actor.new_zeros(())
        loss_alpha = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        loss = loss_critic + loss_actor + beta * prior + loss_alpha
        parts = {
            "loss": loss,
            "loss_critic": loss_critic,
            "loss_actor": loss_actor,
            "loss_alpha": loss_alpha,
            "prior": prior,
            "alpha": alpha,
            "entropy": -log_prob.detach().mean(),
            "q": q.detach().mean(),
        }
        return loss, parts

    # --- stage boundaries ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, torch.Tensor]:
        """The actor (with its observation statistics) only: it is what acts, is evaluated and
        collects the decoder's data. Restoring the stage's best actor must not roll the critics,
        targets and alpha back to that moment: they keep what they learned since (more data)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith("actor.")}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Load a snapshot (actor only) or a full state dict; no key may be foreign."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise KeyError(f"{type(self).__name__}.restore: unexpected keys {unexpected[:5]}")

    @property
    def reset_mode(self) -> str:
        mode = self.hparams.reset
        if mode == "auto":
            return "actor" if self.x_key == "action" else "fresh"
        return mode

    def reset(self, best: dict[str, torch.Tensor] | None = None, stage: int = 1) -> None:
        """Start a new stage as ``reset`` says (class docstring). The buffer survives unless
        ``fresh``; with latent critics :meth:`on_decoder_change` empties it anyway."""
        mode = self.reset_mode
        if mode == "warm":
            if best is not None:
                self.restore(best)
            return
        fresh = type(self)(self.obs_dim, self.act_dim, **{k: v for k, v in self.hparams.items() if k not in ("obs_dim", "act_dim")})
        if mode == "fresh":
            self.load_state_dict(fresh.state_dict())
            self.clear_buffer()
            self._update_credit = 0.0
            return
        # "actor": a new actor at the prior, normalising with everything seen so far (as the critics).
        self.actor.net.load_state_dict(fresh.actor.net.state_dict())
        self.actor.obs_norm.load_state_dict(self.critic_norm.state_dict())

    def on_decoder_change(self) -> None:
        """Replayed latents mean something else under the new decoder; replayed actions do not."""
        if self.x_key == "latent":
            self.clear_buffer()
