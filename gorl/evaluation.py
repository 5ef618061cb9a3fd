"""Evaluation: one episode per eval env, deterministic (the latent mean through the decoder) or, with
``deterministic=False``, stochastic (sampled latents, the authors' humanoid evaluations)."""

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


def episode_returns(reward: torch.Tensor, done: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns of episodes ending in a rollout ``[N, T]``, in closed form over time.

    ``carry[i]`` is what env ``i``'s running episode had collected before this rollout. Returns
    ``(ended, carry')``: ``ended[i, t]`` is the whole return of the episode ending at step ``t``
    (meaningful where ``done[i, t]``), ``carry'`` the unfinished part after the last step. A cumulative
    sum of the rewards, minus its value at the previous episode end (found with a running max over
    the indices of ends), gives every episode's return without a loop over steps.
    """
    n, steps = reward.shape
    done = done.to(torch.bool)
    cum = carry[:, None] + torch.cumsum(reward, dim=1)  # [N, T]
    index = torch.arange(steps, device=reward.device).expand(n, steps)
    last_end = torch.where(done, index, torch.full_like(index, -1)).cummax(dim=1).values  # last end at or before t
    prev_end = torch.cat([torch.full_like(last_end[:, :1], -1), last_end[:, :-1]], dim=1)  # strictly before t
    base = torch.where(prev_end >= 0, cum.gather(1, prev_end.clamp_min(0)), torch.zeros_like(cum))
    ended = cum - base
    final_end = last_end[:, -1]
    carry = cum[:, -1] - torch.where(final_end >= 0, cum.gather(1, final_end.clamp_min(0)[:, None])[:, 0], torch.zeros_like(carry))
    return ended, carry


@torch.no_grad()
def evaluate(env: EnvBase, policy: TensorDictModuleBase, max_steps: int = 1000, deterministic: bool = True) -> torch.Tensor:
    """Returns of one episode per env copy, shape ``[num_env_copies]`` (on the env's device): the
    latent mean through the decoder, or with ``deterministic=False`` a sampled latent at every step.

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
        return fast(lambda obs: chain(obs.to(device), deterministic)["action"], max_steps)
    policy = on_env_device(policy, env)
    with set_exploration_type(ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM):
        td = env.rollout(max_steps, policy, break_when_any_done=False, break_when_all_done=True, auto_cast_to_device=True)
    td = td.reshape(-1, td.shape[-1])
    return first_episode_returns(td["next", "reward"], td["next", "done"])
