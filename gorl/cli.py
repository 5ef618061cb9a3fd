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

This module stays light (no torch, no Lightning): ``gorl --help``, ``gorl export --help`` and the
checks that need only the files answer at once; :mod:`gorl.lightning_cli` holds the Lightning CLI and
is imported once a subcommand needs it. :mod:`gorl.run_dirs` decides what ``--ckpt_path last`` means.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

# MuJoCo's GL backend matters only for --video (gorl/video.py), so the CLI keeps it off otherwise,
# whatever MUJOCO_GL says: mujoco and dm_control load the backend at import, and a missing one
# (MUJOCO_GL=egl without EGL, osmesa without libOSMesa) would stop every run there, rendering or
# not. --video restores your MUJOCO_GL (default egl, headless) before dm_control is imported.
_USER_GL = os.environ.get("MUJOCO_GL")
os.environ["MUJOCO_GL"] = "disabled"
_WANDB_MODE_FROM_USER = "WANDB_MODE" in os.environ
os.environ.setdefault("WANDB_MODE", "offline")

from gorl.config_check import expand_defaults  # noqa: E402,F401  (light: no torch; also gorl.cli's public name)
from gorl.errors import GoRLError  # noqa: E402  (light: no torch)
from gorl.loop import LoopConfig  # noqa: E402  (light: dataclasses only)
from gorl.run_dirs import THIS_CALL, discard_untrained_run  # noqa: E402

# What a `gorl fit` with no config would train for (180M env frames).
_DEFAULT_FRAMES = int(sum(LoopConfig().stages))

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


def export_main(argv: list[str]) -> None:
    """``gorl export --ckpt_path C --out policy.pt`` (:meth:`gorl.inference.Policy.export`)."""
    p = argparse.ArgumentParser(prog="gorl export", description="Write a checkpoint's acting policy as TorchScript "
                                "(load: torch.jit.load(out); act: module(obs) deterministically, or module(obs, noise); obs [obs_dim] or [n, obs_dim]).")
    p.add_argument("--ckpt_path", required=True, help="a GoRL checkpoint (e.g. runs/gorl/version_0/checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="where to write the TorchScript file")
    args = p.parse_args(argv)
    from gorl.inference import load_policy  # torch: only once the arguments are known to be usable

    try:
        policy = load_policy(args.ckpt_path)
        out = policy.export(args.out)
    except GoRLError as err:
        sys.stderr.write(f"gorl: error: {err}\n")
        sys.exit(2)
    print(f"gorl: wrote {out} (stage {policy.stage} policy of {policy.task}: obs [n, {policy.obs_dim}] + noise [n, {policy.act_dim}] -> action)")


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
    THIS_CALL.update(run_dir=None, trained=False)  # main() may be called more than once in a process (tests)
    try:
        argv = expand_defaults(argv)
        from gorl.config_check import check_argv

        check_argv(argv[0], argv[1:])
    except GoRLError as err:
        sys.stderr.write(f"gorl: error: {err}\n")
        sys.exit(2)
    # Everything below needs Lightning, torch and the env stack (seconds of imports): what can be
    # checked without them was checked above.
    from gorl.lightning_cli import TRAINER_DEFAULTS, GoRLCLI, GoRLSaveConfig, finish_wandb
    from gorl.system import GoRLSystem

    GoRLCLI.user_mujoco_gl, GoRLCLI.wandb_mode_from_user = _USER_GL, _WANDB_MODE_FROM_USER
    try:
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
        finish_wandb()
    except GoRLError as err:
        discard_untrained_run()
        sys.stderr.write(f"gorl: error: {err}\n")
        sys.exit(2)
    except argparse.ArgumentError as err:
        sys.stderr.write(f"gorl: error: {one_line(str(err))}\n")
        sys.exit(2)
    except ValueError as err:
        discard_untrained_run()
        # A ConfigError raised while jsonargparse instantiates an Optional[...] group comes back
        # wrapped in its union report; anything else is a bug and keeps its traceback.
        if "Does not validate against any of the Union subtypes" not in str(err):
            raise
        sys.stderr.write(f"gorl: error: {one_line(str(err))}\n")
        sys.exit(2)
    except BaseException:
        discard_untrained_run()
        raise
    from gorl.callbacks import stop_signal

    signum = stop_signal()
    if signum is not None:
        sys.exit(128 + signum)  # the shell's convention for "ended by this signal": 130 for SIGINT, 143 for SIGTERM


if __name__ == "__main__":
    main()
