"""User envs that misbehave on purpose, for the reliability tests."""

import os

import torch

from tests.test_envs import PointEnv


class NaNRewardEnv(PointEnv):
    """Returns a NaN reward after ``after`` steps (a physics blow-up, say)."""

    def __init__(self, after: int = 60):
        super().__init__(horizon=5)
        self.after, self.n = after, 0

    def _step(self, td):
        out = super()._step(td)
        self.n += 1
        if self.n > self.after:
            out["reward"] = torch.full_like(out["reward"], float("nan"))
        return out


class NaNObsEnv(NaNRewardEnv):
    """Observations turn NaN (so do the policy's actions next step; like a blown-up simulator,
    the env keeps stepping rather than raising)."""

    def _step(self, td):
        td = td.clone().set("action", td["action"].nan_to_num(0.0))
        out = PointEnv._step(self, td)
        self.n += 1
        if self.n > self.after:
            out["pos"] = torch.full_like(out["pos"], float("nan"))
        return out


class DyingEnv(PointEnv):
    """Its worker process exits abruptly after ``after`` steps."""

    def __init__(self, after: int = 20):
        super().__init__(horizon=5)
        self.after, self.n = after, 0

    def _step(self, td):
        self.n += 1
        if self.n > self.after:
            os._exit(3)
        return super()._step(td)
