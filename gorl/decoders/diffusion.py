"""Diffusion decoder: DDPM epsilon-prediction, sampled by deterministic DDIM (eta = 0).

Forward process over T steps, ``t_k = k / T``: ``x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps``.
Two schedules:

- ``linear`` (default, the authors' current release, ``schedule = "linear_alpha_bar"`` in their
  ``src/gorl/algorithms/decoders.py``): ``abar(t) = alpha_min + (1 - alpha_min)(1 - t)``, their
  ``alpha_min = 1e-3`` by default, so ``abar_T = 1e-3``. At 10 steps its grid is coarse at low noise:
  the last DDIM step starts from noise 0.33 (in action units, ``sqrt((1 - abar_1) / abar_1)``) and
  lands on the denoiser's average there, so modes ~1 apart blur even with the exact denoiser
  (benchmarks/refit_modes.py --exact; benchmarks/RESULTS.md).
  Their network output is multiplied by ``output_scale = 0.25`` (our default too), which keeps the
  first DDIM steps, where ``c_k`` is largest, from amplifying the untrained network's error.
- ``cosine`` (their first release and ours before): Nichol & Dhariwal's ``abar_k = f(max_t k / T) /
  f(0)``, stopped at ``max_t = 0.9`` (``abar_T ~ 0.024``) instead of 1: with only ~10 steps, a first
  DDIM step that starts from ``abar ~ 0`` divides by ``sqrt(abar)`` and multiplies any network
  error by ~30, which in our tests collapsed a bimodal fit onto one mode at output scale 1. Its last
  step starts from noise 0.15: the CPU preset (conf/decoder/diffusion_cpu.yaml) uses it.

Training draws ``draws`` fresh ``eps ~ N(0, I)`` and steps k per (obs, action) pair (theirs: 8) and
regresses the noise prediction on eps.

Sampling is DDIM with eta = 0 from ``x_T = eps`` (the latent): for k = T..1,
``x_{k-1} = r_k x_k + c_k epshat`` with ``r_k = sqrt(abar_{k-1} / abar_k)`` and
``c_k = sqrt(1 - abar_{k-1}) - r_k sqrt(1 - abar_k)``.

Identity at initialisation: the network predicts a residual ``delta`` around the analytic
"identity" noise ``eps_id(x_k) = (1 - r_k) / c_k * x_k``, the prediction for which the DDIM step
leaves ``x`` unchanged. So ``epshat = eps_id + delta``, the loss ``|epshat - eps|^2`` is the plain
epsilon-prediction loss, and the step reads ``x_{k-1} = x_k + c_k delta``: a zero-initialised head
decodes every latent to itself exactly (the authors' code makes the same choice, "epsilon_delta").

``parameterization: epsilon`` is plain epsilon prediction instead (their humanoid recipes'
``diffusion_parameterization = "epsilon"``): ``epshat`` is the network's output and the step reads
``x_{k-1} = r_k x_k + c_k epshat``. The loss is the same; the network learns the whole noise rather
than the residual, so an untrained decoder is not the identity even with a zeroed head.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from gorl.decoders.base import ConditionalMLP, DecoderModule
from gorl.errors import ConfigError
from gorl.networks import InitScheme, check_init


def linear_alpha_bar(steps: int, alpha_min: float = 1e-3) -> torch.Tensor:
    """``abar_k = alpha_min + (1 - alpha_min)(1 - k / T)`` for k = 0..T, float64 (the authors')."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    return alpha_min + (1.0 - alpha_min) * (1.0 - t)


def cosine_alpha_bar(steps: int, max_t: float = 0.9, offset: float = 0.008) -> torch.Tensor:
    """``abar_k`` for k = 0..T (``abar_0 = 1``, decreasing), cosine schedule up to ``max_t``, float64."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps * max_t
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    return f / f[0]


class DiffusionDecoder(DecoderModule):
    """Args: hidden (MLP widths, SiLU), steps (T), schedule (``linear`` | ``cosine``), draws
    ((eps, k) draws per action), time_dim, output_scale (network output multiplier), lr (Adam), init
    (layer initialisation: ``lecun``, the authors' ``mlp_init``, or ``torch_default``; the output
    head starts at zero unless ``zero_final_layer: false``, see
    :class:`~gorl.decoders.base.ConditionalMLP`), alpha_min (``abar_T`` of the linear schedule: the
    authors' ``diffusion_alpha_min``, 1e-3), parameterization (``epsilon_delta``, a residual around
    the identity noise, default; or plain ``epsilon``: module docstring)."""

    graph_safe = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int] = [64, 64, 64, 64],  # noqa: B006
        steps: int = 10,
        schedule: Literal["linear", "cosine"] = "linear",
        draws: int = 8,
        time_dim: int = 8,
        output_scale: float = 0.25,
        lr: float = 3e-4,
        init: InitScheme = "lecun",
        alpha_min: float = 1e-3,
        parameterization: Literal["epsilon_delta", "epsilon"] = "epsilon_delta",
        zero_final_layer: bool = True,
    ) -> None:
        super().__init__(obs_dim, act_dim, lr)
        if schedule not in ("linear", "cosine"):
            raise ConfigError(f"decoder.schedule must be linear or cosine, got {schedule!r}")
        if draws < 1:
            raise ConfigError(f"decoder.draws must be >= 1, got {draws}")
        if parameterization not in ("epsilon_delta", "epsilon"):
            raise ConfigError(f"decoder.parameterization must be epsilon_delta or epsilon, got {parameterization!r}")
        if not 0.0 < alpha_min < 1.0:
            raise ConfigError(f"decoder.alpha_min must be in (0, 1), got {alpha_min}")
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.steps, self.draws = steps, draws
        abar = linear_alpha_bar(steps, alpha_min) if schedule == "linear" else cosine_alpha_bar(steps)
        r = (abar[:-1] / abar[1:]).sqrt()  # index k-1 holds r_k
        c = (1 - abar[:-1]).sqrt() - r * (1 - abar[1:]).sqrt()
        self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_abar", (1 - abar).sqrt().float(), persistent=False)
        self.register_buffer("c", c.float(), persistent=False)
        self.register_buffer("r", r.float(), persistent=False)
        # epsilon_delta: epshat = id_gain x + delta; plain epsilon: epshat = net output (gain 0).
        gain = ((1 - r) / c).float() if parameterization == "epsilon_delta" else torch.zeros_like(c, dtype=torch.float32)
        self.register_buffer("id_gain", gain, persistent=False)
        self.direct_epsilon = parameterization == "epsilon"
        check_init(init, "decoder")
        self.net = ConditionalMLP(obs_dim, act_dim, hidden, time_dim, output_scale, init=init, zero_last=zero_final_layer)

    def loss(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        cond = self.net.condition(self.obs_norm(obs)).repeat_interleave(self.draws, 0)
        action = action.repeat_interleave(self.draws, 0)
        k = torch.randint(1, self.steps + 1, (action.shape[0], 1), device=action.device)
        eps = torch.randn_like(action)
        x_k = self.sqrt_abar[k] * action + self.sqrt_one_minus_abar[k] * eps
        delta = self.net(cond, x_k, self.net.time_bias(k.to(cond.dtype) / self.steps))
        eps_hat = self.id_gain[k - 1] * x_k + delta.float()
        return (eps_hat - eps).pow(2).sum(-1).mean()

    def decode(self, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        cond = self.net.condition(self.obs_norm(obs))
        times = torch.arange(1, self.steps + 1, device=eps.device, dtype=cond.dtype).unsqueeze(-1) / self.steps
        t_bias = self.net.time_bias(times)  # [T, hidden], row k-1 for step k
        x = eps
        for k in range(self.steps, 0, -1):
            out = self.net(cond, x, t_bias[k - 1]).to(x.dtype)
            # epsilon_delta: x + c delta (= r x + c (id_gain x + delta)); epsilon: r x + c epshat
            x = (self.r[k - 1] * x if self.direct_epsilon else x) + self.c[k - 1] * out
        return x
