"""The PPO loop's hyperparameters: one typed set for every PPO-trained policy of the project.

Latent PPO (:class:`gorl.encoders.EncoderModule`) and the whole-policy baselines
(:class:`gorl.baselines.FPO`, :class:`gorl.baselines.DPPO`) run the same PPO update
(:func:`gorl.encoders.ppo_update.ppo_update`) around different losses, so the knobs of that update
are one dataclass, validated once, read the same way by all three.

The keys users type stay flat (``model.encoder.init_args.lr``, not ``...init_args.ppo.lr``): each
method's constructor keeps them as keyword arguments, because their *defaults* are per method (the
authors' latent PPO uses lr 1e-3 and clip [0.15, 0.3]; their FPO and DPPO baselines lr 3e-4 and
clip 0.05 / 0.2), and jsonargparse shows a constructor's defaults in ``--print_config``. The
constructor's saved hyperparameters are the single source; :meth:`PPOConfig.from_hparams` reads the
set out of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from gorl.errors import ConfigError
from gorl.networks import stage_value

#: a number, or one per stage (the last entry holds for later stages; :func:`gorl.networks.stage_item`).
StageFloat = float | list[float]


@dataclass(frozen=True)
class StagePPO:
    """The per-stage entries of a :class:`PPOConfig`, resolved for one stage."""

    lr: float
    clip_epsilon: float
    max_grad_norm: float | None
    entropy_coef: float


@dataclass(frozen=True)
class PPOConfig:
    """Attributes:
        lr: Adam learning rate, per stage.
        unroll: env steps per env copy in one rollout (a rollout is ``envs x unroll`` frames).
        epochs: passes over a rollout in one update.
        minibatch_size: frames per shuffled minibatch (a rollout smaller than one minibatch is one
            minibatch; with per-minibatch GAE, ``minibatch_size // unroll`` whole segments).
        gamma, lmbda: discount and GAE lambda.
        clip_epsilon: the PPO ratio clip, per stage.
        max_grad_norm: gradient-norm clip per optimiser step, per stage (``None`` or 0: off).
        value_coef: weight of ``(V(s) - value_target)^2`` in the loss.
        reward_scale: rewards are multiplied by this before GAE.
        normalize_advantage: standardise the advantages of each minibatch (zero mean, unit std).
        entropy_coef: weight of the policy's entropy bonus, per stage (0 for policies without a
            tractable entropy: FPO, DPPO).
    """

    lr: StageFloat
    unroll: int
    epochs: int
    minibatch_size: int
    gamma: float
    lmbda: float
    clip_epsilon: StageFloat
    max_grad_norm: StageFloat | None
    value_coef: float
    reward_scale: float
    normalize_advantage: bool = True
    entropy_coef: StageFloat = 0.0

    def __post_init__(self) -> None:
        for name in ("unroll", "epochs", "minibatch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"encoder.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"encoder.gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ConfigError(f"encoder.lmbda must be in [0, 1], got {self.lmbda}")
        for name in ("lr", "clip_epsilon"):
            if any(v <= 0 for v in _entries(getattr(self, name))):
                raise ConfigError(f"encoder.{name} must be > 0 (per stage), got {getattr(self, name)}")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> PPOConfig:
        """The set out of a constructor's saved hyperparameters (keys it lacks keep their defaults)."""
        return cls(**{f.name: hparams[f.name] for f in fields(cls) if f.name in hparams})

    def at(self, stage: int) -> StagePPO:
        """The per-stage entries for ``stage``."""
        max_norm = None if self.max_grad_norm is None else stage_value(self.max_grad_norm, stage)
        return StagePPO(lr=stage_value(self.lr, stage), clip_epsilon=stage_value(self.clip_epsilon, stage),
                        max_grad_norm=max_norm, entropy_coef=stage_value(self.entropy_coef, stage))


def _entries(value: float | Sequence[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
