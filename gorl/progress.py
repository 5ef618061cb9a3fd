"""A progress bar in env frames, the unit a GoRL run is budgeted in.

Lightning's bar counts the batches of an epoch. A GoRL run is one endless epoch of iterations of
very different cost (a PPO update, a decoder-fitting epoch), stopped by its own frame counter, so
"Epoch 0" and a batch count say nothing about how far it is. This bar's total is the frame budget
(``loop.stages`` summed), its position the encoder-phase frames done, and it names the stage and
phase, the latest deterministic eval return and the env-steps rate; during a decoder refinement it
shows the fitting epoch and the validation loss instead.

It writes to stderr, like tqdm itself and like GoRL's ``[gorl]`` log lines, which are routed through
the bar while it is open so that they do not tear it. ``gorl fit`` uses it in place of Lightning's
default bar; ``--trainer.enable_progress_bar false`` turns it off.
"""

from __future__ import annotations

import logging
import math
import sys
from contextlib import ExitStack
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

# Shown by the bar in their own words; any other prog_bar metric is appended as ``key=value``.
_OWN_METRICS = {"loop/frames", "perf/fps", "eval/return", "decoder/val_loss", "v_num"}


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


class GoRLProgressBar(TQDMProgressBar):
    """Frames / budget, stage, phase, eval return and env steps per second (see the module doc).

    Args:
        refresh_rate: redraw every this many loop iterations.
        process_position: line offset, for several bars at once (as in Lightning's bar).
    """

    BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}{postfix}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self._redirect = ExitStack()

    # --- what the bar says ------------------------------------------------------------------------
    @staticmethod
    def describe(trainer: pl.Trainer, module: pl.LightningModule) -> tuple[str, str]:
        """(description, postfix) for the module's current loop state."""
        st = module.loop_state
        # GoRLSystem keeps the newest value of each metric in ``latest``; prog_bar=True metrics
        # logged through ``self.log`` (e.g. by a custom encoder) are shown too.
        extra = trainer.progress_bar_metrics
        metrics = {**extra, **getattr(module, "latest", {})}
        fit = getattr(module, "fit_state", None)
        if st.phase == "decoder":
            desc = f"stage {st.stage} decoder: collecting" if fit is None else f"stage {st.stage} decoder: step {fit.steps:,}/{fit.total_steps:,}"
        else:
            desc = "done" if st.phase == "done" else f"stage {st.stage} encoder"
        post = []
        last_eval = getattr(module, "last_eval_return", None)
        if last_eval is not None and math.isfinite(last_eval):
            post.append(f"eval/return={_num(last_eval)}")
        if st.phase == "decoder" and fit is not None and "decoder/val_loss" in metrics:
            post.append(f"val_loss={float(metrics['decoder/val_loss']):.4g}")
        elif "perf/fps" in metrics:
            post.append(f"fps={float(metrics['perf/fps']):,.0f}")
        post += [f"{k}={_num(float(v))}" for k, v in extra.items() if k not in _OWN_METRICS]
        return desc, ", ".join(post)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number: noise on every redraw
        return metrics

    def _show(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        desc, postfix = self.describe(trainer, module)
        bar.n = module.loop_state.frames
        # The last rollout can overshoot the budget; tqdm would then print "0% ... /?" instead of 100%.
        bar.total = max(module.loop_cfg.total_frames, bar.n)
        bar.set_description(desc, refresh=False)
        bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    # --- training ---------------------------------------------------------------------------------
    def init_train_tqdm(self) -> Tqdm:
        module = self.trainer.lightning_module
        return Tqdm(
            desc=self.describe(self.trainer, module)[0] + ": ",
            total=module.loop_cfg.total_frames,
            # A resumed run starts part-way: the time estimate counts only frames done in this process.
            initial=module.loop_state.frames,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0,
            unit_scale=True,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar = self.init_train_tqdm()
        self._show(trainer, pl_module)
        if not bar.disable:
            # Lightning's own log lines (ours: "[gorl] ...") go through tqdm.write while the bar is up.
            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger("lightning.pytorch")]))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return  # one endless epoch: nothing to reset

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.is_enabled and ((batch_idx + 1) % self.refresh_rate == 0 or pl_module.loop_state.phase == "done"):
            self._show(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(trainer, pl_module)
        super().on_train_end(trainer, pl_module)
        self._redirect.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._redirect.close()
        bar = getattr(self, "_train_progress_bar", None)
        if bar is not None and not bar.disable:
            bar.close()  # ends the bar's line: the CLI's "gorl: error: ..." then starts a line of its own

    # --- gorl validate ----------------------------------------------------------------------------
    def init_validation_tqdm(self) -> Tqdm:
        standalone = self.trainer.state.fn == "validate"
        return Tqdm(
            desc="gorl validate",
            position=2 * self.process_position + (not standalone),
            disable=self.is_disabled,
            leave=standalone,
            dynamic_ncols=True,
            file=sys.stderr,  # stdout is for the result line
            bar_format=TQDMProgressBar.BAR_FORMAT,
        )

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        n = pl_module.env_cfg.eval_envs * trainer.world_size
        mode = "deterministic" if pl_module.loop_cfg.eval_deterministic else "stochastic"
        self.val_progress_bar.set_description(f"gorl validate: {n} {mode} episodes")
