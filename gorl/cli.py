"""``gorl fit --config conf/hopper.yaml``: the Lightning CLI, with GoRL's defaults and error handling.

- configs are parsed in omegaconf mode, so ``${...}`` interpolation works inside YAML files;
- ``seed_everything`` is linked to ``model.seed`` (one seed drives torch, numpy and every env);
- W&B is offline unless you say otherwise (``WANDB_MODE``, or ``offline: false`` in
  ``conf/logger/wandb.yaml``), because machines without network must still run;
- the progress bar counts env frames against the budget (:mod:`gorl.progress`), not batches;
- ``gorl validate --config X --ckpt_path C`` scores a checkpoint's deterministic policy, and
  ``--video true`` adds an MP4 of one episode (:mod:`gorl.video`); rendering is off otherwise;
- a config may start from others: ``defaults: [recipes/gorl_fm.yaml]`` (paths relative to the
  file) applies those first and this file's keys on top, as jsonargparse does for repeated
  ``--config`` (:func:`expand_defaults`). That is how a paper recipe reads: method default, then
  task override, then (inside per-stage lists) stage override;
- bad input (unknown key, wrong type, unknown task, bad checkpoint path) ends with one line
  ``gorl: error: ...`` and exit code 2, before any env is built where the config allows it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

# MuJoCo's GL backend matters only for --video (gorl/video.py), so the CLI keeps it off otherwise,
# whatever MUJOCO_GL says: mujoco and dm_control load the backend at import, and a missing one
# (MUJOCO_GL=egl without EGL, osmesa without libOSMesa) would stop every run there, rendering or
# not. --video restores your MUJOCO_GL (default egl, headless) before dm_control is imported.
_USER_GL = os.environ.get("MUJOCO_GL")
os.environ["MUJOCO_GL"] = "disabled"
_WANDB_MODE_FROM_USER = "WANDB_MODE" in os.environ
os.environ.setdefault("WANDB_MODE", "offline")

from jsonargparse import Namespace  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402

import torch  # noqa: E402

# Third-party notices that say nothing about the user's run, printed on every `gorl fit`: Lightning
# 2.6's own use of a torch pytree class that torch 2.13 deprecates, and its advert for a cloud logger.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning_utilities.core.rank_zero"):  # the name depends on import order
    logging.getLogger(_name).addFilter(lambda record: "Tip: For seamless cloud logging" not in record.getMessage())

from gorl.callbacks import CurvesFigure, FrameCheckpoint, stop_signal  # noqa: E402
from gorl.distributions import ActionDistributionLogger  # noqa: E402
from gorl.errors import CheckpointError, GoRLError  # noqa: E402
from gorl.loop import LoopConfig  # noqa: E402
from gorl.progress import GoRLProgressBar  # noqa: E402
from gorl.system import GoRLSystem  # noqa: E402
from gorl.video import EpisodeVideo, VideoSettings, check_video_support  # noqa: E402

# What a `gorl fit` with no config would train for (180M env frames).
_DEFAULT_FRAMES = int(sum(LoopConfig().stages))

TRAINER_DEFAULTS = {
    "max_epochs": -1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_model_summary": False,
    "enable_checkpointing": True,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "gorl"}},
}


_PLUMBING = ("Does not validate against any", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>", "Problem with given class_path", "Parser key")
_CHOICES = {
    "decoder": "gorl.decoders.IdentityDecoder, gorl.decoders.FlowDecoder, gorl.decoders.DiffusionDecoder",
    "encoder": "gorl.encoders.EncoderModule, gorl.encoders.LatentSAC, gorl.baselines.FPO, gorl.baselines.DPPO",
}


def _type_name(text: str) -> str:
    return re.sub(r"<class '([^']+)'>", r"\1", text).replace("typing.", "")


def _given_value(lines: list[str]) -> tuple[str, str | None] | None:
    """The innermost value jsonargparse rejected, and the types it wanted there (if listed)."""
    for i, line in enumerate(lines):
        m = re.match(r"Given value: (.*?)(?:\. Got value: .*)?$", line.lstrip("- "))
        if m and not m.group(1).startswith(("Namespace(", "NestedArg(")):
            subtypes = [lines[j] for j in range(i) if lines[j].startswith("Subtypes:")]
            expected = None
            if subtypes:
                listed = subtypes[-1].split(":", 1)[1].strip()
                listed = listed[1:-1] if listed.startswith("[") and listed.endswith("]") else listed
                names = [_type_name(t.strip()) for t in re.split(r", (?![^\[]*\])", listed)]
                expected = " or ".join(n for n in names if n != "NoneType") or None
            return m.group(1), expected
    return None


def one_line(message: str) -> str:
    """Condense jsonargparse's nested error report to ``<key>: <the specific problem>``."""
    message = re.sub(r"Type \S.*? expects a function or a callable class: ", "\n", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [m.group(1) for line in lines if (m := re.match(r'Parser key "([^"]+)"', line.lstrip("- ")))]
    key = ".".join(keys)
    details = [d for line in lines if (d := line.lstrip("- ")) and not d.startswith(_PLUMBING)]
    head = lines[0].split(":", 1)[1].strip() if lines and ":" in lines[0] and lines[0].startswith("Parser key") else ""
    detail = head or (details[0] if details else message)
    detail = re.sub(r"\. Got value: Namespace\(.*$", "", detail)
    detail = re.sub(r"^Expected a <class '([^']+)'>\. Got value: (.*)$", lambda m: f"expected {m.group(1)}, got {m.group(2)!r}", detail)
    given = _given_value(lines)
    if given is not None:
        value, expected = given
        if expected and detail.startswith("Expected a <class"):
            detail = f"expected {expected}"
        if value not in detail:
            detail += f", got {value!r}"
    last = key.rsplit(".", 1)[-1]
    if last in _CHOICES and ("has no attribute" in detail or "either not accessible" in detail or "No module" in detail):
        detail += f" (valid: {_CHOICES[last]}, or any subclass by import path)"
    return f"{key}: {detail}" if key else detail


def _logger_dirs(logger_cfg) -> tuple[Path, str] | None:
    """(save_dir, name) of a CSV/TensorBoard/W&B logger config, else None: the run directories
    (and their ``checkpoints/``) are ``save_dir/name/<version>``, with W&B's project as the name."""
    if logger_cfg is None or isinstance(logger_cfg, (bool, list)):
        return None
    args = logger_cfg.get("init_args", {}) or {}
    if "save_dir" not in args:
        return None
    if str(logger_cfg.get("class_path", "")).endswith("WandbLogger"):
        return Path(args["save_dir"] or "."), str(args.get("project") or "lightning_logs")
    return Path(args["save_dir"] or "."), str(args.get("name") or "")


# A run directory holding this file failed before training; ``--ckpt_path last`` skips it.
FAILED_MARK = "FAILED"


def run_identity(config: dict) -> dict:
    """What makes two calls the same run: what is trained (``model``) and the seed. The rest of a
    config (trainer, checkpoint cadence, logging, ``ckpt_path``) is how a run is carried out, and a
    resumed run may change it."""
    return {"model": config.get("model"), "seed_everything": config.get("seed_everything")}


def _frames_reached(run_dir: Path) -> int | None:
    """The largest ``loop/frames`` in a run's ``metrics.csv`` (None: no such row was written)."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    try:
        frames = [float(r["loop/frames"]) for r in csv.DictReader(path.open()) if r.get("loop/frames")]
    except (OSError, csv.Error, ValueError):
        return None
    return int(max(frames)) if frames else None


def _loop_state(path: Path) -> dict:
    from gorl.inference import read_checkpoint

    return read_checkpoint(path, mmap=True)["gorl_loop"]["state"]


def _last_of_this_run(root: Path, identity: dict | None, allow_done: bool) -> Path:
    """``--ckpt_path last``: the newest checkpoint of the newest run of this config, where a run is a
    directory under ``root`` whose ``config.yaml`` has the same :func:`run_identity`.

    Only the newest such run is looked at: an older one is a different attempt, and resuming it
    would silently drop what the newer one did. Calls that failed before training leave no
    directory (:func:`main`) and ``gorl validate`` writes no ``config.yaml``, so neither is a run here.
    """
    import yaml

    runs = []
    for cfg_path in root.glob("*/config.yaml"):
        if (cfg_path.parent / FAILED_MARK).exists():
            continue
        try:
            saved = yaml.safe_load(cfg_path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(saved, dict) and (identity is None or run_identity(saved) == identity):
            runs.append((cfg_path.stat().st_mtime, cfg_path.parent, saved))
    if not runs:
        raise CheckpointError(f"--ckpt_path last: no checkpoint under {root}/ of a run with this config (model and "
                              "seed_everything as in a run's config.yaml); pass a checkpoint file to resume another run")
    _, run_dir, saved = max(runs, key=lambda r: r[0])
    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        started = saved.get("ckpt_path")
        if started and Path(started).is_file():
            # A resumed part killed before its first checkpoint: its starting point is still the
            # newest checkpoint of this run.
            path = Path(started)
        else:
            frames = _frames_reached(run_dir)
            reached = f"it reached {frames:,} env frames" if frames is not None else "no metrics rows were written"
            raise CheckpointError(f"--ckpt_path last: the newest run of this config, {run_dir}, stopped before writing "
                                  f"a checkpoint ({reached}); nothing to resume: start it again without --ckpt_path")
    if not allow_done:
        state = _loop_state(path)
        if state.get("phase") == "done":
            raise CheckpointError(f"--ckpt_path last: the newest run of this config, {run_dir}, finished (stage "
                                  f"{state['stage']}, {int(state['frames']):,} env frames); nothing to resume: start a new "
                                  "run without --ckpt_path, or extend it with a longer --model.loop.stages and its checkpoint path")
    return path


def resolve_checkpoint(ckpt_path: str, logger_cfg, identity: dict | None = None, allow_done: bool = False) -> tuple[Path, str | None]:
    """The checkpoint file to resume from and, for ``last``, the run version it was found in.

    ``last`` takes the newest run whose config has ``identity`` (:func:`_last_of_this_run`); a
    finished one only with ``allow_done`` (``gorl validate`` scores a finished run; fit has nothing
    left to do in one).
    """
    version = None
    if ckpt_path == "last":
        dirs = _logger_dirs(logger_cfg)
        if dirs is None:
            raise CheckpointError("--ckpt_path last needs a CSV, TensorBoard or W&B logger with save_dir; pass the checkpoint file instead")
        # version_N for CSV/TensorBoard, the run id for W&B
        path = _last_of_this_run(dirs[0] / dirs[1], identity, allow_done)
        version = path.parents[1].name
    else:
        path = Path(ckpt_path)
    from gorl.inference import read_checkpoint

    read_checkpoint(path, mmap=True)
    return path, version


def _wandb_loggers(logger_cfg: Any) -> list[Namespace]:
    """The WandbLogger entries of a (not yet instantiated) ``trainer.logger`` config."""
    entries = logger_cfg if isinstance(logger_cfg, list) else [logger_cfg]
    return [e for e in entries if isinstance(e, Namespace) and str(e.get("class_path", "")).endswith("WandbLogger")]


# The run directory this call's ``gorl fit`` wrote its config.yaml into, and whether training started
# there: a call that fails before then leaves no directory behind (:func:`_discard_untrained_run`).
_THIS_CALL: dict[str, Any] = {"run_dir": None, "trained": False}


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
            _THIS_CALL["run_dir"] = Path(log_dir)

    def on_train_start(self, trainer: Trainer, pl_module: GoRLSystem) -> None:
        _THIS_CALL["trained"] = True

    def save_config(self, trainer: Trainer, pl_module: GoRLSystem, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams(self.config.clone().as_dict())


class GoRLCLI(LightningCLI):
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
            if args.get("offline") is False and not _WANDB_MODE_FROM_USER:
                os.environ.pop("WANDB_MODE", None)  # offline: false in the config means online
        video = cfg.get("video")
        self.video_settings = None
        if video:
            # Built here, not by jsonargparse: a bad size is then a ConfigError of its own, not a
            # union-type report ("Expected a <class 'bool'>").
            self.video_settings = VideoSettings() if video is True else VideoSettings(**video.as_dict())
            os.environ["MUJOCO_GL"] = _USER_GL or "egl"
            check_video_support(cfg.model.env.task, cfg.model.env.get("factory"))
        if self.subcommand == "validate" and not cfg.get("ckpt_path"):
            # Without one, validate would score the freshly initialised policy and exit 0. Checked
            # after the settings above, whose errors say more about what the call asked for.
            raise CheckpointError("gorl validate scores a trained policy: give --ckpt_path (a checkpoint file, or last "
                                  "for the newest run of this config)")

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
            path, version = resolve_checkpoint(str(cfg.ckpt_path), cfg.trainer.get("logger"), identity, allow_done=sub != "fit")
            cfg.ckpt_path = str(path)
            if cfg.get("weights_only", False) is None:
                # Checkpoints hold only tensors and plain containers (tested), so loading never needs
                # to unpickle arbitrary objects: a checkpoint from elsewhere cannot run code.
                cfg.weights_only = True
            sys.stderr.write(f"gorl: {'resuming from' if sub == 'fit' else 'loading'} {path}\n")
        super()._parse_ckpt_path()


def _config_defaults(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """The configs ``path`` builds on (its ``defaults:`` list, recursively, bases first)."""
    import yaml

    path = path.resolve()
    if path in seen:
        raise GoRLError(f"config {path}: its defaults form a cycle ({' -> '.join(str(p) for p in seen + (path,))})")
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as err:
        raise GoRLError(f"config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    bases = data.get("defaults") if isinstance(data, dict) else None
    if bases is None:
        return []
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise GoRLError(f"config {path}: defaults must be a list of config paths, got {bases!r}")
    out: list[Path] = []
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise GoRLError(f"config {path}: defaults entry {base!r} does not exist ({base_path})")
        out += _config_defaults(base_path, seen + (path,)) + [base_path]
    return out


def expand_defaults(argv: list[str]) -> list[str]:
    """``--config X`` where X has ``defaults: [A, B]`` becomes ``--config A --config B --config X
    --defaults null`` (each base expanded the same way first). The trailing ``--defaults null``
    keeps the saved ``config.yaml`` of a run self-contained: it already holds the merged values."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, step = argv[i + 1], 2
        elif arg.startswith("--config="):
            value, step = arg.split("=", 1)[1], 1
        if value is None:
            out.append(arg)
            i += 1
            continue
        bases = _config_defaults(Path(value))
        for base in bases:
            out += ["--config", str(base)]
        out += ["--config", value] + (["--defaults", "null"] if bases else [])
        i += step
    return out


def _discard_untrained_run() -> None:
    """A ``gorl fit`` that failed before training (a checkpoint that does not match, an env that
    cannot be built) leaves no run directory: its ``config.yaml`` alone would clutter ``runs/`` and
    look like a run to ``--ckpt_path last``. A directory that holds anything else (a fixed
    ``version`` reused) is kept and marked failed instead."""
    run_dir = _THIS_CALL["run_dir"]
    if run_dir is None or _THIS_CALL["trained"] or not run_dir.is_dir():
        return
    own = {"config.yaml", "hparams.yaml", "metrics.csv", "checkpoints", "distributions"}
    entries = list(run_dir.iterdir())
    if all(e.name in own and (e.is_file() or e.name == "distributions" or not any(e.iterdir())) for e in entries) and not (run_dir / "checkpoints" / "last.ckpt").exists():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        (run_dir / FAILED_MARK).write_text("this gorl fit failed before training; --ckpt_path last skips it\n")


def _finish_wandb() -> None:
    """Close a W&B run explicitly: at interpreter exit its service may already be gone, and the
    offline run would miss its final records."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


USAGE = """usage: gorl {fit,validate,bench,export} ...

GoRL: online RL with generative policies (PyTorch Lightning + TorchRL).

subcommands:
  fit        train a run from a config: gorl fit --config conf/quickstart.yaml
  validate   score a checkpoint's deterministic policy: gorl validate --config X --ckpt_path C [--video true]
  bench      methods x tasks x seeds at one frame budget, resumable: gorl bench --help
  export     a checkpoint's policy as TorchScript (plain torch.jit.load): gorl export --ckpt_path C --out policy.pt

`gorl fit --help` lists every option; `gorl fit --config X --print_config` shows a resolved config.
"""


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return
    if argv[0] not in ("fit", "validate", "bench", "export") and not argv[0].startswith("-"):
        sys.stderr.write(f"gorl: error: unknown subcommand {argv[0]!r}; valid: fit, validate, bench, export (gorl --help)\n")
        sys.exit(2)
    if argv[:1] == ["export"]:
        from gorl.inference import export_main

        export_main(argv[1:])
        return
    if argv[:1] == ["bench"]:
        from gorl.bench import main as bench

        bench(argv[1:])
        return
    if argv[0] == "fit" and not any(a in ("-c", "--config", "-h", "--help", "--print_config") or a.startswith(("--config=", "--print_config="))
                                    for a in argv[1:]):
        # The built-in defaults are the paper's full plan; started by a bare command, it would run
        # for a day or more on a CPU before anyone noticed. It is one --config away when wanted.
        sys.stderr.write(f"gorl: error: no --config: the built-in defaults are the paper's full plan (cheetah-run, {_DEFAULT_FRAMES:,} "
                         "env frames, about a day and a half on 2 CPU cores); try gorl fit --config conf/quickstart.yaml "
                         "(150k frames, a few minutes), or name the plan you mean with --config (conf/*.yaml)\n")
        sys.exit(2)
    _THIS_CALL.update(run_dir=None, trained=False)  # main() may be called more than once in a process (tests)
    try:
        argv = expand_defaults(argv)
        if args is None:
            sys.argv[1:] = argv  # LightningCLI reads sys.argv; given both, it warns
        GoRLCLI(
            GoRLSystem,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_callback=GoRLSaveConfig,
            save_config_kwargs={"overwrite": True},
            args=None if args is None else argv,
        )
        _finish_wandb()
    except GoRLError as err:
        _discard_untrained_run()
        sys.stderr.write(f"gorl: error: {err}\n")
        sys.exit(2)
    except argparse.ArgumentError as err:
        sys.stderr.write(f"gorl: error: {one_line(str(err))}\n")
        sys.exit(2)
    except ValueError as err:
        _discard_untrained_run()
        # A ConfigError raised while jsonargparse instantiates an Optional[...] group comes back
        # wrapped in its union report; anything else is a bug and keeps its traceback.
        if "Does not validate against any of the Union subtypes" not in str(err):
            raise
        sys.stderr.write(f"gorl: error: {one_line(str(err))}\n")
        sys.exit(2)
    except BaseException:
        _discard_untrained_run()
        raise
    signum = stop_signal()
    if signum is not None:
        sys.exit(128 + signum)  # the shell's convention for "ended by this signal": 130 for SIGINT, 143 for SIGTERM


if __name__ == "__main__":
    main()
