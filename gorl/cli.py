"""``gorl fit --config conf/hopper.yaml``: the Lightning CLI, with GoRL's defaults and error handling.

- configs are parsed in omegaconf mode, so ``${...}`` interpolation works inside YAML files;
- ``seed_everything`` is linked to ``model.seed`` (one seed drives torch, numpy and every env);
- W&B is offline unless you say otherwise, because machines without network must still run;
- bad input (unknown key, wrong type, unknown task, bad checkpoint path) ends with one line
  ``gorl: error: ...`` and exit code 2, before any env is built where the config allows it.
"""

from __future__ import annotations

import os
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


class GoRLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "model.seed")
        parser.add_lightning_class_args(FrameCheckpoint, "checkpoint")


def main(args: list[str] | None = None) -> None:
    try:
        GoRLCLI(
            GoRLSystem,
            parser_kwargs={"parser_mode": "omegaconf"},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except GoRLError as err:
        sys.stderr.write(f"gorl: error: {err}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
