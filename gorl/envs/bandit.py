"""A toy multimodal task: a contextual bandit with two separated, equally good action regions.

Each step the env shows a context ``c ~ U(-1, 1)``; the reward for action ``a`` (1-D, in
``[-1, 1]``) is ``exp(-(a - m)^2 / (2 w^2))`` for the nearer of the two modes
``m = +-(0.5 + 0.25 c)``. The optimal policy is bimodal at every context: a Gaussian policy must
pick one mode (or sit in the zero-reward valley between them), while a generative decoder can
keep both. Episodes last ``horizon`` steps and end in truncation. It steps thousands of envs per
millisecond, so tests and notebooks can train on it in seconds.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


def mode_centers(context: torch.Tensor) -> torch.Tensor:
    """The two optimal actions for each context, shape ``[..., 2]``."""
    m = 0.5 + 0.25 * context
    return torch.stack([m, -m], dim=-1)


class ToyBanditEnv(EnvBase):
    """Batched bimodal contextual bandit (observation: ``[context]``, action: 1-D)."""

    def __init__(self, num_envs: int = 16, seed: int = 0, horizon: int = 10, width: float = 0.1) -> None:
        super().__init__(batch_size=torch.Size([num_envs]), device="cpu")
        n = num_envs
        self.horizon, self.width = horizon, width
        self.observation_spec = Composite(observation=Unbounded((n, 1), dtype=torch.float32), shape=(n,))
        self.action_spec = Bounded(-1.0, 1.0, (n, 1), dtype=torch.float32)
        self.reward_spec = Unbounded((n, 1), dtype=torch.float32)
        self.done_spec = Composite(
            done=Categorical(2, (n, 1), dtype=torch.bool),
            terminated=Categorical(2, (n, 1), dtype=torch.bool),
            truncated=Categorical(2, (n, 1), dtype=torch.bool),
            shape=(n,),
        )
        self._gen = torch.Generator().manual_seed(seed)
        self._ctx = torch.zeros(n, 1)
        self._t = torch.zeros(n, 1, dtype=torch.long)

    def reward(self, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        dist = (action - mode_centers(context.squeeze(-1))).abs().min(-1, keepdim=True).values
        return torch.exp(-0.5 * (dist / self.width) ** 2)

    def _new_context(self, mask: torch.Tensor) -> None:
        fresh = torch.rand(self._ctx.shape, generator=self._gen) * 2 - 1
        self._ctx = torch.where(mask, fresh, self._ctx)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        reward = self.reward(self._ctx, action)
        self._t += 1
        trunc = self._t >= self.horizon
        self._new_context(torch.ones_like(trunc))
        return TensorDict(
            {
                "observation": self._ctx.clone(),
                "reward": reward,
                "terminated": torch.zeros_like(trunc),
                "truncated": trunc,
                "done": trunc.clone(),
            },
            batch_size=self.batch_size,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones(*self.batch_size, 1, dtype=torch.bool) if mask is None else mask.reshape(-1, 1)
        self._new_context(mask)
        self._t = torch.where(mask, torch.zeros_like(self._t), self._t)
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict(
            {"observation": self._ctx.clone(), "terminated": done, "truncated": done.clone(), "done": done.clone()},
            batch_size=self.batch_size,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._gen.manual_seed(seed)
