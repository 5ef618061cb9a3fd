"""The PPO machinery the generative-policy baselines share: critic, GAE, minibatches, clipped surrogate.

FPO and DPPO differ from Gaussian PPO only in *where the likelihood ratio comes from* (a CFM-loss
difference; per-denoising-step Gaussians). Everything around it is plain PPO, written once here so
the two algorithm files show just their policy and their ratio. One update
(:meth:`ClippedPolicyGradient.train_on`), top to bottom:

1. merge the rollout's observations into the running statistics (shared by policy and critic);
2. scale rewards, compute GAE(gamma, lambda) once with TorchRL's ``GAE`` (as :mod:`gorl.encoders.ppo`);
3. :meth:`~ClippedPolicyGradient.prepare`: whatever the algorithm must fix once per rollout
   (FPO: its (eps, t) draws and the old CFM losses; DPPO: the old per-step log-probs), after the
   statistics update, so every update starts at ratio 1;
4. for ``epochs`` passes over shuffled minibatches: normalise the advantages per minibatch, take the
   algorithm's clipped policy loss (:meth:`~ClippedPolicyGradient.policy_loss`) plus
   ``value_coef * (V(s) - value_target)^2``, one optimiser step each (gradient norm clipped).

The clipped surrogate is :func:`gorl.encoders.ppo.clipped_surrogate` (plain tensors), not TorchRL's
``ClipPPOLoss``: that loss needs a policy distribution with ``log_prob``, which a flow policy does
not have and a denoising chain has only per step.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDictBase
from torchrl.modules import ValueOperator
from torchrl.objectives.value import GAE

from gorl.encoders.base import LatentEncoder, OptimizeFn
from gorl.encoders.ppo import Critic, LossAndStats, clipped_surrogate, normalize  # noqa: F401  (re-exported)
from gorl.networks import RunningNorm

class ClippedPolicyGradient(LatentEncoder):
    """Base of the whole-policy baselines: a PPO loop around an algorithm-specific policy loss.

    Subclasses build their policy network on ``self.obs_norm``, set ``policy_keys`` (the rollout
    entries their loss reads) and implement :meth:`act`, :meth:`policy_loss` and, if needed,
    :meth:`prepare`. Their "latent" is the pre-tanh action: run them with the identity decoder.

    Args (shared, set by the subclass constructors; see their docstrings for defaults):
        critic_hidden: value MLP widths (SiLU). lr: Adam learning rate.
        unroll: env steps per env per rollout. epochs, minibatch_size: passes and minibatch size.
        gamma, lmbda: discount and GAE lambda. clip_epsilon: PPO clip. max_grad_norm: gradient clip
        (``None``: off). value_coef: critic loss weight. reward_scale: multiplies rewards before GAE.
        normalize_advantage: per-minibatch advantage normalisation.
    """

    #: rollout entries (besides observation, advantage, value_target) the policy loss reads.
    policy_keys: tuple[str, ...] = ("latent",)

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
        return self.hparams.unroll

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)

    def train_on(self, rollout: TensorDictBase, optimize: OptimizeFn, stage: int) -> dict[str, float]:
        """One PPO-style update on a rollout of shape ``[*batch, T]`` (time last)."""
        hp = self.hparams
        data = rollout.reshape(-1, rollout.shape[-1])
        self.obs_norm.update(data["observation"])
        data.set(("next", "reward"), data.get(("next", "reward")) * hp.reward_scale)
        with torch.no_grad():
            self.gae(data)
        flat = data.select("observation", "advantage", "value_target", *self.policy_keys).reshape(-1)
        with torch.no_grad():
            flat = self.prepare(flat)
        n = flat.numel()
        mb = min(n, hp.minibatch_size)
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for _ in range(hp.epochs):
            perm = torch.randperm(n, device=flat.device)
            for start in range(0, n - mb + 1, mb):
                batch = flat[perm[start : start + mb]]
                adv = batch["advantage"].float().reshape(-1)
                if hp.normalize_advantage:
                    adv = normalize(adv)
                loss_objective, stats = self.policy_loss(batch, adv)
                value = self.critic_net(batch["observation"]).reshape(-1)
                loss_critic = hp.value_coef * (value - batch["value_target"].float().reshape(-1)).pow(2).mean()
                loss = loss_objective + loss_critic
                optimize(loss, hp.max_grad_norm)
                stats.update(loss=loss, loss_objective=loss_objective, loss_critic=loss_critic)
                for k, v in stats.items():
                    # Accumulate as tensors: one host sync per update, not one per metric per step.
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                steps += 1
        return {k: float(v) / max(steps, 1) for k, v in sums.items()}

    # --- stage boundaries -------------------------------------------------------------------
    def reset(self, best: dict[str, torch.Tensor] | None = None, stage: int = 1) -> None:
        """Back to a freshly initialised policy, critic and obs statistics.

        The baselines run one stage (the paper gives them one 180M-frame run), so this is only
        reached if a config gives them more; a whole-action policy has no prior to return to.
        """
        kwargs = {k: v for k, v in self.hparams.items() if k not in ("obs_dim", "act_dim")}
        self.load_state_dict(type(self)(self.obs_dim, self.act_dim, **kwargs).state_dict())
