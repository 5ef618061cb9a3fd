"""The two-timescale stage loop as a small, checkpointable state machine.

Lightning 2.x has no public Loop API, so the alternation lives here and the system advances it one
*iteration* per ``training_step`` (an iteration = one PPO update, or one decoder-refinement step).
Everything a resumed run needs to carry on mid-stage is in :meth:`LoopState.state_dict`.

Plan, for ``stages = [F0, F1, ...]`` (encoder-phase env frames per stage)::

    stage 0: encoder phase (identity decoder) for F0 frames
    stage k >= 1: refine decoder (collect -> fit) -> reset encoder -> encoder phase for Fk frames
    done

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
        eval_every: env frames between deterministic evaluations (each phase also ends with one).
        eval_max_steps: step cap of an evaluation episode.
    """

    stages: list[float] = field(default_factory=lambda: [60e6, 60e6, 30e6, 30e6])
    eval_every: float = 1e6
    eval_max_steps: int = 1000

    def __post_init__(self) -> None:
        if not self.stages or any(s <= 0 for s in self.stages):
            raise ConfigError(f"loop.stages must be a non-empty list of positive frame counts, got {self.stages}")
        if self.eval_every <= 0:
            raise ConfigError(f"loop.eval_every must be > 0, got {self.eval_every}")

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

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # --- transitions ---------------------------------------------------------------------------
    def encoder_phase_over(self, cfg: LoopConfig) -> bool:
        return self.stage_frames >= int(cfg.stages[self.stage])

    def eval_due(self, cfg: LoopConfig) -> bool:
        return self.last_eval_frames < 0 or self.frames - self.last_eval_frames >= cfg.eval_every

    def end_encoder_phase(self, cfg: LoopConfig) -> Phase:
        self.phase = "done" if self.stage + 1 >= len(cfg.stages) else "decoder"
        return self.phase

    def start_next_stage(self) -> None:
        self.stage += 1
        self.phase = "encoder"
        self.stage_frames = 0
        self.best_return = float("-inf")
