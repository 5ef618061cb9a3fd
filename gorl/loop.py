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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from gorl.errors import ConfigError

Phase = Literal["encoder", "decoder", "done"]


@dataclass
class LoopConfig:
    """The stage plan and evaluation cadence.

    Attributes:
        stages: encoder-phase env frames per stage (``[60e6, 60e6, 30e6, 30e6]`` in the paper;
            one entry = plain Gaussian PPO). Floats are accepted (``1e6``).
        eval_every: env frames between deterministic evaluations (each phase also ends with one,
            and every stage after the first starts with one).
        evals_per_stage: if set, evaluate this many times per stage instead, evenly over its
            frames (the authors: ``num_evals = 10`` per stage, the best of which is the stage's
            agent); ``eval_every`` is then ignored.
        eval_max_steps: step cap of an evaluation episode.
    """

    stages: list[float] = field(default_factory=lambda: [60e6, 60e6, 30e6, 30e6])
    eval_every: float = 1e6
    evals_per_stage: int | None = None
    eval_max_steps: int = 1000

    def __post_init__(self) -> None:
        if not self.stages or any(s <= 0 for s in self.stages):
            raise ConfigError(f"loop.stages must be a non-empty list of positive frame counts, got {self.stages}")
        if self.eval_every <= 0:
            raise ConfigError(f"loop.eval_every must be > 0, got {self.eval_every}")
        if self.evals_per_stage is not None and self.evals_per_stage < 1:
            raise ConfigError(f"loop.evals_per_stage must be >= 1 or null, got {self.evals_per_stage}")

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

    def eval_due(self, cfg: LoopConfig) -> bool:
        return self.last_eval_frames < 0 or self.frames - self.last_eval_frames >= cfg.eval_interval(self.stage)

    def end_encoder_phase(self, cfg: LoopConfig) -> Phase:
        self.phase = "done" if self.stage + 1 >= len(cfg.stages) else "decoder"
        return self.phase

    def start_next_stage(self) -> None:
        self.stage += 1
        self.phase = "encoder"
        self.stage_frames = 0
        self.best_return = float("-inf")
