"""Checkpointing on env frames, wall-clock time and phase boundaries.

Lightning's ``ModelCheckpoint`` triggers on optimiser steps or epochs; a GoRL iteration takes a
variable number of optimiser steps and the loop never ends an epoch, so neither is a useful clock.
This subclass keeps everything else of ``ModelCheckpoint`` (``last.ckpt``, ``--ckpt_path last``,
the run directory layout) and decides *when*: by frames, by minutes (so a killed run loses at most
``every_minutes`` of work however slow its frames are), and at the loop's phase changes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gorl.errors import NonFiniteError


# The signal (SIGINT, SIGTERM) that stopped this process's `gorl fit`, if one did: the CLI exits
# with 128 + it after the run has closed (gorl.cli.main).
_STOPPED_BY: list[int] = []


def stop_signal() -> int | None:
    """The signal that stopped training in this process, or None."""
    return _STOPPED_BY[0] if _STOPPED_BY else None


class FrameCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` every ``every_frames`` env frames, every ``every_minutes`` of wall-clock
    time, every ``every_decoder_rounds`` validation rounds of a decoder fit, at every phase change
    and at the end.

    Args:
        every_frames: env frames between periodic checkpoints.
        every_minutes: wall-clock minutes between checkpoints (``null`` = off); checked after every
            loop iteration, so the gap is at most this plus one iteration.
        every_decoder_rounds: decoder-fit rounds (``refinement.val_every`` steps each) between
            checkpoints during a refinement.
        dirpath: where checkpoints go (default: ``<log dir>/checkpoints``).
        metrics_every_seconds: wall-clock seconds between writes of the loggers' buffered rows
            (Lightning's CSV logger holds 100 rows, minutes of a run, that a kill would lose);
            checked after every loop iteration. 30 s costs nothing measurable (an append to
            ``metrics.csv``) and bounds what a ``kill -9`` loses to 30 s of rows; 0 = every iteration.
        refit_data: what a checkpoint written during a refit holds of the refit's data. ``store``:
            the pairs themselves (a resume goes straight on). ``recollect``: where the data comes
            from env reset (``refinement.collect_from: reset``), only the RNG state its collection
            started from; a resume collects it again (the env is seeded per stage, so on a CPU it is
            the same data, checked by a fingerprint) and the fit goes on from its saved step. At the
            authors' 4,096 episodes of 1,000 steps the data is ~310 MB per checkpoint, too large to
            carry a run between machines (``gorl bench --archive``); collecting it again costs what
            the collection did.

    SIGINT (Ctrl-C) and SIGTERM stop the run at the end of the current iteration, where its state
    is whole: ``last.ckpt`` is written, the run closes as usual (the per-stage table; ``[gorl]
    stopped by SIGINT ...``) and the CLI exits 130 or 143. A second one exits at once, unsaved.
    """

    def __init__(self, every_frames: float = 1e6, every_minutes: float | None = 10.0, every_decoder_rounds: int = 10,
                 dirpath: str | None = None, metrics_every_seconds: float = 30.0, refit_data: Literal["store", "recollect"] = "store") -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, save_on_train_epoch_end=False)
        if refit_data not in ("store", "recollect"):
            from gorl.errors import ConfigError

            raise ConfigError(f"checkpoint.refit_data must be store or recollect, got {refit_data!r}")
        self.refit_data = refit_data
        if every_minutes is not None and every_minutes <= 0:
            from gorl.errors import ConfigError

            raise ConfigError(f"checkpoint.every_minutes must be > 0 or null, got {every_minutes}")
        self.every_frames = every_frames
        self.every_minutes = every_minutes
        self.every_decoder_rounds = every_decoder_rounds
        self._last_frames = 0
        self._last_time = time.monotonic()
        self._last_phase: tuple[int, str] | None = None
        self.metrics_every_seconds = metrics_every_seconds
        self._last_flush = time.monotonic()
        self._signal: int | None = None
        self._old_handlers: dict[int, object] = {}

    # --- SIGINT / SIGTERM --------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._signal is not None:
            sys.stderr.write(f"\ngorl: {name} again: exiting now, without a checkpoint\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self._signal = signum
        sys.stderr.write(f"\ngorl: {name} received: stopping after this iteration with a checkpoint "
                         f"({'Ctrl-C' if signum == signal.SIGINT else name} again to exit at once, unsaved)\n")
        sys.stderr.flush()

    def install_signal_handlers(self) -> None:
        """Replace Lightning's handlers (its SIGINT path tears the run down without a checkpoint) for
        the time of training; Lightning restores its own predecessors at teardown."""
        _STOPPED_BY.clear()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        cycle = getattr(pl_module, "cycle", None)
        if cycle is not None:
            cycle.refit_data_in_checkpoints = self.refit_data == "store"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_flush = time.monotonic()
        # Where training starts: a phase that ends in the first iteration is then a phase change too.
        st = pl_module.loop_state
        self._last_phase, self._last_frames = (st.stage, st.phase), st.frames
        if hasattr(signal, "SIGTERM"):
            self.install_signal_handlers()  # every rank: a Ctrl-C reaches the whole process group

    def _save_now(self, trainer: pl.Trainer) -> None:
        module = trainer.lightning_module
        if not all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()):
            # Never overwrite the last good checkpoint with a broken state.
            raise NonFiniteError(f"non-finite weights at stage {module.loop_state.stage}, frame {module.loop_state.frames}; checkpoint not written, the last one is kept")
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        st = pl_module.loop_state
        phase = (st.stage, st.phase)
        if self._last_phase is None:
            self._last_phase, self._last_frames = phase, st.frames
        fit = getattr(pl_module, "fit_state", None)
        decoder_due = fit is not None and fit.rounds > 0 and not fit.done and fit.rounds % self.every_decoder_rounds == 0
        timely = self.every_minutes is not None and time.monotonic() - self._last_time >= 60.0 * self.every_minutes
        due = st.frames - self._last_frames >= self.every_frames or phase != self._last_phase or decoder_due or timely
        stop = self._signal is not None
        if trainer.world_size > 1:
            # Saving is collective (a barrier): every rank must take the same decision, although
            # clocks and signals are per process.
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if (due or stop) and st.phase != "done":
            self._save_now(trainer)  # flushes the loggers too (GoRLSystem.on_save_checkpoint)
            self._last_frames, self._last_phase, self._last_time = st.frames, phase, time.monotonic()
            self._last_flush = time.monotonic()
        if time.monotonic() - self._last_flush >= self.metrics_every_seconds:
            for logger in trainer.loggers:
                logger.save()
            self._last_flush = time.monotonic()
        if stop:
            signum = self._signal if self._signal is not None else signal.SIGINT  # another rank's signal
            _STOPPED_BY[:] = [signum]
            pl_module.stopped_by = signal.Signals(signum).name
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal_handlers()
        self._save_now(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return

    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_frames": self._last_frames}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._last_frames = state_dict.get("last_frames", 0)


class CurvesFigure(pl.Callback):
    """At the end of ``gorl fit``, write ``curves.png`` into the run directory: evaluation and
    training return against env frames with the stage boundaries marked
    (:func:`gorl.analysis.plots.plot_learning_curve` on the run's ``metrics.csv``).

    Needs matplotlib (the ``analysis`` extra) and a CSV logger; without either it says so in one
    line and the run ends as usual. ``gorl fit --curves false`` switches it off.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.utilities import rank_zero_info

        if trainer.global_rank != 0:
            return
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        if not csv_loggers:
            rank_zero_info("[gorl] curves.png skipped: it is drawn from metrics.csv, which only the CSV logger writes")
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            from gorl.analysis.plots import plot_learning_curve
        except ImportError as err:
            rank_zero_info(f"[gorl] curves.png skipped: {err.name or 'matplotlib'} is not installed (pip install -e '.[analysis]')")
            return
        logger = csv_loggers[0]
        logger.save()
        run_dir = Path(logger.log_dir)
        fig = plot_learning_curve(run_dir / "metrics.csv")
        fig.axes[0].set_title(f"{getattr(pl_module.env_cfg, 'task', '')}  (seed {getattr(pl_module, 'seed', '')})", fontsize=9)
        fig.tight_layout()
        fig.savefig(run_dir / "curves.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        rank_zero_info(f"[gorl] wrote {run_dir / 'curves.png'}")
