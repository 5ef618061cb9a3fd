"""The stage plan: how many encoder-phase frames each stage gets, and when a stage is evaluated.

Plan, for ``stages = [F0, F1, ...]`` (encoder-phase env frames per stage)::

    stage 0: encoder phase (identity decoder) for F0 frames
    stage k >= 1: refine decoder (collect -> fit) -> reset encoder -> evaluate ("initial return")
                  -> encoder phase for Fk frames
    done

The cycle that walks this plan, its checkpointable state (``LoopState``) and what happens at a
stage boundary live in :mod:`gorl.stage_cycle`. Lightning 2.x has no public Loop API, so the system
advances that cycle one *iteration* per ``training_step`` (an iteration = one encoder update, or one
step of a decoder refit).

When a stage is evaluated (``LoopConfig.evals_per_stage = N``, ``eval_schedule: authors``): as the
authors' ``train_stage`` (``src/gorl/algorithms/dm_control_training.py`` at bennidict23/GoRL@8a0209c),
once before the stage's first update (the ``initial`` evaluation; stage 0 included) and after the
updates ``floor(linspace(1, U, N - 1))`` and ``U``, where ``U`` is the stage's number of updates: N
evaluations per stage, the best of which is the stage's agent (:func:`authors_eval_updates`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from gorl.errors import ConfigError

EvalSchedule = Literal["authors", "even"]


def authors_eval_updates(n_updates: int, evals: int) -> set[int]:
    """The updates after which the authors evaluate a stage of ``n_updates`` updates, besides the
    evaluation before its first update: ``{int(i) for i in np.linspace(1, n_updates,
    max(evals - 1, 1), dtype=int)} | {n_updates}`` (``train_stage``'s ``eval_updates`` in their
    ``src/gorl/algorithms/dm_control_training.py`` at 8a0209c)."""
    points = {int(i) for i in np.linspace(1, n_updates, max(evals - 1, 1), dtype=int)}
    points.add(n_updates)
    return points


@dataclass
class LoopConfig:
    """The stage plan and evaluation cadence.

    Attributes:
        stages: encoder-phase env frames per stage (``[60e6, 60e6, 30e6, 30e6]`` in the paper;
            one entry = plain Gaussian PPO). Floats are accepted (``1e6``).
        eval_every: env frames between evaluations (each phase also ends with one,
            and every stage after the first starts with one).
        evals_per_stage: if set, evaluate this many times per stage instead (the authors:
            ``num_evals = 10`` per stage, the best of which is the stage's agent), placed as
            ``eval_schedule`` says; ``eval_every`` is then ignored.
        eval_schedule: where ``evals_per_stage`` evaluations go. ``authors`` (default): as the
            authors' (module docstring): one before the stage's first update, stage 0 included, and
            after the updates of :func:`authors_eval_updates`. ``even``: this project's earlier
            placement: after the first update of stage 0, every ``stages[k] / evals_per_stage``
            frames after the previous evaluation, and at the end of each phase (plus the boundary's
            evaluation of each later stage): N + 1 per stage.
        eval_max_steps: step cap of an evaluation episode.
        eval_deterministic: evaluate with the latent mean (default, the authors' dm_control
            pipeline) or, ``false``, with sampled latents (their humanoid profile's
            ``evaluation.deterministic = false``); either way the stage's best encoder is picked by
            these returns.
        eval_lanes: ``0`` (default): every evaluation steps an env of its own, the training
            waiting (the authors'). ``k >= 1`` (the MJX backend, one process): the evaluations
            after updates run in ``k * env.eval_envs`` extra lanes of the training batch while
            training goes on, up to ``k`` at once, each of the agent as it was when due, and are
            recorded when they end (:mod:`gorl.eval_lanes` says what that keeps and what it
            changes). Each stage's first and last evaluations stay as they are.
    """

    stages: list[float] = field(default_factory=lambda: [60e6, 60e6, 30e6, 30e6])
    eval_every: float = 1e6
    evals_per_stage: int | None = None
    eval_schedule: EvalSchedule = "authors"
    eval_max_steps: int = 1000
    eval_deterministic: bool = True
    eval_lanes: int = 0

    def __post_init__(self) -> None:
        if self.eval_lanes < 0:
            raise ConfigError(f"loop.eval_lanes must be >= 0, got {self.eval_lanes}")
        if not self.stages or any(s <= 0 for s in self.stages):
            raise ConfigError(f"loop.stages must be a non-empty list of positive frame counts, got {self.stages}")
        if self.eval_every <= 0:
            raise ConfigError(f"loop.eval_every must be > 0, got {self.eval_every}")
        if self.evals_per_stage is not None and self.evals_per_stage < 1:
            raise ConfigError(f"loop.evals_per_stage must be >= 1 or null, got {self.evals_per_stage}")
        if self.eval_schedule not in ("authors", "even"):
            raise ConfigError(f"loop.eval_schedule must be authors or even, got {self.eval_schedule!r}")

    @property
    def authors_schedule(self) -> bool:
        """Whether evaluations are placed as the authors' (``evals_per_stage`` set, ``authors``)."""
        return self.evals_per_stage is not None and self.eval_schedule == "authors"

    def eval_interval(self, stage: int) -> float:
        """Env frames between evaluations in ``stage``."""
        if self.evals_per_stage is None:
            return self.eval_every
        return self.stages[stage] / self.evals_per_stage

    @property
    def total_frames(self) -> int:
        return int(sum(self.stages))
