"""The two-timescale stage loop as a small, checkpointable state machine.

Lightning 2.x has no public Loop API, so the alternation lives here and the system advances it one
*iteration* per ``training_step`` (an iteration = one PPO update, or one decoder-refinement step).
Everything a resumed run needs to carry on mid-stage is in :meth:`LoopState.state_dict`.

Plan, for ``stages = [F0, F1, ...]`` (encoder-phase env frames per stage)::

    stage 0: encoder phase (identity decoder) for F0 frames
    stage k >= 1: refine decoder (collect -> fit) -> reset encoder -> evaluate ("initial return")
                  -> encoder phase for Fk frames
    done

What happens at a stage boundary lives in :mod:`gorl.boundary`; the per-stage record it keeps
(initial / best / final return, frames, decoder fit) is ``LoopState.history``.

Frames counted here are encoder-phase frames (the paper's budget); frames spent collecting the
decoder's dataset are counted separately in ``collect_frames``.

When a stage is evaluated (``LoopConfig.evals_per_stage = N``, ``eval_schedule: authors``): as the
authors' ``train_stage`` (``src/gorl/algorithms/dm_control_training.py`` at bennidict23/GoRL@8a0209c),
once before the stage's first update (the ``initial`` evaluation; stage 0 included) and after the
updates ``floor(linspace(1, U, N - 1))`` and ``U``, where ``U`` is the stage's number of updates: N
evaluations per stage, the best of which is the stage's agent (:func:`authors_eval_updates`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from gorl.errors import ConfigError

Phase = Literal["encoder", "decoder", "done"]
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
        eval_every: env frames between deterministic evaluations (each phase also ends with one,
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
    """

    stages: list[float] = field(default_factory=lambda: [60e6, 60e6, 30e6, 30e6])
    eval_every: float = 1e6
    evals_per_stage: int | None = None
    eval_schedule: EvalSchedule = "authors"
    eval_max_steps: int = 1000

    def __post_init__(self) -> None:
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


@dataclass
class LoopState:
    """Where the run is. Plain numbers only, so it serialises into any checkpoint."""

    stage: int = 0
    phase: Phase = "encoder"
    frames: int = 0  # encoder-phase frames, all stages
    stage_frames: int = 0  # encoder-phase frames in the current stage
    stage_updates: int = 0  # encoder updates in the current stage
    collect_frames: int = 0  # frames spent collecting decoder datasets
    last_eval_frames: int = -1
    best_return: float = float("-inf")  # best deterministic eval return of this stage
    iteration: int = 0
    # One record per stage (gorl.boundary.StageRecord as a dict): plain numbers, so it checkpoints.
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # --- transitions ---------------------------------------------------------------------------
    def encoder_phase_over(self, cfg: LoopConfig) -> bool:
        return self.stage_frames >= int(cfg.stages[self.stage])

    def eval_before_update(self, cfg: LoopConfig) -> bool:
        """Whether stage 0 is to be evaluated now, before its first update (the authors' schedule;
        later stages get that evaluation at the boundary, :func:`gorl.boundary.begin_stage`)."""
        return cfg.authors_schedule and self.stage == 0 and self.stage_updates == 0 and self.last_eval_frames < 0

    def stage_update_count(self, cfg: LoopConfig) -> int:
        """Updates the current stage will make: its frame budget over the frames of one update,
        rounded up (the phase runs until the budget is reached); known after the first update."""
        per_update = self.stage_frames / max(self.stage_updates, 1)
        return max(1, math.ceil(int(cfg.stages[self.stage]) / per_update))

    def eval_due(self, cfg: LoopConfig) -> bool:
        """Whether to evaluate after the update just made (the end of a phase is always evaluated)."""
        if cfg.authors_schedule:
            if self.stage_updates == 0:
                return False
            return self.stage_updates in authors_eval_updates(self.stage_update_count(cfg), cfg.evals_per_stage)
        return self.last_eval_frames < 0 or self.frames - self.last_eval_frames >= cfg.eval_interval(self.stage)

    def end_encoder_phase(self, cfg: LoopConfig) -> Phase:
        self.phase = "done" if self.stage + 1 >= len(cfg.stages) else "decoder"
        return self.phase

    def start_next_stage(self) -> None:
        self.stage += 1
        self.phase = "encoder"
        self.stage_frames = 0
        self.stage_updates = 0
        self.best_return = float("-inf")
