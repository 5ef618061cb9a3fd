"""Run directories: which earlier run ``--ckpt_path last`` resumes, and what a failed call leaves.

A *run* is a directory ``save_dir/name/<version>`` holding the ``config.yaml`` that ``gorl fit``
wrote. Two calls are the same run when they train the same thing with the same seed
(:func:`run_identity`); ``last`` resumes the newest checkpoint of the newest such run that has not
finished, and says so in one line when there is nothing to resume. Kept apart from the Lightning CLI
(:mod:`gorl.lightning_cli`) so that these rules are importable, and testable, without Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gorl.errors import CheckpointError


def logger_dirs(logger_cfg) -> tuple[Path, str] | None:
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
    """What makes two calls the same run: what is trained (``model``, less ``model.speed``) and the
    seed. The rest of a config (trainer, checkpoint cadence, logging, ``ckpt_path``, and the speed
    settings, which change no maths) is how a run is carried out, and a resumed run may change it."""
    model = config.get("model")
    if isinstance(model, dict):
        model = {k: v for k, v in model.items() if k != "speed"}
    return {"model": model, "seed_everything": config.get("seed_everything")}


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


def loop_state(path: Path) -> dict:
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
        state = loop_state(path)
        if state.get("phase") == "done":
            raise CheckpointError(f"--ckpt_path last: the newest run of this config, {run_dir}, finished (stage "
                                  f"{state['stage']}, {int(state['frames']):,} env frames); nothing to resume: start a new "
                                  "run without --ckpt_path, or extend it with a longer --model.loop.stages and its checkpoint path")
    return path


def resolve_checkpoint(ckpt_path: str, logger_cfg, identity: dict | None = None, allow_done: bool = False,
                       plan_stages: int | None = None) -> tuple[Path, str | None]:
    """The checkpoint file to resume from and, for ``last``, the run version it was found in.

    ``last`` takes the newest run whose config has ``identity`` (:func:`_last_of_this_run`); a
    finished one only with ``allow_done`` (``gorl validate`` scores a finished run; fit has nothing
    left to do in one). A checkpoint named by its path is refused when it finished a plan of
    ``plan_stages`` stages or more: resuming it would train nothing and still exit 0. With a longer
    plan it is an extension, which the loop supports.
    """
    version = None
    if ckpt_path == "last":
        dirs = logger_dirs(logger_cfg)
        if dirs is None:
            raise CheckpointError("--ckpt_path last needs a CSV, TensorBoard or W&B logger with save_dir; pass the checkpoint file instead")
        # version_N for CSV/TensorBoard, the run id for W&B
        path = _last_of_this_run(dirs[0] / dirs[1], identity, allow_done)
        version = path.parents[1].name
    else:
        path = Path(ckpt_path)
    from gorl.inference import read_checkpoint

    state = read_checkpoint(path, mmap=True)["gorl_loop"]["state"]
    if plan_stages is not None and state.get("phase") == "done" and int(state["stage"]) + 1 >= plan_stages:
        raise CheckpointError(f"checkpoint {path} is the end of a finished run (stage {state['stage']} of a {int(state['stage']) + 1}-stage "
                              f"plan, {int(state['frames']):,} env frames); nothing to train: start a new run without --ckpt_path, "
                              "or extend it with more stages (--model.loop.stages)")
    return path, version


# The run directory this call's ``gorl fit`` wrote its config.yaml into, and whether training started
# there: a call that fails before then leaves no directory behind (:func:`_discard_untrained_run`).
THIS_CALL: dict[str, Any] = {"run_dir": None, "trained": False}


def discard_untrained_run() -> None:
    """A ``gorl fit`` that failed before training (a checkpoint that does not match, an env that
    cannot be built) leaves no run directory: its ``config.yaml`` alone would clutter ``runs/`` and
    look like a run to ``--ckpt_path last``. A directory that holds anything else (a fixed
    ``version`` reused) is kept and marked failed instead."""
    run_dir = THIS_CALL["run_dir"]
    if run_dir is None or THIS_CALL["trained"] or not run_dir.is_dir():
        return
    own = {"config.yaml", "hparams.yaml", "metrics.csv", "checkpoints", "distributions"}
    entries = list(run_dir.iterdir())
    if all(e.name in own and (e.is_file() or e.name == "distributions" or not any(e.iterdir())) for e in entries) and not (run_dir / "checkpoints" / "last.ckpt").exists():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        (run_dir / FAILED_MARK).write_text("this gorl fit failed before training; --ckpt_path last skips it\n")
