"""Checkpointing on env frames and phase boundaries.

Lightning's ``ModelCheckpoint`` triggers on optimiser steps or epochs; a GoRL iteration takes a
variable number of optimiser steps and the loop never ends an epoch, so neither is a useful clock.
This subclass keeps everything else of ``ModelCheckpoint`` (``last.ckpt``, ``--ckpt_path last``,
the run directory layout) and decides *when* by frames and by the loop's phase changes.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gorl.errors import NonFiniteError


class FrameCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` every ``every_frames`` env frames, every ``every_decoder_rounds``
    validation rounds of a decoder fit, at every phase change and at the end.

    Args:
        every_frames: env frames between periodic checkpoints.
        every_decoder_rounds: decoder-fit rounds (``refinement.val_every`` steps each) between
            checkpoints during a refinement.
        dirpath: where checkpoints go (default: ``<log dir>/checkpoints``).
    """

    def __init__(self, every_frames: float = 1e6, every_decoder_rounds: int = 10, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, save_on_train_epoch_end=False)
        self.every_frames = every_frames
        self.every_decoder_rounds = every_decoder_rounds
        self._last_frames = 0
        self._last_phase: tuple[int, str] | None = None

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
        due = st.frames - self._last_frames >= self.every_frames or phase != self._last_phase or decoder_due
        if due and st.phase != "done":
            self._save_now(trainer)
            self._last_frames, self._last_phase = st.frames, phase

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
