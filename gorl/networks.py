"""Small building blocks shared by the encoder and the decoders."""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn

from gorl.errors import ConfigError

#: How a linear layer starts: ``lecun`` = the authors' ``mlp_init`` (LeCun-uniform weights, zero
#: biases); ``torch_default`` = PyTorch's ``nn.Linear`` default (this project's init before).
InitScheme = Literal["lecun", "torch_default"]
INIT_SCHEMES = ("lecun", "torch_default")


def check_init(init: str, owner: str) -> None:
    if init not in INIT_SCHEMES:
        raise ConfigError(f"{owner}.init must be one of {', '.join(INIT_SCHEMES)}, got {init!r}")


@torch.no_grad()
def init_linear_(layer: nn.Linear, init: InitScheme = "lecun") -> nn.Linear:
    """Re-initialise ``layer`` in place as ``init`` says and return it.

    ``lecun``: weights ``U(-sqrt(3 / fan_in), sqrt(3 / fan_in))`` (variance ``1 / fan_in``) and zero
    biases, as the authors' ``mlp_init`` (``jax.nn.initializers.lecun_uniform()`` and
    ``jnp.zeros``; ``src/flow_policy/networks.py`` at bennidict23/GoRL@8a0209c) does for every MLP
    they build: actor, critic and decoders. PyTorch's default draws weights with a bound
    ``sqrt(3)`` times smaller and random biases, so an untrained network is a flatter function.
    """
    check_init(init, "network")
    if init == "lecun":
        bound = math.sqrt(3.0 / layer.in_features)
        nn.init.uniform_(layer.weight, -bound, bound)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.SiLU, zero_last: bool = False,
        init: InitScheme = "lecun") -> nn.Sequential:
    """``Linear -> act`` per hidden width, then a linear head; every layer initialised as ``init``
    says (:func:`init_linear_`), the head zero-initialised when ``zero_last``."""
    check_init(init, "network")
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [init_linear_(nn.Linear(d, h), init), activation()]
        d = h
    head = init_linear_(nn.Linear(d, out_dim), init)
    if zero_last:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    layers.append(head)
    return nn.Sequential(*layers)


class RunningNorm(nn.Module):
    """Observation normaliser with running mean/variance kept in buffers.

    Buffers (not parameters) so the statistics travel in every checkpoint and are never touched by
    an optimiser. ``update`` merges a batch with Chan et al.'s parallel formula, so the result does
    not depend on how the data was split into batches.

    Whether any data has been seen is mirrored in a Python flag (``empty``), kept in step by
    :meth:`update`, :meth:`reset_` and state-dict loading: reading ``count == 0`` in ``forward``
    would be a device-to-host sync on every call on a GPU (every env step and every minibatch).
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.empty = True

    @torch.no_grad()
    def reset_(self) -> None:
        """Forget every statistic (as newly built)."""
        self.count.zero_()
        self.mean.zero_()
        self.var.fill_(1.0)
        self.empty = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.empty = bool(self.count == 0)  # one sync per load, not per forward

    @torch.no_grad()
    def update(self, x: torch.Tensor, batch_only_var: bool = False) -> None:
        """Merge a batch; in a multi-process run the batch is the union of every rank's batch, so
        all ranks keep identical statistics.

        ``batch_only_var`` reproduces the authors' ``legacy_batch_only`` accumulation
        (``RunningStats.update_legacy_batch_only`` in their ``src/flow_policy/math_utils.py``): the
        mean is the running mean, but the sum of squared deviations is the *batch's* alone,
        ``sum((x - old mean)(x - new mean))``, still divided by the cumulative count, so the std
        shrinks as a stage goes on. Kept for the recipe cells that use it, not as a sound estimator.
        """
        from gorl.distributed import all_reduce_sum_

        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        moments = all_reduce_sum_(torch.cat([torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device), x.sum(0), x.pow(2).sum(0)]))
        n = float(moments[0])
        if n == 0:
            return
        dim = x.shape[-1]
        b_mean = moments[1 : 1 + dim] / n
        b_var = (moments[1 + dim :] / n - b_mean.pow(2)).clamp_min(0.0)
        total = self.count + n
        delta = b_mean - self.mean
        new_mean = self.mean + delta * n / total
        if batch_only_var:
            # sum((x - m0)(x - m1)) = n * b_var + n * (b_mean - m0)(b_mean - m1)
            self.var.copy_((b_var * n + n * (b_mean - self.mean) * (b_mean - new_mean)).clamp_min(0.0) / total)
        else:
            self.var.copy_((self.var * self.count + b_var * n + delta.pow(2) * self.count * n / total) / total)
        self.mean.copy_(new_mean)
        self.count.fill_(total)
        self.empty = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.empty:
            return x
        std = (self.var + self.eps).sqrt().to(x.dtype)
        return ((x - self.mean.to(x.dtype)) / std).clamp(-self.clip, self.clip)


class SinusoidalEmbedding(nn.Module):
    """Time embedding ``[cos(2^k t), sin(2^k t)]`` for k < dim/2 (the authors' decoder input)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.register_buffer("freqs", 2.0 ** torch.arange(dim // 2, dtype=torch.float32), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        scaled = t * self.freqs.to(t.dtype)
        return torch.cat([torch.cos(scaled), torch.sin(scaled)], dim=-1)


ActionSemantics = Literal["squashed", "bounded"]


class ActionSquash(nn.Module):
    """The decoder's output into ``[-1, 1]``, then affinely onto the env's action box (a no-op for
    dm_control): ``tanh`` (``squashed``, default) or a clip (``bounded``: the authors' humanoid
    profile, whose decoders are fitted on env actions and whose decoded action is clipped, not
    squashed; ``BoundedLatentActionEnvironment`` in their ``src/gorl/humanoid/environment.py`` at
    bennidict23/GoRL@8a0209c)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, semantics: ActionSemantics = "squashed") -> None:
        super().__init__()
        if semantics not in ("squashed", "bounded"):
            raise ValueError(f"action semantics must be squashed or bounded, got {semantics!r}")
        self.register_buffer("low", low.float().clone())
        self.register_buffer("high", high.float().clone())
        self.bounded = semantics == "bounded"

    def forward(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        unit = pre_tanh.clamp(-1.0, 1.0) if self.bounded else torch.tanh(pre_tanh)
        return self.low + (unit + 1.0) * 0.5 * (self.high - self.low)


def stage_item(value, stage: int):
    """Per-stage settings: a single value, or a list whose last entry holds for all later stages."""
    if isinstance(value, (list, tuple)):
        return value[min(stage, len(value) - 1)]
    return value


def stage_value(value: float | Sequence[float], stage: int) -> float:
    """A numeric per-stage schedule (see :func:`stage_item`) as a float."""
    return float(stage_item(value, stage))


MIN_STD, MAX_STD = 1e-3, 10.0
_SOFTPLUS_INV_ONE = math.log(math.expm1(1.0 - MIN_STD))  # softplus(b) + 1e-3 == 1


class GaussianHead(nn.Module):
    """``obs -> (loc, scale)`` with ``scale = softplus(x) + 1e-3`` clipped to ``[1e-3, 10]``.

    How it starts:

    - ``prior=False`` (default): a newly initialised network, every layer as ``init`` says, the
      output layer included. This is the authors' *fresh* encoder (``PpoState.init`` builds the
      actor with ``mlp_init``; ``src/flow_policy/ppo.py`` at bennidict23/GoRL@8a0209c): its policy
      is a random function of the observation, with ``scale`` near ``softplus(0) + 1e-3 ~ 0.69``
      and a small random ``loc``: narrower than the prior.
    - ``prior=True``: the output layer at zero weights and a bias giving ``loc = 0, scale = 1``
      (:meth:`set_to_prior_`): the policy *is* the prior N(0, I) at every observation, their
      ``GAUSSIAN`` initialisation (``gaussian_policy_params`` in
      ``src/gorl/algorithms/dm_control_training.py``).
    """

    def __init__(self, obs_norm: RunningNorm, obs_dim: int, hidden: Sequence[int], latent_dim: int, init: InitScheme = "lecun",
                 prior: bool = False) -> None:
        super().__init__()
        self.obs_norm = obs_norm
        self.latent_dim = latent_dim
        self.net = mlp(obs_dim, hidden, 2 * latent_dim, init=init)
        if prior:
            self.set_to_prior_()

    @torch.no_grad()
    def set_to_prior_(self) -> None:
        """Make the policy exactly N(0, I): zero output weights, bias ``(0, softplus^-1(1 - 1e-3))``
        (the hidden layers are left as they are, as in their ``gaussian_policy_params``)."""
        head = self.net[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.bias[self.latent_dim :] = _SOFTPLUS_INV_ONE

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self.obs_norm(obs)).float()
        loc, raw = out.chunk(2, dim=-1)
        scale = (nn.functional.softplus(raw) + MIN_STD).clamp(MIN_STD, MAX_STD)
        return loc, scale


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last dim (plain tensor maths, fp32 in, fp32 out)."""
    return (-0.5 * ((x - loc) / scale).pow(2) - scale.log() - _HALF_LOG_2PI).sum(-1)
