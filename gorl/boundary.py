"""The stage boundary: end an encoder phase -> (refit) -> install the decoder -> reset -> evaluate.

This is where GoRL can lose what a stage learned, so every step of it is measured here:

1. **End of an encoder phase** (:func:`end_encoder_phase`): the phase's last evaluation is the
   stage's *final* return; the stage's *best* (over all its evaluations, the stage-start one
   included) is restored, because the decoder's data is collected with the best encoder.
2. **Refit** (:mod:`gorl.refinement`, driven by the system): collect, split, fit.
3. **Start of the next stage** (:func:`begin_stage`): the fitted decoder's best-validation weights
   become the acting decoder, the encoder is reset as configured (fresh, warm or warm value), and
   the new stage is **evaluated before any encoder update**: its *initial* return. The drop from
   the previous stage's best and final returns is logged (``stage/drop_from_best``,
   ``stage/drop_from_final``), and the initial evaluation is a candidate for the new stage's best
   agent, as in the authors' current release (``src/gorl/algorithms/dm_control_training.py``).
   With their evaluation schedule (``loop.eval_schedule: authors``) stage 0 is evaluated before its
   first update too (:meth:`gorl.loop.LoopState.eval_before_update`), its record's ``initial``.

Every stage keeps a :class:`StageRecord` in ``LoopState.history`` (checkpointed with the loop), and
:func:`summary_table` turns them into the per-stage table that ends every run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lightning.pytorch.utilities import rank_zero_info

from gorl.distributed import broadcast_module_

if TYPE_CHECKING:
    from gorl.refinement import DecoderFit
    from gorl.system import GoRLSystem

@dataclass
class StageRecord:
    """What one stage did. Returns are deterministic evaluation returns; ``None`` = not measured.

    ``initial`` is the return right after the boundary (stage >= 1), before any encoder update.
    ``drop_from_best`` / ``drop_from_final`` are the previous stage's best / final return minus this
    stage's initial one: a positive drop is return lost at the boundary. ``fit_steps``,
    ``best_val_loss``, ``decoder_data`` and ``fit_seconds`` describe the refit that *ends* this
    stage (the decoder the next stage acts with).
    """

    stage: int
    initial: float | None = None
    best: float | None = None
    final: float | None = None
    frames: int = 0
    fit_steps: int = 0
    best_val_loss: float | None = None
    decoder_data: int = 0
    fit_seconds: float = 0.0
    drop_from_best: float | None = None
    drop_from_final: float | None = None


def record(system: "GoRLSystem", stage: int | None = None) -> dict:
    """The (mutable, plain-dict) record of ``stage`` (default: the current one), created on demand."""
    st = system.loop_state
    stage = st.stage if stage is None else stage
    while len(st.history) <= stage:
        st.history.append(asdict(StageRecord(stage=len(st.history))))
    return st.history[stage]


def end_encoder_phase(system: "GoRLSystem") -> None:
    """Close the encoder phase that has just had its last evaluation; restore its best encoder
    if a refinement follows."""
    st = system.loop_state
    rec = record(system)
    rec.update(best=st.best_return, final=system.last_eval_return, frames=st.stage_frames)
    nxt = st.end_encoder_phase(system.loop_cfg)
    if nxt == "decoder" and system.best_encoder is not None:
        system.encoder.restore(system.best_encoder)
    rank_zero_info(
        f"[gorl] stage {st.stage} encoder phase done at {st.frames:,} frames: final eval return {rec['final']:.1f}, "
        f"best {rec['best']:.1f}" + ("" if rec["initial"] is None else f", initial {rec['initial']:.1f}")
    )


def begin_stage(system: "GoRLSystem", fit: "DecoderFit") -> None:
    """Install the fitted decoder, reset the encoder, start the next stage and evaluate it."""
    st = system.loop_state
    prev = record(system)
    prev.update(fit_steps=fit.steps, best_val_loss=fit.best_val)
    system.trainee.load_state_dict(fit.best_state)
    system.decoder.load_state_dict(fit.best_state)
    rank_zero_info(f"[gorl] stage {st.stage} decoder fitted: {fit.steps:,} steps, best {system.refine_cfg.checkpoint_metric} "
                   f"{fit.best_val:.4f} at step {fit.best_step:,}")
    system.encoder.reset(system.best_encoder, st.stage + 1)
    system.encoder.on_decoder_change()
    broadcast_module_(system.encoder)
    system.optimizers()[0].optimizer.state.clear()  # Adam moments of the old encoder are stale
    system.best_encoder = None
    st.start_next_stage()
    # The new stage, before any update: what the refit and the reset kept of the previous stage.
    system.evaluate()
    rec = record(system)
    rec.update(initial=system.last_eval_return,
               drop_from_best=prev["best"] - system.last_eval_return,
               drop_from_final=prev["final"] - system.last_eval_return)
    system.record_metrics({"stage/initial_return": rec["initial"], "stage/drop_from_best": rec["drop_from_best"],
                           "stage/drop_from_final": rec["drop_from_final"], "stage/fit_steps": prev["fit_steps"],
                           "stage/best_val_loss": prev["best_val_loss"],
                           # a wall time: under perf/ with the other timings, which runs of one seed need not share
                           "perf/fit_seconds": prev["fit_seconds"]})
    rank_zero_info(
        f"[gorl] stage {st.stage} starts at eval return {rec['initial']:.1f} "
        f"(stage {st.stage - 1}: best {prev['best']:.1f}, final {prev['final']:.1f}; "
        f"drop {rec['drop_from_best']:+.1f} from best, {rec['drop_from_final']:+.1f} from final)"
    )


def _cell(x: float, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def summary_table(history: list[dict]) -> str:
    """The per-stage table printed at the end of a run (markdown, so it pastes into RESULTS)."""
    lines = ["| stage | initial | best | final | frames | decoder fit steps | best val loss | fit time |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in history:
        # A stage's decoder fit is recorded on the stage *before* it (the refit ends that stage).
        fitted = history[rec["stage"] - 1] if rec["stage"] > 0 else None
        steps = _cell(float(fitted["fit_steps"]), ",.0f") if fitted else "-"
        val = _cell(fitted["best_val_loss"], ".4f") if fitted else "-"
        secs = f"{fitted['fit_seconds']:.0f} s" if fitted else "-"
        lines.append(f"| {rec['stage']} | {_cell(rec['initial'])} | {_cell(rec['best'])} | {_cell(rec['final'])} | "
                     f"{rec['frames']:,} | {steps} | {val} | {secs} |")
    return "\n".join(lines)

