"""GAE over short unroll segments in closed form: one batched product, no loop over time.

PPO as the authors run it (``gae="minibatch"``, Brax's PPO and their ``src/flow_policy/ppo.py`` at
bennidict23/GoRL@8a0209c) recomputes advantages inside every minibatch with the current critic, on
minibatches of whole 30-step segments: 512 times per update. TorchRL's ``GAE`` module gives the same
numbers, but splits the segments at episode ends into padded sequences whose sizes it reads on the
host, so each call waits for the GPU; done 512 times an update, that dominates a GPU update's time.

Here, for a segment of ``T`` steps, ``A_t = sum_{k >= t} (gamma lambda)^(k - t) * [no episode end in
t..k-1] * delta_k`` with ``delta_k = r_k + gamma (1 - terminated_k) V(s'_k) - V(s_k)``: a ``[T, T]``
weight matrix per segment (``T = 30``: 900 entries) applied to ``delta``. Same maths as the
recursion ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}`` with ``A_T = 0`` (tested against
TorchRL's ``GAE``): a terminated step does not bootstrap, a truncated one bootstraps from the value of
its last observation, and no advantage flows across an episode end.
"""

from __future__ import annotations

import torch


def segment_gae(reward: torch.Tensor, value: torch.Tensor, next_value: torch.Tensor, done: torch.Tensor,
                terminated: torch.Tensor, gamma: float, lmbda: float) -> torch.Tensor:
    """Advantages of segments ``[B, T, 1]`` (time on dim 1), fp32, on the inputs' device."""
    value, next_value = value[..., 0].float(), next_value[..., 0].float()
    not_terminated = (~terminated[..., 0].to(torch.bool)).float()
    delta = reward[..., 0].float() + gamma * not_terminated * next_value - value  # [B, T]
    steps = delta.shape[1]
    t = torch.arange(steps, device=delta.device)
    lag = t[None, :] - t[:, None]  # [t, k] = k - t
    weight = torch.where(lag >= 0, (gamma * lmbda) ** lag.clamp_min(0).float(), torch.zeros((), device=delta.device))
    ended = done[..., 0].float()
    ends_before = torch.cumsum(ended, dim=1) - ended  # episode ends strictly before each step
    same_episode = ends_before[:, :, None] == ends_before[:, None, :]  # [B, t, k]: no end in t..k-1 (k >= t)
    advantage = torch.einsum("btk,bk->bt", weight * same_episode, delta)
    return advantage[..., None]
