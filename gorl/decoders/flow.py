"""Flow-matching decoder: a conditional velocity field carrying prior noise to actions.

Training (from the fixed prior, never the rollout latent): for each (obs, action a) pair draw k
pairs ``eps ~ N(0, I)``, ``t ~ U(0, 1)``, form ``x_t = t * eps + (1 - t) * a`` and regress the
velocity ``v(obs, x_t, t)`` onto ``eps - a`` (the time derivative of ``x_t``).

Decoding integrates ``dx/dt = v`` from ``x_1 = eps`` at t = 1 back to t = 0 with K Euler steps. The
velocity head is zero-initialised (unless ``zero_final_layer: false``), so an untrained decoder is
exactly the identity.
"""

from __future__ import annotations

import torch

from gorl.decoders.base import ConditionalMLP, DecoderModule
from gorl.networks import InitScheme, check_init


class FlowDecoder(DecoderModule):
    """Args: hidden (MLP widths, SiLU), steps (Euler steps K), draws ((eps, t) draws per action k),
    time_dim (sinusoidal embedding size), output_scale (velocity multiplier), lr (Adam), init (layer
    initialisation: ``lecun``, the authors' ``mlp_init``, or ``torch_default``), zero_final_layer
    (start the velocity head at zero, the authors' default; ``false`` in their humanoid recipes; see
    :class:`~gorl.decoders.base.ConditionalMLP`)."""

    graph_safe = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int] = [128, 128, 128, 128],  # noqa: B006  (the authors' current width)
        steps: int = 10,
        draws: int = 8,
        time_dim: int = 8,
        output_scale: float = 1.0,
        lr: float = 3e-4,
        init: InitScheme = "lecun",
        zero_final_layer: bool = True,
    ) -> None:
        super().__init__(obs_dim, act_dim, lr)
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.steps, self.draws = steps, draws
        check_init(init, "decoder")
        self.net = ConditionalMLP(obs_dim, act_dim, hidden, time_dim, output_scale, init=init, zero_last=zero_final_layer)

    def velocity(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(self.net.condition(self.obs_norm(obs)), x, self.net.time_bias(t))

    def loss(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        k = self.draws
        obs = self.obs_norm(obs).repeat_interleave(k, 0)
        a = action.repeat_interleave(k, 0)
        eps = torch.randn_like(a)
        t = torch.rand(a.shape[0], 1, device=a.device, dtype=a.dtype)
        x_t = t * eps + (1.0 - t) * a
        v = self.net(self.net.condition(obs), x_t, self.net.time_bias(t))
        return (v.float() - (eps - a).float()).pow(2).sum(-1).mean()

    def decode(self, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        cond = self.net.condition(self.obs_norm(obs))
        dt = 1.0 / self.steps
        times = 1.0 - dt * torch.arange(self.steps, device=eps.device, dtype=cond.dtype).unsqueeze(-1)
        t_bias = self.net.time_bias(times)  # [K, hidden]: one row per Euler step, shared by the batch
        x = eps
        for i in range(self.steps):
            x = x - dt * self.net(cond, x, t_bias[i]).to(x.dtype)
        return x
