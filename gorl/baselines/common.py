"""What the generative-policy baselines share: the critic, the PPO update, and the loss around the ratio.

FPO and DPPO differ from Gaussian PPO only in *where the likelihood ratio comes from* (a CFM-loss
difference; per-denoising-step Gaussians). Everything around it is the project's one PPO update
(:func:`gorl.encoders.ppo_update.ppo_update`, hyperparameters
:class:`gorl.encoders.ppo_config.PPOConfig`), so the two algorithm files show just their policy and
their ratio. One update (:meth:`ClippedPolicyGradient.train_on`), top to bottom:

1. merge the rollout's observations into the running statistics (shared by policy and critic);
2. scale rewards, compute GAE(gamma, lambda) once with TorchRL's ``GAE`` (as :mod:`gorl.encoders.ppo`);
3. :meth:`~ClippedPolicyGradient.prepare`: whatever the algorithm must fix once per rollout
   (FPO: its (eps, t) draws and the old CFM losses; DPPO: the old per-step log-probs), after the
   statistics update, so every update starts at ratio 1;
4. for ``epochs`` passes over shuffled minibatches: the algorithm's clipped policy loss
   (:meth:`~ClippedPolicyGradient.policy_loss`, on per-minibatch standardised advantages) plus
   ``value_coef * (V(s) - value_target)^2``, one optimiser step each (gradient norm clipped).

The clipped surrogate is :func:`gorl.encoders.ppo_update.clipped_surrogate` (plain tensors), not
TorchRL's ``ClipPPOLoss``: that loss needs a policy distribution with ``log_prob``, which a flow
policy does not have and a denoising chain has only per step.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDictBase
from torchrl.modules import ValueOperator
from torchrl.objectives.value import GAE

from gorl.encoders.base import LatentEncoder, OptimizeFn
from gorl.encoders.ppo_config import PPOConfig
from gorl.encoders.ppo_update import (  # noqa: F401  (clipped_surrogate, normalize: re-exported)
    Critic,
    LossAndStats,
    clipped_surrogate,
    minibatches,
    normalize,
    ppo_update,
    value_loss,
)
from gorl.networks import RunningNorm


class ClippedPolicyGradient(LatentEncoder):
    """Base of the whole-policy baselines: the project's PPO update around an algorithm-specific policy loss.

    Subclasses build their policy network on ``self.obs_norm``, set ``policy_keys`` (the rollout
    entries their loss reads), save their constructor's arguments as hyperparameters and read the
    PPO ones into ``self.ppo`` (:meth:`PPOConfig.from_hparams <gorl.encoders.ppo_config.PPOConfig.from_hparams>`),
    and implement :meth:`act`, :meth:`policy_loss` and, if needed, :meth:`prepare`. Their "latent" is the
    pre-tanh action: run them with the identity decoder. No entropy bonus: neither policy has a
    tractable entropy (the paper's setting is 0 anyway).
    """

    #: rollout entries (besides observation, advantage, value_target) the policy loss reads.
    policy_keys: tuple[str, ...] = ("latent",)
    #: the PPO loop's hyperparameters, read by the subclass from its saved hyperparameters.
    ppo: PPOConfig

    def __init__(self, obs_dim: int, act_dim: int, critic_hidden: Sequence[int], gamma: float, lmbda: float) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.latent_dim = act_dim  # the "latent" is the pre-tanh action (identity decoder)
        self.obs_norm = RunningNorm(obs_dim)
        self.critic_net = Critic(self.obs_norm, obs_dim, critic_hidden)
        self.critic = ValueOperator(self.critic_net, in_keys=["observation"])
        self.gae = GAE(gamma=gamma, lmbda=lmbda, value_network=self.critic, average_gae=False)

    # --- what an algorithm provides ------------------------------------------------------------
    def prepare(self, flat: TensorDictBase) -> TensorDictBase:
        """Fix per-rollout quantities before the first optimiser step. Default: nothing."""
        return flat

    def policy_loss(self, batch: TensorDictBase, advantage: torch.Tensor) -> LossAndStats:
        """The clipped policy objective on a minibatch and its diagnostics (fp32 scalars)."""
        raise NotImplementedError

    # --- the interface the stage loop drives (gorl.encoders.base) -----------------------------
    @property
    def rollout_steps(self) -> int:
        return self.ppo.unroll

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.ppo.at(0).lr, fused=True)

    def train_on(self, rollout: TensorDictBase, optimize: OptimizeFn, stage: int) -> dict[str, float]:
        """One PPO update on a rollout of shape ``[*batch, T]`` (time last)."""
        data = rollout.reshape(-1, rollout.shape[-1])
        self.obs_norm.update(data["observation"])
        data.set(("next", "reward"), data.get(("next", "reward")) * self.ppo.reward_scale)
        batches = minibatches(data, self.ppo, ("observation", *self.policy_keys), self.critic_net, self.gae,
                              prepare=self.prepare)
        return ppo_update(batches, self.loss, optimize, self.ppo, stage)

    def loss(self, batch: TensorDictBase, advantage: torch.Tensor) -> LossAndStats:
        """The algorithm's policy loss plus the value loss, and their diagnostics."""
        loss_objective, stats = self.policy_loss(batch, advantage)
        loss_critic = value_loss(self.critic_net, batch, self.ppo.value_coef)
        stats.update(loss_objective=loss_objective, loss_critic=loss_critic)
        return loss_objective + loss_critic, stats

    # --- stage boundaries -------------------------------------------------------------------
    def reset(self, best: dict[str, torch.Tensor] | None = None, stage: int = 1) -> None:
        """Back to a freshly initialised policy, critic and obs statistics.

        The baselines run one stage (the paper gives them one 180M-frame run), so this is only
        reached if a config gives them more; a whole-action policy has no prior to return to.
        """
        kwargs = {k: v for k, v in self.hparams.items() if k not in ("obs_dim", "act_dim")}
        self.load_state_dict(type(self)(self.obs_dim, self.act_dim, **kwargs).state_dict())
