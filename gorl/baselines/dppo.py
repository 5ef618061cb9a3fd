"""DPPO: Diffusion Policy Policy Optimization (Ren et al., 2024, arXiv 2409.00588), from scratch.

A diffusion policy's action likelihood is intractable, but each *denoising step* is a Gaussian.
DPPO therefore treats the K-step denoising chain as part of the MDP: an env step is K policy steps

    x_K ~ N(0, I),   x_{k-1} ~ N(mu_theta(s, x_k, k), sigma^2 I)  for k = K..1,   a = x_0,

and PPO runs on the per-step log-probs ``log N(x_{k-1}; mu_theta, sigma^2)`` (exact Gaussians), with
the env step's advantage shared by all K denoising steps. The rollout must keep the whole chain:
:meth:`DPPO.act` returns ``{"latent": x_0, "chain": [N, K+1, A], "chain_log_prob": [N, K]}``, which
the collector stores with the transition (:class:`~gorl.policy.LatentPolicy` writes every entry).

The mean is the deterministic DDIM (eta = 0) step of an epsilon-prediction network on GoRL's cosine
schedule (:func:`~gorl.decoders.diffusion.cosine_alpha_bar`), parametrised exactly as
:class:`~gorl.decoders.DiffusionDecoder`: ``epshat = eps_id(x_k) + delta_theta``, so the mean reads
``mu = x_k + c_k delta_theta(s, x_k, k)``. With the zero-initialised head a fresh policy samples
``a = x_K + noise ~ N(0, (1 + K sigma^2) I)``, close to Gaussian PPO's N(0, I) start, instead of
the ~6x blown-up actions a raw epsilon-network at zero would give through ``1/sqrt(abar_K)``.
The noise is a fixed ``sigma`` at every step (the GoRL paper's setting, 0.05), not DDPM's posterior
variance; no denoising-step discount, all K steps fine-tuned.

Deterministic evaluation: start from ``x_K = 0`` and follow the means without noise (a fresh policy
then acts 0, the mode of its action distribution, as Gaussian PPO's evaluation does).

One update (:meth:`DPPO.train_on`, from :class:`~gorl.baselines.common.ClippedPolicyGradient`):
GAE on the rollout -> :meth:`DPPO.prepare` (old per-step log-probs of the stored chains, recomputed
once before the first step, as DPPO's reference does) -> epochs x minibatches of
``clipped_surrogate(log p_new - log p_old, A)`` over all (transition, denoising step) pairs + value
loss. No entropy term (paper setting: 0). Why recompute rather than use the acting-time
``chain_log_prob``: the observation statistics are updated with the rollout before training, and
with sigma = 0.05 a small shift of the means moves a step's log-prob a lot; recomputing centres the
trust region on the policy the update starts from (the act-time values stay in the rollout).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tensordict import TensorDictBase

from gorl.baselines.common import ClippedPolicyGradient, LossAndStats, clipped_surrogate
from gorl.decoders.base import ConditionalMLP
from gorl.decoders.diffusion import cosine_alpha_bar
from gorl.encoders.ppo_config import PPOConfig

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def step_log_prob(x_next: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """``log N(x_next; mean, sigma^2 I)`` summed over the last dim, in fp32."""
    z = (x_next.float() - mean.float()) / sigma
    return (-0.5 * z.pow(2) - math.log(sigma) - _HALF_LOG_2PI).sum(-1)


class DPPO(ClippedPolicyGradient):
    """DPPO from scratch; defaults are the GoRL authors' baseline settings
    (``configs/methods/dppo.toml`` at bennidict23/GoRL@8a0209c).

    Args:
        obs_dim, act_dim: given by the system from the env.
        hidden: noise-MLP widths (SiLU) on ``[obs, x_k, time embedding]``; 4x32 = the width of the
            authors' Gaussian PPO actor.
        steps: denoising steps K. sigma: fixed std of every denoising step.
        time_dim: sinusoidal time-embedding size. output_scale: network output multiplier
            (authors: 0.25).
        critic_hidden, lr, unroll, epochs, minibatch_size, gamma, lmbda, clip_epsilon,
        max_grad_norm, value_coef, reward_scale, normalize_advantage: the PPO loop
            (:class:`~gorl.baselines.common.ClippedPolicyGradient`).
    """

    policy_keys = ("chain",)

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden: Sequence[int] = (32, 32, 32, 32),
        steps: int = 10,
        sigma: float = 0.05,
        time_dim: int = 8,
        output_scale: float = 0.25,
        critic_hidden: Sequence[int] = (256, 256, 256, 256, 256),
        lr: float = 3e-4,
        unroll: int = 30,
        epochs: int = 16,
        minibatch_size: int = 1024,
        gamma: float = 0.995,
        lmbda: float = 0.95,
        clip_epsilon: float = 0.2,
        max_grad_norm: float | None = 0.5,
        value_coef: float = 0.25,
        reward_scale: float = 10.0,
        normalize_advantage: bool = True,
    ) -> None:
        super().__init__(obs_dim, act_dim, critic_hidden, gamma, lmbda)
        # Explicit dict: frame inspection picks the wrong frame when jsonargparse builds us.
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.ppo = PPOConfig.from_hparams(self.hparams)
        if sigma <= 0:
            raise ValueError(f"DPPO needs sigma > 0 (exact Gaussian log-probs), got {sigma}")
        self.noise_net = ConditionalMLP(obs_dim, act_dim, list(hidden), time_dim, output_scale)
        abar = cosine_alpha_bar(steps)
        r = (abar[:-1] / abar[1:]).sqrt()
        c = (1 - abar[:-1]).sqrt() - r * (1 - abar[1:]).sqrt()  # DDIM gain on epshat, index k-1 for step k
        # Chain order: position j = 0..K-1 denoises x_{K-j} -> x_{K-j-1}; time input (K - j) / K.
        self.register_buffer("c_chain", c.flip(0).float(), persistent=False)
        t_chain = torch.arange(steps, 0, -1, dtype=torch.float32).unsqueeze(-1) / steps
        self.register_buffer("t_chain", t_chain, persistent=False)

    # --- the policy: the denoising chain, one Gaussian per step --------------------------------
    def means(self, cond: torch.Tensor, x: torch.Tensor, j: torch.Tensor | int) -> torch.Tensor:
        """DDIM mean ``mu = x_k + c_k delta(s, x_k, k)`` at chain position(s) ``j`` (fp32)."""
        t_bias = self.noise_net.time_bias(self.t_chain[j])
        return x.float() + self.c_chain[j].unsqueeze(-1) * self.noise_net(cond, x, t_bias).float()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """Run the chain; return the action and what training needs to recompute its log-probs."""
        sigma, steps = self.hparams.sigma, self.hparams.steps
        cond = self.noise_net.condition(self.obs_norm(obs))
        shape = (*obs.shape[:-1], self.act_dim)
        x = torch.zeros(shape, device=obs.device) if deterministic else torch.randn(shape, device=obs.device)
        chain, log_probs = [x], []
        for j in range(steps):
            mean = self.means(cond, x, j)
            x = mean if deterministic else mean + sigma * torch.randn_like(mean)
            chain.append(x)
            log_probs.append(step_log_prob(x, mean, sigma))
        return {"latent": x, "chain": torch.stack(chain, -2), "chain_log_prob": torch.stack(log_probs, -1)}

    def chain_log_prob(self, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Log-probs ``[n, K]`` of every stored step ``chain[:, j] -> chain[:, j+1]`` under the current
        network: all K steps in one batched forward."""
        cond = self.noise_net.condition(self.obs_norm(obs)).unsqueeze(-2)  # [n, 1, hidden]
        idx = torch.arange(self.hparams.steps, device=chain.device)
        mean = self.means(cond, chain[..., :-1, :], idx)
        return step_log_prob(chain[..., 1:, :], mean, self.hparams.sigma)

    # --- DPPO's ratio: per denoising step, advantage shared across the chain ---------------------
    def prepare(self, flat: TensorDictBase) -> TensorDictBase:
        """Old per-step log-probs ``[n, K]`` of the stored chains, under ``no_grad`` before any step."""
        flat.set("chain_log_prob_old", self.chain_log_prob(flat["observation"], flat["chain"]))
        return flat

    def policy_loss(self, batch: TensorDictBase, advantage: torch.Tensor) -> LossAndStats:
        new = self.chain_log_prob(batch["observation"], batch["chain"])
        return clipped_surrogate(new - batch["chain_log_prob_old"], advantage.unsqueeze(-1), self.ppo.clip_epsilon)
