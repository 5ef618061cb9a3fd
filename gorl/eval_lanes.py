"""Evaluations in spare lanes of the training batch (``loop.eval_lanes``, the MJX backend).

Why: an evaluation is 128 episodes of 1,000 sequential steps. On a GPU one MJX batch step costs
about the same at 128 envs as at 2,048 (it is latency-bound: benchmarks/RESULTS.md, GPU section),
so an evaluation of its own takes ~9 s, ~43 of them ~6.7 minutes of a 180M-frame run. Stepped as
extra lanes of the training env's batch, the same episodes ride along with the steps the
collector makes anyway, and cost almost nothing.

What stays the authors': each evaluation is of one agent, frozen when the evaluation is due (a
snapshot of the encoder, acting through the stage's decoder, deterministic as ``loop`` says), over
``eval_envs`` fresh episodes of ``eval_max_steps`` steps; the stage's best agent is picked from
the evaluations in the order they were due, by the same strict rule. What changes: the result
arrives some updates later (about 1,000 env steps: 2 updates at the authors' 2,048 x 16 shape, 17
at 16,384 x 2), and is logged then, with ``eval/frames`` giving the frames at which the agent was
frozen (the curves use it). Evaluations still running when the phase ends, or when a checkpoint
is written, are finished first with steps of the side lanes alone (:meth:`MJXBatchEnv.step_side`),
so no result is lost and the phase's choice of its best agent sees them all. Each stage's initial
and final evaluations stay synchronous, on the evaluation env. The training env's batch is then
``num_envs + groups * episodes`` lanes: refit data collected at ``num_envs`` envs
(``conf/recipes/paper_gpu_mjx.yaml``) no longer share its compiled shape (one more MJX compile).

``groups`` evaluations can run at once (each in its own ``episodes`` lanes); one due while all are
busy waits for a free group.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

#: (group, snapshot) -> the acting chain of that snapshot: observations -> env actions
ChainFor = Callable[[int, Any], Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class _Job:
    tag: Any
    act: Callable[[torch.Tensor], torch.Tensor]
    total: torch.Tensor
    alive: torch.Tensor
    steps: int = 0


class LaneEvaluations:
    """Queues evaluations and runs them in the side lanes of an :class:`~gorl.envs.mjx.MJXBatchEnv`.

    Args:
        groups: evaluations at once; the env has ``groups * episodes`` side lanes.
        episodes: episodes (lanes) per evaluation.
        max_steps: steps of each episode.
        chain_for: builds the acting chain of a snapshot for a group (the system loads the snapshot
            into that group's copy of the encoder).
        device: where the returns are summed (the env's device).
    """

    def __init__(self, groups: int, episodes: int, max_steps: int, chain_for: ChainFor, device: torch.device | str = "cpu") -> None:
        self.groups, self.episodes, self.max_steps, self.chain_for = groups, episodes, max_steps, chain_for
        self.device = torch.device(device)
        self.queue: deque[tuple[Any, Any]] = deque()
        self.running: dict[int, _Job] = {}
        self.results: list[tuple[Any, torch.Tensor]] = []
        self._starting: list[int] = []

    @property
    def lanes(self) -> int:
        return self.groups * self.episodes

    def start(self, tag: Any, snapshot: Any) -> None:
        """Queue an evaluation of ``snapshot``; ``tag`` comes back with its returns."""
        self.queue.append((tag, snapshot))
        self._assign()

    def pending(self) -> int:
        """Evaluations queued or running."""
        return len(self.queue) + len(self.running)

    def take_results(self) -> list[tuple[Any, torch.Tensor]]:
        """Finished evaluations since the last call, in the order they were started: ``(tag,
        returns [episodes])``."""
        out, self.results = self.results, []
        return out

    # --- what the env calls, once per batch step ------------------------------------------------------
    def take_resets(self) -> torch.Tensor | None:
        """The side lanes to reset before this step (those of evaluations starting now), or None."""
        if not self._starting:
            return None
        mask = torch.zeros(self.lanes, dtype=torch.bool)
        for group in self._starting:
            mask[group * self.episodes : (group + 1) * self.episodes] = True
        self._starting = []
        return mask

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions of every side lane (zeros in idle groups)."""
        chunks = []
        for group in range(self.groups):
            lanes = obs[group * self.episodes : (group + 1) * self.episodes]
            job = self.running.get(group)
            chunks.append(job.act(lanes) if job is not None else None)
        act_dim = next(c for c in chunks if c is not None).shape[-1]
        return torch.cat([c if c is not None else torch.zeros(self.episodes, act_dim, device=obs.device) for c in chunks])

    def observe(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """The step's rewards and ends in every side lane: sums of the running evaluations, and
        those that reached ``max_steps`` finish (their groups take the next queued ones)."""
        for group in sorted(self.running):
            job = self.running[group]
            lanes = slice(group * self.episodes, (group + 1) * self.episodes)
            job.total += reward[lanes].reshape(-1) * job.alive
            job.alive &= ~done[lanes].reshape(-1)
            job.steps += 1
            if job.steps >= self.max_steps:
                self.results.append((job.tag, job.total))
                del self.running[group]
        self._assign()

    def _assign(self) -> None:
        for group in range(self.groups):
            if not self.queue:
                return
            if group not in self.running:
                tag, snapshot = self.queue.popleft()
                act = self.chain_for(group, snapshot)
                self.running[group] = _Job(tag, act, torch.zeros(self.episodes, device=self.device),
                                           torch.ones(self.episodes, dtype=torch.bool, device=self.device))
                self._starting.append(group)
