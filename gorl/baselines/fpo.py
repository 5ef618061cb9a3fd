"""FPO: Flow Policy Optimization (McAllister et al., 2025, arXiv 2507.21053), a GoRL-paper baseline.

The policy is a conditional flow ``v_theta(s, x_t, t)`` sampled like GoRL's flow decoder: draw
``eps ~ N(0, I)`` at t = 1 and integrate ``dx/dt = v`` with ``flow_steps`` Euler steps to t = 0; the
result is the pre-tanh action ``a`` (the env gets ``tanh(a)``). Its likelihood is intractable, so
FPO replaces PPO's ratio by an ELBO-difference surrogate built from the conditional flow-matching
(CFM) loss of the sampled action,

    L_cfm(a | s) = 1/k sum_i || v_theta(s, x_ti, t_i) - (eps_i - a) ||^2,   x_ti = t_i eps_i + (1 - t_i) a,
    r(theta)     = exp(L_cfm_old(a | s) - L_cfm_theta(a | s)),

with ``k`` draws (eps_i, t_i) per action (default 8) and the *same* draws for old and new (drawn
once per rollout, ``L_cfm_old`` computed before the first optimiser step). A ratio above 1 means
the action became "more likely" (its CFM loss fell); PPO's clipped objective then raises the
likelihood of high-advantage actions and lowers that of low-advantage ones.

One update (:meth:`FPO.train_on`, from :class:`~gorl.baselines.common.ClippedPolicyGradient`):
GAE on the rollout -> :meth:`FPO.prepare` (draws + old CFM losses) -> epochs x minibatches of
``clipped_surrogate(L_old - L_new, A) + value loss``. No entropy term: a flow policy has no
tractable entropy (the paper's setting is entropy 0 anyway).

Choices the paper leaves open, made here: the squared error is summed over action dimensions (the
paper's ``||.||^2``, as :class:`~gorl.decoders.FlowDecoder`); the velocity head is zero-initialised,
so a fresh policy samples ``a = eps ~ N(0, I)`` (Gaussian PPO starts from a newly initialised
network instead, narrower than N(0, I), as the authors' does);
the deterministic (evaluation) action integrates the flow from ``eps = 0``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDictBase

from gorl.baselines.common import ClippedPolicyGradient, LossAndStats, clipped_surrogate
from gorl.decoders.base import ConditionalMLP
from gorl.encoders.ppo_config import PPOConfig


class FPO(ClippedPolicyGradient):
    """Flow Policy Optimization; defaults are the GoRL authors' baseline settings
    (``configs/methods/fpo.toml`` at bennidict23/GoRL@8a0209c).

    Args:
        obs_dim, act_dim: given by the system from the env.
        hidden: velocity-MLP widths (SiLU) on ``[obs, x_t, time embedding]``; 4x32 = the width of
            the authors' Gaussian PPO actor.
        flow_steps: Euler steps of the sampler. draws: (eps, t) draws per action for ``L_cfm``.
        time_dim: sinusoidal time-embedding size. output_scale: velocity multiplier (authors: 0.25).
        critic_hidden, lr, unroll, epochs, minibatch_size, gamma, lmbda, clip_epsilon,
        max_grad_norm, value_coef, reward_scale, normalize_advantage: the PPO loop
            (:class:`~gorl.baselines.common.ClippedPolicyGradient`).
    """

    policy_keys = ("latent",)

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden: Sequence[int] = (32, 32, 32, 32),
        flow_steps: int = 10,
        draws: int = 8,
        time_dim: int = 8,
        output_scale: float = 0.25,
        critic_hidden: Sequence[int] = (256, 256, 256, 256, 256),
        lr: float = 3e-4,
        unroll: int = 30,
        epochs: int = 16,
        minibatch_size: int = 1024,
        gamma: float = 0.995,
        lmbda: float = 0.95,
        clip_epsilon: float = 0.05,
        max_grad_norm: float | None = 0.5,
        value_coef: float = 0.25,
        reward_scale: float = 10.0,
        normalize_advantage: bool = True,
    ) -> None:
        super().__init__(obs_dim, act_dim, critic_hidden, gamma, lmbda)
        # Explicit dict: frame inspection picks the wrong frame when jsonargparse builds us.
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.ppo = PPOConfig.from_hparams(self.hparams)
        self.velocity_net = ConditionalMLP(obs_dim, act_dim, list(hidden), time_dim, output_scale)

    # --- the policy: Euler integration of the velocity field from t = 1 to t = 0 ----------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """A pre-tanh action per observation: the flow from ``eps ~ N(0, I)`` (``eps = 0`` when
        deterministic). Nothing else is stored: FPO's draws are made at training time."""
        net = self.velocity_net
        cond = net.condition(self.obs_norm(obs))
        steps = self.hparams.flow_steps
        dt = 1.0 / steps
        times = 1.0 - dt * torch.arange(steps, device=obs.device, dtype=cond.dtype).unsqueeze(-1)
        t_bias = net.time_bias(times)  # [K, hidden]: one row per Euler step, shared by the batch
        shape = (*obs.shape[:-1], self.act_dim)
        x = torch.zeros(shape, device=obs.device) if deterministic else torch.randn(shape, device=obs.device)
        for i in range(steps):
            x = x - dt * net(cond, x, t_bias[i]).float()
        return {"latent": x}

    # --- FPO's ratio: a difference of CFM losses under shared draws ----------------------------
    def cfm_loss(self, obs: torch.Tensor, action: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-action CFM loss ``[n]`` for actions ``[n, A]`` with draws ``eps [n, k, A]``, ``t [n, k, 1]``."""
        net = self.velocity_net
        a = action.float().unsqueeze(-2)  # [n, 1, A], broadcast over the k draws
        x_t = t * eps + (1.0 - t) * a
        cond = net.condition(self.obs_norm(obs)).unsqueeze(-2)  # [n, 1, hidden]
        v = net(cond, x_t, net.time_bias(t)).float()
        return (v - (eps - a)).pow(2).sum(-1).mean(-1)

    def prepare(self, flat: TensorDictBase) -> TensorDictBase:
        """Draw (eps, t) once per rollout and record the old CFM losses under them (called under
        ``no_grad`` before any optimiser step: "old" is the network the update starts from)."""
        n, k = flat.numel(), self.hparams.draws
        action = flat["latent"]
        eps = torch.randn(n, k, self.act_dim, device=action.device)
        t = torch.rand(n, k, 1, device=action.device)
        flat.set("cfm_eps", eps)
        flat.set("cfm_t", t)
        flat.set("cfm_loss_old", self.cfm_loss(flat["observation"], action, eps, t))
        return flat

    def policy_loss(self, batch: TensorDictBase, advantage: torch.Tensor) -> LossAndStats:
        new = self.cfm_loss(batch["observation"], batch["latent"], batch["cfm_eps"], batch["cfm_t"])
        loss, stats = clipped_surrogate(batch["cfm_loss_old"] - new, advantage, self.ppo.clip_epsilon)
        stats["cfm_loss"] = new.detach().mean()
        return loss, stats
