"""The decoder interface: ``decode(obs, eps) -> pre-tanh action`` plus a generative training loss.

A :class:`DecoderModule` is a complete LightningModule: ``Trainer.fit(decoder, datamodule)`` on any
dataset of ``{"observation", "action"}`` TensorDicts trains it, and ``decoder.decode(obs, eps)`` with
``eps ~ N(0, I)`` then samples actions. GoRL's system uses the same two methods during a decoder
refinement phase. The decoder owns a *frozen* copy of the observation statistics it was fitted
with, so later encoder phases (whose statistics keep moving) cannot shift what it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from tensordict import TensorDictBase

from gorl.networks import RunningNorm


class DecoderModule(pl.LightningModule):
    """Base class. Subclasses implement :meth:`decode` and :meth:`loss`."""

    #: ``False`` for decoders with nothing to learn (identity).
    trainable: bool = True
    #: ``True`` if :meth:`decode` is pure tensor code whose Python path depends only on shapes, so the
    #: acting chain may be replayed from a CUDA graph (:mod:`gorl.acceleration`). Ours are.
    graph_safe: bool = False

    def __init__(self, obs_dim: int, act_dim: int, lr: float = 3e-4) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.lr = obs_dim, act_dim, lr
        self.obs_norm = RunningNorm(obs_dim)
        self._compiled_loss = None  # compile_loss

    # --- what every decoder provides --------------------------------------------------------
    def decode(self, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Map prior noise ``eps`` (latent) at state ``obs`` to a pre-tanh action."""
        raise NotImplementedError

    def loss(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Generative loss for pairs ``(obs, pre-tanh action)``; draws its own noise from the prior."""
        raise NotImplementedError

    def training_loss(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """:meth:`loss` as a refit steps on it: compiled after :meth:`compile_loss`."""
        return self.loss(obs, action) if self._compiled_loss is None else self._compiled_loss(obs, action)

    def compile_loss(self, backend: str | Callable = "inductor", mode: str | None = None) -> None:
        """``torch.compile`` the training loss (``model.speed.compile``;
        :class:`gorl.acceleration.CompiledFn`). Validation keeps the eager loss, with its fixed noise."""
        from gorl.acceleration import CompiledFn

        self._compiled_loss = CompiledFn(self.loss, f"the {type(self).__name__}'s training loss", backend=backend, mode=mode)

    def fit_obs_statistics(self, obs: torch.Tensor) -> None:
        """Freeze the observation statistics of the training data into the decoder."""
        self.obs_norm.reset_()
        self.obs_norm.update(obs)

    # --- standalone Lightning training --------------------------------------------------------
    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if self.obs_norm.empty and dm is not None and hasattr(dm, "train_observations"):
            self.fit_obs_statistics(dm.train_observations().to(self.device))

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch["observation"], batch["action"])
        self.log("decoder/train_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def validation_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch["observation"], batch["action"])
        self.log("decoder/val_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, fused=True)


class ConditionalMLP(torch.nn.Module):
    """``f(obs, x, t)``: an MLP on ``[obs, x, time embedding]`` with a zero-initialised head.

    Initialisation as the authors' decoders (``FlowMatchingDecoder.init`` / ``DiffusionDecoder.init``
    in ``src/gorl/algorithms/decoders.py`` at bennidict23/GoRL@8a0209c): every layer by ``init``
    (``lecun``: their ``mlp_init``, LeCun-uniform weights and zero biases; the first layer's fan-in
    is the whole ``[obs, x, time]`` input, as their single first layer's), then the last layer
    zeroed (their ``zero_final_layer = True``), so an untrained decoder is exactly the identity.
    ``zero_last=False`` leaves the last layer as ``init`` drew it (their humanoid recipes'
    ``zero_final_layer = false``): an untrained decoder is then the identity plus a small random
    field.

    Written for a K-step sampler that runs once per env step: the first layer is split by input
    block, so the observation's part (:meth:`condition`) is computed once per ``decode`` and the
    time part (:meth:`time_bias`) once per step for the whole batch, and the layers are applied
    with ``F.linear`` rather than nested ``Module`` calls (whose dispatch cost rivals the maths
    for a 32-row batch; the timing is in ``benchmarks/RESULTS.md``, "Timings moved out of code
    comments").
    """

    def __init__(self, obs_dim: int, x_dim: int, hidden: tuple[int, ...] | list[int], time_dim: int = 8, output_scale: float = 1.0,
                 init: str = "lecun", zero_last: bool = True) -> None:
        super().__init__()
        from gorl.networks import SinusoidalEmbedding, init_linear_, mlp

        if not hidden:
            raise ValueError("decoder needs at least one hidden layer")
        self.obs_dim, self.x_dim = obs_dim, x_dim
        self.embed = SinusoidalEmbedding(time_dim)
        self.inp = init_linear_(torch.nn.Linear(obs_dim + x_dim + time_dim, hidden[0]), init)
        self.body = mlp(hidden[0], list(hidden[1:]), x_dim, zero_last=zero_last, init=init)
        self.output_scale = output_scale

    def condition(self, obs: torch.Tensor) -> torch.Tensor:
        """The observation's contribution to the first layer (bias included)."""
        return F.linear(obs, self.inp.weight[:, : self.obs_dim], self.inp.bias)

    def time_bias(self, t: torch.Tensor) -> torch.Tensor:
        """The time embedding's contribution to the first layer; ``t`` is ``[..., 1]``."""
        return F.linear(self.embed(t), self.inp.weight[:, self.obs_dim + self.x_dim :])

    def forward(self, cond: torch.Tensor, x: torch.Tensor, t_bias: torch.Tensor) -> torch.Tensor:
        h = F.silu(cond + F.linear(x, self.inp.weight[:, self.obs_dim : self.obs_dim + self.x_dim]) + t_bias)
        layers = self.body
        for i in range(0, len(layers) - 1, 2):
            h = F.silu(F.linear(h, layers[i].weight, layers[i].bias))
        out = F.linear(h, layers[-1].weight, layers[-1].bias)
        return out * self.output_scale if self.output_scale != 1.0 else out
