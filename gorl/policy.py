"""The acting policy: ``observation -> latent ~ pi_theta(.|s) -> decoder -> tanh -> action``.

Why a hand-fused module instead of ``TensorDictSequential(ProbabilisticActor, decoder, squash)``:
the policy runs once per batched env step, and TensorDict module plumbing costs more per call on
CPU than many physics steps (with tensordict 0.14 every ``TensorDictModule`` output write goes
through ``TensorDict.from_any``, which calls ``importlib.util.find_spec("pandas")``; the timing is
in ``benchmarks/RESULTS.md``, "Timings moved out of code comments"). Here the whole chain is plain tensor code with one ``set`` per output key. The
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

    @property
    def device(self) -> torch.device:
        """Where the chain computes: the device of the system's networks (the squash moves with them)."""
        return self.squash.low.device

    def chain(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """The whole acting chain in plain tensors: encoder outputs, ``pre_tanh`` (the decoder's
        output) and ``action``. A bounded latent policy's ``squashed_latent`` is what is decoded."""
        out = dict(self._act(obs, deterministic))
        out["pre_tanh"] = self._decode(obs, out["squashed_latent"] if "squashed_latent" in out else out["latent"])
        out["action"] = self.squash(out["pre_tanh"])
        return out

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        run = self.chain if self.graphed is None else self.graphed
        for key, value in run(obs, deterministic_mode()).items():
            tensordict.set(key, value)
        return tensordict


class OnDevice(TensorDictModuleBase):
    """A :class:`LatentPolicy` acting on an env that lives elsewhere (CPU envs, CUDA networks): the
    observation crosses to the policy's device and the outputs cross back, once each per step."""

    def __init__(self, policy: LatentPolicy, env_device: torch.device) -> None:
        super().__init__()
        self.policy, self.env_device = policy, env_device
        self.in_keys, self.out_keys = policy.in_keys, policy.out_keys

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation").to(self.policy.device, non_blocking=True)
        chain = self.policy.chain if self.policy.graphed is None else self.policy.graphed
        for key, value in chain(obs, deterministic_mode()).items():
            tensordict.set(key, value.to(self.env_device))
        return tensordict


def on_env_device(policy: TensorDictModuleBase, env) -> TensorDictModuleBase:  # noqa: ANN001
    """``policy`` ready for ``env.rollout``: TorchRL's ``auto_cast_to_device`` finds a policy's device
    from its parameters, and a :class:`LatentPolicy` holds none of its own (the networks belong to
    the system), so a CUDA policy over CPU envs would be handed CPU observations (seen on an H200,
    2026-12-04: every CUDA fit failed at its first evaluation). Other policies are returned as they are."""
    if isinstance(policy, LatentPolicy) and env.device is not None and policy.device != env.device:
        return OnDevice(policy, env.device)
    return policy
