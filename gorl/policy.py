"""The acting policy: ``observation -> latent ~ pi_theta(.|s) -> decoder -> tanh -> action``.

Why a hand-fused module instead of ``TensorDictSequential(ProbabilisticActor, decoder, squash)``:
the policy runs once per batched env step, and TensorDict module plumbing costs ~2 ms per call on
CPU (measured with tensordict 0.14: every ``TensorDictModule`` output write goes through
``TensorDict.from_any``, which calls ``importlib.util.find_spec("pandas")``), more than 32 cheetah
physics steps. Here the whole chain is plain tensor code with one ``set`` per output key. The
encoder's own losses still use TorchRL modules (see :mod:`gorl.encoders.ppo`); both compute the
same densities (tested).
"""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs.utils import ExplorationType, exploration_type

from gorl.networks import gaussian_log_prob  # noqa: F401  (re-exported: gorl.policy.gaussian_log_prob)

ActFn = Callable[[torch.Tensor, bool], dict]
DecodeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def deterministic_mode() -> bool:
    """True under TorchRL's deterministic exploration types (evaluation)."""
    return exploration_type() in (ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN)


class LatentPolicy(TensorDictModuleBase):
    """Writes the encoder's outputs (``latent`` and e.g. ``latent_log_prob``), ``pre_tanh`` and
    ``action`` into the tensordict.

    Args:
        act: ``(obs, deterministic) -> {"latent": ..., ...}``, usually ``encoder.act``.
        decode: ``(obs, latent) -> pre-tanh action``, the decoder currently acting.
        squash: ``pre-tanh -> env action`` (tanh onto the action box).
    """

    def __init__(self, act: ActFn, decode: DecodeFn, squash: nn.Module) -> None:
        super().__init__()
        self.in_keys = ["observation"]
        self.out_keys = ["latent", "pre_tanh", "action"]
        self.squash = squash
        self._act, self._decode = act, decode
        # Set by the system on a GPU (gorl.acceleration.GraphedChain): the same chain, replayed.
        self.graphed: Callable[[torch.Tensor, bool], dict] | None = None

    def chain(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """The whole acting chain in plain tensors: encoder outputs, ``pre_tanh`` and ``action``."""
        out = dict(self._act(obs, deterministic))
        out["pre_tanh"] = self._decode(obs, out["latent"])
        out["action"] = self.squash(out["pre_tanh"])
        return out

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        run = self.chain if self.graphed is None else self.graphed
        for key, value in run(obs, deterministic_mode()).items():
            tensordict.set(key, value)
        return tensordict
