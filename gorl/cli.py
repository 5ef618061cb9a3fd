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

# Rendering is optional (videos); without a display, GLFW would warn on import. EGL is headless.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from gorl.callbacks import FrameCheckpoint  # noqa: E402
from gorl.errors import GoRLError  # noqa: E402
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
    "encoder": "gorl.encoder.EncoderModule",
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


class GoRLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "model.seed")
        parser.add_lightning_class_args(FrameCheckpoint, "checkpoint")


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
