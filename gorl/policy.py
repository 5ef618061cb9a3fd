"""The acting policy: ``observation -> latent ~ pi_theta(.|s) -> decoder -> tanh -> action``.

Why a hand-fused module instead of ``TensorDictSequential(ProbabilisticActor, decoder, squash)``:
the policy runs once per batched env step, and TensorDict module plumbing costs ~2 ms per call on
CPU (measured with tensordict 0.14: every ``TensorDictModule`` output write goes through
``TensorDict.from_any``, which calls ``importlib.util.find_spec("pandas")``), more than 32 cheetah
physics steps. Here the whole chain is plain tensor code with one ``set`` per output key. The PPO
loss still uses TorchRL's ``ProbabilisticActor`` (see :mod:`gorl.encoder`); both compute the same
diagonal-Gaussian log-density (tested).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs.utils import ExplorationType, exploration_type

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last dim."""
    return (-0.5 * ((x - loc) / scale).pow(2) - scale.log() - _HALF_LOG_2PI).sum(-1)


class LatentPolicy(TensorDictModuleBase):
    """Writes ``latent``, ``latent_log_prob``, ``pre_tanh`` and ``action`` into the tensordict.

    Under TorchRL's ``ExplorationType.DETERMINISTIC`` (evaluation) the latent is the mean.
    """

    def __init__(self, head: nn.Module, decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], squash: nn.Module) -> None:
        super().__init__()
        self.in_keys = ["observation"]
        self.out_keys = ["latent", "latent_log_prob", "pre_tanh", "action"]
        self.head, self.squash = head, squash
        self._decode = decode

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        loc, scale = self.head(obs)
        if exploration_type() in (ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN):
            latent = loc
        else:
            latent = loc + scale * torch.randn_like(loc)
        pre_tanh = self._decode(obs, latent)
        tensordict.set("latent", latent)
        tensordict.set("latent_log_prob", gaussian_log_prob(latent, loc, scale))
        tensordict.set("pre_tanh", pre_tanh)
        tensordict.set("action", self.squash(pre_tanh))
        return tensordict
