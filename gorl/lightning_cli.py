"""The Lightning side of ``gorl fit`` / ``gorl validate``: :class:`GoRLCLI` and its config callback.

Imported by :func:`gorl.cli.main` only once a subcommand needs Lightning: ``gorl --help``, ``gorl
export --help`` and the config checks of :mod:`gorl.config_check` answer without it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

# Third-party notices that say nothing about the user's run, printed on every `gorl fit`: Lightning
# 2.6's own use of a torch pytree class that torch 2.13 deprecates, and its advert for a cloud logger.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning_utilities.core.rank_zero"):  # the name depends on import order
    logging.getLogger(_name).addFilter(lambda record: "Tip: For seamless cloud logging" not in record.getMessage())

from gorl.callbacks import CurvesFigure, FrameCheckpoint  # noqa: E402
from gorl.distributions import ActionDistributionLogger  # noqa: E402
from gorl.errors import VALIDATE_NEEDS_CHECKPOINT, CheckpointError  # noqa: E402
from gorl.loop import LoopConfig  # noqa: E402
from gorl.progress import GoRLProgressBar  # noqa: E402
from gorl.run_dirs import THIS_CALL, resolve_checkpoint, run_identity  # noqa: E402
from gorl.system import GoRLSystem  # noqa: E402
from gorl.video import EpisodeVideo, VideoSettings, check_video_support  # noqa: E402

TRAINER_DEFAULTS = {
    "max_epochs": -1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_model_summary": False,
    "enable_checkpointing": True,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "gorl"}},
}


def _wandb_loggers(logger_cfg: Any) -> list[Namespace]:
    """The WandbLogger entries of a (not yet instantiated) ``trainer.logger`` config."""
    entries = logger_cfg if isinstance(logger_cfg, list) else [logger_cfg]
    return [e for e in entries if isinstance(e, Namespace) and str(e.get("class_path", "")).endswith("WandbLogger")]


class GoRLSaveConfig(SaveConfigCallback):
    """Also hands the full config to W&B, where runs are compared by it (CSV and TensorBoard runs
    have ``config.yaml`` in their own directory already).

    Only ``gorl fit`` writes ``config.yaml``: it is what marks a directory as a run that
    ``--ckpt_path last`` may resume, and a ``gorl validate`` call is not one."""

    def setup(self, trainer: Trainer, pl_module: GoRLSystem, stage: str) -> None:
        if stage != "fit":
            if trainer.is_global_zero and not self.already_saved:
                self.save_config(trainer, pl_module, stage)
                self.already_saved = True
            return
        super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, or rank 0 waits forever
        if trainer.is_global_zero and self.save_to_log_dir and log_dir is not None:
            THIS_CALL["run_dir"] = Path(log_dir)

    def on_train_start(self, trainer: Trainer, pl_module: GoRLSystem) -> None:
        THIS_CALL["trained"] = True

    def save_config(self, trainer: Trainer, pl_module: GoRLSystem, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams(self.config.clone().as_dict())


class GoRLCLI(LightningCLI):
    # The user's MUJOCO_GL and whether they set WANDB_MODE, as they were before gorl.cli changed them
    # (gorl.cli.main sets these; see the top of gorl/cli.py).
    user_mujoco_gl: str | None = None
    wandb_mode_from_user: bool = False

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only what a GoRL system supports: Lightning's ``test`` and ``predict`` need a test set and
        a ``forward`` that an RL system does not have (``gorl validate`` scores a checkpoint)."""
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "model.seed")
        parser.add_argument("--defaults", type=Optional[list[str]], default=None,
                            help="configs this one builds on, applied first (paths relative to the config file; gorl.cli.expand_defaults)")
        parser.add_lightning_class_args(FrameCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ActionDistributionLogger, "distributions")
        parser.add_argument(
            "--video",
            type=Union[bool, VideoSettings],
            default=False,
            help="Record one deterministic episode as MP4 in the run directory (validate: the checkpoint's "
            "policy; fit: the final one). true, or settings, e.g. --video.height 480 --video.width 640.",
        )
        parser.add_argument("--curves", type=bool, default=True,
                            help="fit: write curves.png (eval and train return vs env frames, stage boundaries marked) into the run directory")

    def before_instantiate_classes(self) -> None:
        """Checks and defaults that need the parsed config but must come before envs are built."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit":
            # Fit evaluates inside its own loop; Lightning's validation loop is for `gorl validate`.
            cfg.trainer.limit_val_batches = 0
        for logger in _wandb_loggers(cfg.trainer.get("logger")):
            args = logger.init_args
            if args.get("name") is None:
                # A readable run name instead of W&B's random one; validation runs are marked.
                env = cfg.model.env
                what = env.factory.replace(":", ".").rsplit(".", 1)[-1] if env.get("factory") else env.task
                args.name = f"{what}-s{cfg.model.seed}" + ("" if self.subcommand in (None, "fit") else f"-{self.subcommand}")
            if args.get("offline") is False and not self.wandb_mode_from_user:
                os.environ.pop("WANDB_MODE", None)  # offline: false in the config means online
        video = cfg.get("video")
        self.video_settings = None
        if video:
            # Built here, not by jsonargparse: a bad size is then a ConfigError of its own, not a
            # union-type report ("Expected a <class 'bool'>").
            self.video_settings = VideoSettings() if video is True else VideoSettings(**video.as_dict())
            os.environ["MUJOCO_GL"] = self.user_mujoco_gl or "egl"
            check_video_support(cfg.model.env.task, cfg.model.env.get("factory"))
        if self.subcommand == "validate" and not cfg.get("ckpt_path"):
            # Without one, validate would score the freshly initialised policy and exit 0. The quick
            # checks refuse a call that names none (gorl.config_check); this catches an empty one.
            raise CheckpointError(VALIDATE_NEEDS_CHECKPOINT)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's default progress bar, if it added one, becomes GoRL's (frames, not batches);
        a bar configured in ``trainer.callbacks`` is kept, and ``enable_progress_bar: false`` means none.
        Lightning's default is its Rich bar when ``rich`` is importable (the ``mjx`` extra brings
        it, through flax) and its tqdm bar otherwise: either is replaced."""
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        given = cfg.trainer.get("callbacks") or []
        given_ids = {id(c) for c in (given if isinstance(given, list) else [given])}
        trainer = super().instantiate_trainer(**kwargs)
        for i, callback in enumerate(trainer.callbacks):
            if isinstance(callback, ProgressBar) and id(callback) not in given_ids:
                # The tqdm bar's settings carry over; the Rich bar's refresh rate (100) does not
                # mean the same thing, so it gets tqdm's default of every iteration.
                tqdm_bar = isinstance(callback, TQDMProgressBar)
                trainer.callbacks[i] = GoRLProgressBar(refresh_rate=callback.refresh_rate if tqdm_bar else 1,
                                                       process_position=callback.process_position if tqdm_bar else 0)
        if getattr(self, "video_settings", None) is not None:
            trainer.callbacks.append(EpisodeVideo(self.video_settings))
        if self.subcommand == "fit" and cfg.get("curves", True):
            trainer.callbacks.append(CurvesFigure())
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built (Lightning's own hook loads it right here).

        ``last`` picks the newest checkpoint of this config's newest unfinished run
        (:func:`resolve_checkpoint`). The resumed run
        logs into a new version directory: Lightning's CSV logger would delete an existing
        ``metrics.csv``, and nothing of a previous run may be lost.
        """
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else None
        if cfg is not None and cfg.get("ckpt_path"):
            import yaml

            # This call's config as its run directory will hold it (config.yaml), to find earlier parts of the same run.
            identity = run_identity(yaml.safe_load(self._parser(sub).dump(cfg, skip_none=False)))
            loop = cfg.model.get("loop") if cfg.get("model") else None
            stages = len(loop.stages) if loop is not None and loop.get("stages") is not None else len(LoopConfig().stages)
            path, version = resolve_checkpoint(str(cfg.ckpt_path), cfg.trainer.get("logger"), identity, allow_done=sub != "fit",
                                               plan_stages=stages if sub == "fit" else None)
            cfg.ckpt_path = str(path)
            if cfg.get("weights_only", False) is None:
                # Checkpoints hold only tensors and plain containers (tested), so loading never needs
                # to unpickle arbitrary objects: a checkpoint from elsewhere cannot run code.
                cfg.weights_only = True
            sys.stderr.write(f"gorl: {'resuming from' if sub == 'fit' else 'loading'} {path}\n")
        super()._parse_ckpt_path()


def finish_wandb() -> None:
    """Close a W&B run explicitly: at interpreter exit its service may already be gone, and the
    offline run would miss its final records."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
