"""Deterministic evaluation: the latent mean through the decoder, one episode per eval env."""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type


def first_episode_returns(reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Return of each env's first episode in a rollout ``[N, T, 1]`` (steps after its end ignored)."""
    done = done.reshape(*done.shape[:2]).to(torch.long)
    ended_before = torch.cumsum(done, dim=1) - done  # episodes finished strictly before step t
    mask = (ended_before == 0).to(reward.dtype)
    return (reward.reshape(mask.shape) * mask).sum(1)


@torch.no_grad()
def evaluate(env: EnvBase, policy: TensorDictModuleBase, max_steps: int = 1000) -> torch.Tensor:
    """Returns of one deterministic episode per env copy, shape ``[num_env_copies]`` (on the env's
    device).

    ``auto_cast_to_device``: the policy may live elsewhere than the env (a CUDA policy over CPU
    dm_control envs); TorchRL then moves each step's observation to the policy's device and its
    action back, one explicit crossing each way per batch step. Without it a CUDA policy would be
    handed CPU tensors.

    An env with a ``deterministic_returns(act, max_steps)`` method (the MJX backend) runs the
    episodes in its own loop instead, acting with the same chain; the returns are the same (tested).
    """
    from gorl.policy import LatentPolicy, on_env_device

    fast = getattr(env, "deterministic_returns", None)
    if fast is not None and isinstance(policy, LatentPolicy):
        # The env's own loop (gorl/envs/mjx.py says why), with the same chain the collector acts with.
        chain, device = policy.graphed or policy.chain, policy.device
        return fast(lambda obs: chain(obs.to(device), True)["action"], max_steps)
    policy = on_env_device(policy, env)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.rollout(max_steps, policy, break_when_any_done=False, break_when_all_done=True, auto_cast_to_device=True)
    td = td.reshape(-1, td.shape[-1])
    return first_episode_returns(td["next", "reward"], td["next", "done"])
