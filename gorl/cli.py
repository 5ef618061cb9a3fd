"""``gorl fit --config conf/hopper.yaml``: the Lightning CLI, with GoRL's defaults and error handling.

- configs are parsed in omegaconf mode, so ``${...}`` interpolation works inside YAML files;
- ``seed_everything`` is linked to ``model.seed`` (one seed drives torch, numpy and every env);
- W&B is offline unless you say otherwise, because machines without network must still run;
- bad input (unknown key, wrong type, unknown task, bad checkpoint path) ends with one line
  ``gorl: error: ...`` and exit code 2, before any env is built where the config allows it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

# Rendering is optional (videos); without a display, GLFW would warn on import. EGL is headless.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

import torch  # noqa: E402

from gorl.callbacks import FrameCheckpoint  # noqa: E402
from gorl.errors import CheckpointError, GoRLError  # noqa: E402
from gorl.system import GoRLSystem  # noqa: E402

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
    "encoder": "gorl.encoders.EncoderModule",
}


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
    last = key.rsplit(".", 1)[-1]
    if last in _CHOICES and ("has no attribute" in detail or "either not accessible" in detail or "No module" in detail):
        detail += f" (valid: {_CHOICES[last]}, or any subclass by import path)"
    return f"{key}: {detail}" if key else detail


def _logger_dirs(logger_cfg) -> tuple[Path, str] | None:
    """(save_dir, name) of a CSV/TensorBoard-style logger config, else None."""
    if logger_cfg is None or isinstance(logger_cfg, (bool, list)):
        return None
    args = logger_cfg.get("init_args", {}) or {}
    if "save_dir" not in args:
        return None
    return Path(args["save_dir"] or "."), str(args.get("name") or "")


def resolve_checkpoint(ckpt_path: str, logger_cfg) -> tuple[Path, str | None]:
    """The checkpoint file to resume from and, for ``last``, the run version it was found in."""
    version = None
    if ckpt_path == "last":
        dirs = _logger_dirs(logger_cfg)
        if dirs is None:
            raise CheckpointError("--ckpt_path last needs a CSV or TensorBoard logger with save_dir; pass the checkpoint file instead")
        root = dirs[0] / dirs[1]
        found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(f"--ckpt_path last: no checkpoint under {root}/version_*/checkpoints/")
        path, version = found[-1], found[-1].parents[1].name
    else:
        path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint from elsewhere must not be able to run code; mmap: cheap check.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user-facing problem)
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "gorl_loop" not in state:
        raise CheckpointError(f"{path} is not a GoRL checkpoint")
    return path, version


class GoRLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "model.seed")
        parser.add_lightning_class_args(FrameCheckpoint, "checkpoint")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built (Lightning's own hook loads it right here).

        ``last`` picks the newest ``last.ckpt`` of this config's logger directory. The resumed run
        logs into a new version directory: Lightning's CSV logger would delete an existing
        ``metrics.csv``, and nothing of a previous run may be lost.
        """
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else None
        if cfg is not None and cfg.get("ckpt_path"):
            path, version = resolve_checkpoint(str(cfg.ckpt_path), cfg.trainer.get("logger"))
            cfg.ckpt_path = str(path)
            sys.stderr.write(f"gorl: resuming from {path}\n")
        super()._parse_ckpt_path()


def main(args: list[str] | None = None) -> None:
    try:
        GoRLCLI(
            GoRLSystem,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except GoRLError as err:
        sys.stderr.write(f"gorl: error: {err}\n")
        sys.exit(2)
    except argparse.ArgumentError as err:
        sys.stderr.write(f"gorl: error: {one_line(str(err))}\n")
        sys.exit(2)
    except ValueError as err:
        # A ConfigError raised while jsonargparse instantiates an Optional[...] group comes back
        # wrapped in its union report; anything else is a bug and keeps its traceback.
        if "Does not validate against any of the Union subtypes" not in str(err):
            raise
        sys.stderr.write(f"gorl: error: {one_line(str(err))}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
