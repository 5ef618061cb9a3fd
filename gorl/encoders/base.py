"""The encoder interface: what the stage loop needs from *any* latent-policy optimiser.

GoRL's claim is algorithm-agnostic: the loop (:mod:`gorl.stage_cycle`) only ever asks an encoder to

- **act** in latent space (:meth:`LatentEncoder.act`): ``obs -> latent`` (+ whatever the algorithm
  needs stored with the transition, e.g. a log-prob); the system decodes and squashes it;
- **train** on what was collected (:meth:`LatentEncoder.train_on`), stepping its optimiser only
  through the ``optimize`` callback, so precision, gradient averaging under DDP and the NaN guard
  stay the system's;
- **snapshot / restore** its weights (the stage's best encoder), **reset** itself to the prior at a
  stage boundary, and hear about a **decoder change** (:meth:`LatentEncoder.on_decoder_change`).

PPO (:class:`gorl.encoders.EncoderModule`) and SAC (:class:`gorl.encoders.LatentSAC`) implement it;
so do the whole-policy baselines of :mod:`gorl.baselines`, whose "latent" is the pre-tanh action
(they run with the identity decoder).
"""

from __future__ import annotations

from typing import Callable

import lightning.pytorch as pl
import torch
from tensordict import TensorDictBase

# (loss, max_grad_norm or None) -> None: backward, gradient sync, clip and step, done by the system.
OptimizeFn = Callable[[torch.Tensor, "float | None"], None]
# (obs, latent) -> pre-tanh action through the decoder currently acting (differentiable).
DecodeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LatentEncoder(pl.LightningModule):
    """Base class of every optimiser the GoRL loop can drive.

    Subclasses set ``latent_dim`` and ``rollout_steps`` and implement :meth:`act`,
    :meth:`configure_optimizers`, :meth:`train_on` and :meth:`reset`.

    Attributes:
        latent_dim: size of the latent the decoder consumes.
        rollout_steps: env steps per env copy in one collected rollout.
        rollouts_per_update: rollouts collected with the same weights and concatenated along the
            batch dimension into one :meth:`train_on` call (1 unless the subclass says otherwise).
        needs_decoder: ``True`` if :meth:`train_on` differentiates through the decoder (it then
            calls ``self.decode``, bound by the system).
        graph_safe_act: ``True`` if :meth:`act` is pure tensor code whose Python path depends only
            on its arguments' shapes and the ``deterministic`` flag, so it may be replayed from a
            CUDA graph (:mod:`gorl.acceleration`).
        supports_bounded_latent: ``True`` if :meth:`act` honours :attr:`bounded_latent`.
        bounded_latent: set by the system under ``action_semantics: bounded``: :meth:`act` then
            also returns ``squashed_latent = tanh(latent)``, which the decoder consumes (a
            tanh-normal latent policy, Brax's ``tanh_normal``, as the authors' humanoid
            ``bounded_latent = true``). ``latent`` stays the Gaussian sample the policy's
            likelihood is computed on (the tanh's Jacobian cancels in PPO's ratio).
    """

    latent_dim: int
    rollout_steps: int
    rollouts_per_update: int = 1
    needs_decoder: bool = False
    graph_safe_act: bool = False
    supports_bounded_latent: bool = False
    bounded_latent: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._decode: DecodeFn | None = None
        self._squash: Callable[[torch.Tensor], torch.Tensor] | None = None

    # --- wiring, done once by the system -------------------------------------------------------
    def bind(self, decode: DecodeFn, squash: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Give the encoder the acting decoder and the action squash (for off-policy critics on
        actions); kept out of ``__init__`` because the decoder changes between stages."""
        # Plain attributes, not submodules: the squash and decoder belong to the system's state.
        object.__setattr__(self, "_decode", decode)
        object.__setattr__(self, "_squash", squash)

    def decode(self, obs: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        if self._decode is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a decoder; call bind() first")
        return self._decode(obs, latent)

    def squash(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        return torch.tanh(pre_tanh) if self._squash is None else self._squash(pre_tanh)

    # --- acting --------------------------------------------------------------------------------
    @property
    def latent_head(self) -> torch.nn.Module | None:
        """``obs -> (loc, scale)`` of the latent Gaussian, for :mod:`gorl.inference` (``None`` if the
        encoder's latent is not a Gaussian of that form)."""
        return None

    def act(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """Sample (or, deterministically, pick the mode of) a latent for each observation.

        Returns a dict with at least ``"latent"``; every entry is written into the rollout.
        """
        raise NotImplementedError

    # --- training --------------------------------------------------------------------------------
    def set_stage(self, stage: int, optimizer: torch.optim.Optimizer) -> None:
        """Apply per-stage schedules (learning rate, clip...). Default: nothing to schedule."""

    def train_on(self, rollout: TensorDictBase, optimize: OptimizeFn, stage: int) -> dict[str, float]:
        """Learn from a rollout of shape ``[*batch, T]`` (time last); return scalar metrics."""
        raise NotImplementedError

    def update_obs_statistics(self, obs: torch.Tensor) -> None:
        """Merge observations into running statistics, if the encoder keeps any."""

    # --- stage boundaries ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of every weight and statistic (the loop keeps the stage's best)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def reset(self, best: dict[str, torch.Tensor] | None = None, stage: int = 1) -> None:
        """Start stage ``stage`` (>= 1): back to the prior (or warm from ``best``, the finished stage's
        best snapshot, as the encoder's config says for that stage)."""
        raise NotImplementedError

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint_state(self) -> dict | None:
        """What a resumed run needs beyond ``state_dict`` (e.g. a replay buffer), in plain tensors
        and numbers so that checkpoints still load with ``weights_only=True``. Default: nothing."""
        return None

    def load_checkpoint_state(self, state: dict) -> None:
        """Take back what :meth:`checkpoint_state` returned."""

    def on_decoder_change(self) -> None:
        """Called after a refinement installed a new decoder: what a latent *means* has changed.
        Default: nothing (on-policy encoders collect fresh data anyway)."""
