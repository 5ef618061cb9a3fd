"""``gorl bench``: methods x tasks x seeds at one env-frame budget, one results file, table, figure.

Every run is a real ``gorl fit`` in its own process (the path a user takes), logged under
``--out/<method>_<task>/seed<k>``. A finished run leaves ``done.json`` and is skipped next time; an
unfinished one resumes from its ``checkpoints/last.ckpt`` (its earlier metrics are kept as
``metrics.part<n>.csv`` and joined at the checkpoint's frame), so an interrupted matrix loses at most
the frames since each run's last checkpoint. ``--jobs N`` runs N at a time (each with one
torch thread). ``--archive DIR`` keeps a copy of each finished run's record (config, log, metrics,
``done.json``: a few hundred kB) in a directory meant to be committed, and restores from it the runs
that ``--out`` lacks, so a matrix longer than one machine's session continues on a fresh clone;
``--snapshot`` also copies unfinished runs with their last checkpoint and exits. At the end it writes

- ``results.json``: every run's final deterministic evaluation return, curve, wall time (summed over
  the parts of a resumed run);
- ``results.md``: final return mean ± std per method and task (the table for RESULTS.md);
- ``figure.png``: one panel per task, one line per method, mean ± std over seeds vs env frames.

    gorl bench --methods ppo gorl-flow gorl-diffusion --tasks cheetah-run hopper-stand \\
               --seeds 0 1 --budget 1e6 --jobs 2

Methods (``--methods``) are named recipes below; ``name=path/to/encoder.yaml`` adds your own
single-stage method from an encoder config. GoRL methods split the budget over stages
(40 / 30 / 30 % of encoder-phase frames, or ``--stages``); the frames spent collecting decoder data
(``--decoder-data`` of the budget per refinement) come on top and are reported separately.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gorl.analysis.io import resumed_frames, run_rows

CONF = Path(__file__).resolve().parents[1] / "conf"
GORL_STAGES = (0.4, 0.3, 0.3)


@dataclass
class Method:
    """A recipe: config overrides on top of the base config, and how the budget splits into stages."""

    args: list[str]
    stages: tuple[float, ...] = (1.0,)
    extra: list[str] = field(default_factory=list)
    # A whole recipe instead (--recipes): config files applied in order, the recipe's own plan,
    # refits and evaluations unchanged (no --base, --budget, --stages or --eval-every).
    recipe: list[str] | None = None

    @property
    def refines(self) -> bool:
        return len(self.stages) > 1


def _enc(name: str) -> list[str]:
    return ["--model.encoder", str(CONF / "encoder" / f"{name}.yaml")]


def _dec(name: str) -> list[str]:
    return ["--model.decoder", str(CONF / "decoder" / f"{name}.yaml")]


# The CPU comparison: every PPO-based method shares the CPU PPO settings (conf/encoder/ppo_cpu.yaml).
# GoRL adds the authors' prior regulariser (their code's l2 form and beta) and a CPU decoder
# (conf/decoder/*_cpu.yaml, refits of conf/refinement/cpu.yaml through bench.yaml). GoRL-diffusion
# follows their current diffusion recipe on top (configs/methods/gorl_diffusion.toml @8a0209c): warm
# start from the finished stage's best agent, the pairwise term, clip 0.15 after stage 0 and the
# learning rate cut as theirs (1e-3 -> 3e-4 -> 1e-4 is x0.3 in stage 1 and x0.1 after; here of
# ppo_cpu's 3e-4). GoRL-flow restarts the encoder fresh each stage, as their flow recipe does.
# FPO and DPPO use the paper's baseline settings (conf/encoder/fpo.yaml, dppo.yaml); SAC methods use
# conf/encoder/sac.yaml.
_GORL_PRIOR = ["--model.encoder.prior_reg", "l2", "--model.encoder.prior_coef", "[5e-4, 1e-3]"]
_DIFFUSION_RECIPE = ["--model.encoder.reset", "[fresh, warm]", "--model.encoder.lr", "[3e-4, 9e-5, 3e-5]",
                     "--model.encoder.clip_epsilon", "[0.2, 0.15]", "--model.refinement.pairwise_weight", "1e-3"]
METHODS: dict[str, Method] = {
    "ppo": Method(_enc("ppo_cpu") + _dec("identity")),
    "gorl-flow": Method(_enc("ppo_cpu") + _GORL_PRIOR + _dec("flow_cpu"), GORL_STAGES),
    "gorl-diffusion": Method(_enc("ppo_cpu") + _GORL_PRIOR + _dec("diffusion_cpu") + _DIFFUSION_RECIPE, GORL_STAGES),
    "ppo-cleanrl": Method(_enc("ppo_cleanrl") + _dec("identity") + ["--model.env.num_envs", "8"]),
    "ppo-paper": Method(_enc("ppo_baseline") + _dec("identity")),
    "fpo": Method(_enc("fpo") + _dec("identity")),
    "dppo": Method(_enc("dppo") + _dec("identity")),
    # The study of benchmarks/learning.py (`study`, `boundary`): the same methods on CleanRL's PPO
    # schedule (conf/encoder/ppo_cleanrl.yaml, 8 envs x 256 steps), which reaches a plateau on
    # cheetah-run within a few million frames on this CPU; the reset variants ablate the boundary.
    "gorl-flow-cleanrl": Method(_enc("ppo_cleanrl") + _GORL_PRIOR + _dec("flow_cpu") + ["--model.env.num_envs", "8"], GORL_STAGES),
    "gorl-diffusion-cleanrl": Method(_enc("ppo_cleanrl") + _GORL_PRIOR + _dec("diffusion_cpu") + _DIFFUSION_RECIPE + ["--model.env.num_envs", "8"], GORL_STAGES),
    "gorl-flow-cleanrl-warm-value": Method(_enc("ppo_cleanrl") + _GORL_PRIOR + _dec("flow_cpu") + ["--model.env.num_envs", "8", "--model.encoder.reset", "[fresh, warm_value]"], GORL_STAGES),
    "gorl-flow-cleanrl-warm": Method(_enc("ppo_cleanrl") + _GORL_PRIOR + _dec("flow_cpu") + ["--model.env.num_envs", "8", "--model.encoder.reset", "[fresh, warm]"], GORL_STAGES),
    "sac": Method(_enc("sac") + _dec("identity") + ["--model.encoder.prior_reg", "none", "--model.env.num_envs", "16"]),
    "gorl-sac": Method(_enc("sac") + _dec("flow_cpu") + ["--model.env.num_envs", "16"], GORL_STAGES),
}


def recipe_from_arg(arg: str, layers: list[str]) -> tuple[str, Method]:
    """``gorl-fm=conf/hopper_fm.yaml``: a named whole recipe, with ``layers`` applied on top."""
    name, sep, path = arg.partition("=")
    if not sep or not name:
        raise SystemExit(f"gorl bench: error: --recipes takes NAME=CONFIG, got {arg!r}")
    for config in [path, *layers]:
        if not Path(config).is_file():
            raise SystemExit(f"gorl bench: error: recipe {name!r}: no such config {config}")
    return name, Method([], recipe=[path, *layers])


def recipe_stages(paths: list[str]) -> list[float]:
    """A recipe's encoder-phase plan (``model.loop.stages``), read without torch."""
    from gorl.config_check import expand_defaults, resolved_value
    from gorl.loop import LoopConfig

    stages = resolved_value(expand_defaults([a for path in paths for a in ("--config", path)]), "model.loop.stages")
    return [float(s) for s in stages] if isinstance(stages, list) else [float(s) for s in LoopConfig().stages]


def _stop_report(args: argparse.Namespace, methods: dict[str, Method], cells: list[tuple[str, str, int]], out: Path,
                 why: str | None = None) -> None:
    """The matrix stopped before its end: at the --stop-after limit (exit 3), or because a run failed
    (``why``, exit 1). Either way every run's state is archived (an unfinished run with its last
    checkpoint), and ``status.md`` and ``results.md`` say where each run stands."""
    out.mkdir(parents=True, exist_ok=True)
    if args.archive:
        for name, task, seed in cells:
            rel = Path(f"{name}_{task}") / f"seed{seed}"
            archive_run(out / rel, Path(args.archive) / rel, run_signature(methods[name], task, seed, args), checkpoint=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (f"Matrix stopped at the --stop-after limit ({args.stop_after:g} min)" if why is None else f"Matrix stopped: {why}")
    md = f"{head}, {stamp}:\n\n" + status_table(cells, out)
    (out / "status.md").write_text(md)
    if args.archive:
        Path(args.archive).mkdir(parents=True, exist_ok=True)
        (Path(args.archive) / "status.md").write_text(md)
    write_results(args, methods, cells, out)
    print("\n" + md, flush=True)
    if why is not None:
        raise SystemExit(f"gorl bench: error: {why}" + (f"; every run's state is archived in {args.archive}" if args.archive else ""))
    print("[bench] stopped: unfinished runs resume from their checkpoints when the same command runs again"
          + (f" (archived in {args.archive})" if args.archive else ""), flush=True)
    sys.exit(3)


def method_from_arg(arg: str) -> tuple[str, Method]:
    """``ppo`` (a named recipe) or ``mine=path/to/encoder.yaml`` (a single-stage method)."""
    if "=" in arg:
        name, path = arg.split("=", 1)
        if not Path(path).is_file():
            raise SystemExit(f"gorl bench: error: method {name!r}: no such encoder config {path}")
        return name, Method(["--model.encoder", path] + _dec("identity"))
    if arg not in METHODS:
        raise SystemExit(f"gorl bench: error: unknown method {arg!r}; valid: {', '.join(METHODS)}, or name=encoder.yaml")
    return arg, METHODS[arg]


def run_args(method: Method, task: str, budget: float, decoder_data: float, eval_every: float,
             split: tuple[float, ...] | None = None) -> list[str]:
    """The ``gorl fit`` arguments of one run; ``split`` replaces a refining method's stage fractions."""
    if method.recipe is not None:
        return [a for path in method.recipe for a in ("--config", path)]
    fractions = split if (split and method.refines) else method.stages
    stages = [max(1, int(budget * f)) for f in fractions]
    args = ["--model.env", str(CONF / "env" / f"{task}.yaml"), *method.args, *method.extra,
            "--model.loop.stages", json.dumps(stages), "--model.loop.eval_every", str(eval_every)]
    if method.refines:
        args += ["--model.refinement.transitions", str(max(2, int(budget * decoder_data)))]
    return args


def stage_records(rows: list[dict]) -> list[dict]:
    """Per stage: initial (right after the boundary, before any update), best and final evaluation
    return, and the refit that ended the stage before it (steps, seconds, best validation loss)."""
    stages: dict[int, dict] = {}
    for r in rows:
        if not r.get("loop/stage"):
            continue
        rec = stages.setdefault(int(float(r["loop/stage"])), {"initial": None, "evals": []})
        if r.get("stage/initial_return"):
            rec["initial"] = float(r["stage/initial_return"])
            for key, column in (("fit_steps", "stage/fit_steps"), ("best_val_loss", "stage/best_val_loss"),
                                ("fit_seconds", "perf/fit_seconds"), ("fit_seconds", "stage/fit_seconds")):  # the latter: runs of 2026-12-02
                if r.get(column):
                    rec[key] = float(r[column])
        if r.get("eval/return"):
            rec["evals"].append(float(r["eval/return"]))
    out = []
    for stage, rec in sorted(stages.items()):
        evals = rec.pop("evals")
        out.append({"stage": stage, **rec, "best": max(evals) if evals else None, "final": evals[-1] if evals else None})
    return out


def eval_curve(rows: list[dict]) -> list[tuple[float, float]]:
    """``(frames, eval/return)`` of a run's evaluations; the frames are ``eval/frames``, at which the
    evaluated agent was frozen (lane evaluations are recorded later), where a row has it."""
    return [(float(r.get("eval/frames") or r["loop/frames"]), float(r["eval/return"])) for r in rows
            if r.get("eval/return") and (r.get("eval/frames") or r.get("loop/frames"))]


def read_run(run_dir: Path) -> dict | None:
    """The finished run's results, or None if it has not finished."""
    done, metrics = run_dir / "done.json", run_dir / "metrics.csv"
    if not done.exists() or not metrics.exists():
        return None
    rows = run_rows(run_dir / "metrics.csv")
    curve = eval_curve(rows)
    collect = max((float(r["loop/collect_frames"]) for r in rows if r.get("loop/collect_frames")), default=0.0)
    return {"final_return": curve[-1][1], "curve": curve, "decoder_data_frames": collect, "stages": stage_records(rows),
            **json.loads(done.read_text())}


# prepare_resume's answer for a run whose last checkpoint is the end of its plan.
FINISHED = Path("<finished>")


def prepare_resume(run_dir: Path) -> Path | None:
    """An unfinished run's last checkpoint, with its metrics so far set aside (the CSV logger would
    delete them); None if there is nothing to resume; :data:`FINISHED` if the checkpoint is the end
    of the run's plan (stopped after training and before ``done.json``: ``gorl fit`` would refuse to
    resume it, and there is nothing to train)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "done.json").exists() or not ckpt.is_file():
        return None
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["gorl_loop"]["state"]
        frames, iteration = float(state["frames"]), int(state["iteration"])
    except Exception as err:  # a checkpoint cut short by the kill: start the run again
        print(f"[bench] {run_dir}: unreadable last.ckpt ({type(err).__name__}), starting over", flush=True)
        return None
    if state.get("phase") == "done":
        return FINISHED  # stopped after its plan's end and before done.json: nothing left to train
    resumed = json.loads((run_dir / "resumed.json").read_text()) if (run_dir / "resumed.json").exists() else []
    if (run_dir / "metrics.csv").exists():
        (run_dir / "metrics.csv").rename(run_dir / f"metrics.part{len(resumed)}.csv")
        (run_dir / "resumed.json").write_text(json.dumps(resumed + [{"frames": frames, "iteration": iteration}]))
    return ckpt


# Each part of a run (its first start and every resumption) opens gorl.log with a "# <UTC time>: <cmd>"
# line and closes it with a "# part ended after N s" line, or, for a part stopped before it could (a
# kill), "# part stopped ... N s" written by --snapshot from its last checkpoint's time. A run's wall
# time is the sum over its parts, so a matrix that spans sessions still reports what each run cost.
_PART_START = re.compile(r"^# (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC: ")
_PART_END = re.compile(r"^# part (?:ended|stopped)\b.* (\d+) s\b")


def part_seconds(log_path: Path) -> tuple[list[float], int]:
    """The recorded wall seconds of each part in ``gorl.log``, and how many parts it started (a part
    with no end line, e.g. killed and never snapshotted, has no time on record)."""
    if not log_path.is_file():
        return [], 0
    lines = log_path.read_text(errors="replace").splitlines()
    ends = [float(m.group(1)) for line in lines if (m := _PART_END.match(line))]
    return ends, sum(1 for line in lines if _PART_START.match(line))


def _close_stopped_part(run_dir: Path, ckpt: Path) -> None:
    """Record how long the last part of an unfinished run ran before its last checkpoint, unless the
    part already has its end line."""
    log = run_dir / "gorl.log"
    if not log.is_file():
        return
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if _PART_START.match(line)]
    if not starts or any(_PART_END.match(line) for line in lines[starts[-1]:]):
        return
    began = calendar.timegm(time.strptime(_PART_START.match(lines[starts[-1]]).group(1), "%Y-%m-%d %H:%M:%S"))
    with log.open("a") as f:
        f.write(f"\n# part stopped; its last checkpoint was written after {max(0.0, ckpt.stat().st_mtime - began):.0f} s\n")


# What a run's record is: enough for read_run (the results) and prepare_resume (continuing it).
_RECORD = ("config.yaml", "gorl.log", "done.json", "resumed.json", "metrics.csv")


# Overrides that change how fast a run goes, not what it trains: left out of a run's signature, so a
# run may change them between commands (gorl.run_dirs.run_identity leaves model.speed out likewise).
# Evaluation lanes (gorl/eval_lanes.py) evaluate as many fresh episodes with other seeds: the curve's
# noise, not the training, and each stage's first and last evaluations are the same either way.
_SPEED_KEYS = ("--model.speed.", "--model.loop.eval_lanes")


def identity_overrides(override: list[str]) -> list[str]:
    """``override`` without the speed settings (``--key value`` and ``--key=value`` forms)."""
    kept, skip = [], False
    for a in override:
        if skip:
            skip = False
            continue
        if a.startswith(_SPEED_KEYS):
            skip = "=" not in a
            continue
        kept.append(a)
    return kept


def run_signature(method: Method, task: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The arguments that decide what a run computes, with this checkout's path taken out, so that
    an archived run is only ever continued or reported under the settings it was made with."""
    root = str(CONF.parent) + os.sep
    split = tuple(args.stages) if args.stages else None
    run = [*run_args(method, task, args.budget, args.decoder_data, args.eval_every, split), *identity_overrides(args.override),
           "--seed_everything", str(seed)]
    if method.recipe is not None:
        run = [str(Path(a).resolve()) if a.endswith((".yaml", ".yml")) else a for a in run]
        return [a.replace(root, "") for a in run]
    return [a.replace(root, "") for a in [str(Path(args.base).resolve()), *run]]


def archive_run(run_dir: Path, dest: Path, signature: list[str], checkpoint: bool = False) -> bool:
    """Copy ``run_dir``'s record into ``dest`` (replacing what was there) with the run's signature;
    with ``checkpoint`` an unfinished run's ``checkpoints/last.ckpt`` too. False if there was nothing
    worth keeping."""
    import shutil

    finished = (run_dir / "done.json").exists()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not finished and not (checkpoint and ckpt.is_file()):
        return False
    kept = dest / "checkpoints" / "last.ckpt"
    if not finished and not _readable(ckpt) and _readable(kept):
        # A checkpoint cut short by a kill must not replace the good one archived before it: the run
        # goes on from that one, here too (its metrics past it are cut there when it resumes).
        print(f"[bench] {run_dir}: its last.ckpt is unreadable; it goes on from the archive's previous checkpoint", flush=True)
        shutil.copy2(kept, ckpt)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if not finished:
        _close_stopped_part(run_dir, ckpt)
    for path in [run_dir / n for n in _RECORD] + sorted(run_dir.glob("metrics.part*.csv")):
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    if not finished:
        (dest / "checkpoints").mkdir()
        shutil.copy2(ckpt, dest / "checkpoints" / "last.ckpt")
    (dest / "signature.json").write_text(json.dumps(signature, indent=0))
    return True


def _readable(ckpt: Path) -> bool:
    """Whether ``ckpt`` is a whole GoRL checkpoint (its loop state loads)."""
    if not ckpt.is_file():
        return False
    import torch

    try:
        torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["gorl_loop"]["state"]["frames"]
    except Exception:  # noqa: BLE001  (truncated, foreign, damaged: not whole)
        return False
    return True


def restore_run(src: Path, run_dir: Path, signature: list[str]) -> str | None:
    """Bring an archived run back into ``run_dir`` unless this machine already has it (finished, or
    with a checkpoint of its own, which is the newer state); returns what was restored. An archived
    run made with other settings is refused with one line, not silently mixed into this matrix."""
    import shutil

    if not src.is_dir() or (run_dir / "done.json").exists() or (run_dir / "checkpoints" / "last.ckpt").is_file():
        return None
    stored = json.loads((src / "signature.json").read_text()) if (src / "signature.json").is_file() else None
    if stored != signature:
        diff = sorted(set(map(str, stored or [])) ^ set(signature))[:4]
        raise SystemExit(f"gorl bench: error: {src} was made with other settings (differing: {' '.join(diff) or 'no signature.json'}); "
                         "give --archive another directory or remove that run")
    finished = (src / "done.json").exists()
    if not finished and not (src / "checkpoints" / "last.ckpt").is_file():
        return None
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run that never reached its first checkpoint: nothing of it survives a restart anyway
    shutil.copytree(src, run_dir)
    return "finished" if finished else "unfinished, from its last checkpoint"


def source_commit() -> str:
    """The commit this checkout runs: ``GORL_COMMIT`` where the checkout has no git history (a copy
    of the working tree on a lent machine), else ``git rev-parse``, ``+dirty`` with local changes."""
    if os.environ.get("GORL_COMMIT"):
        return os.environ["GORL_COMMIT"]
    root = CONF.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "gorl", "conf"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def run_one(name: str, method: Method, task: str, seed: int, args: argparse.Namespace) -> dict:
    group, version = f"{name}_{task}", f"seed{seed}"
    run_dir = Path(args.out) / group / version
    got = read_run(run_dir)
    if got is not None:
        print(f"[bench] {name} {task} seed {seed}: done already ({got['final_return']:.1f})", flush=True)
        return got
    if args.deadline is not None and time.time() >= args.deadline:
        print(f"[bench] {name} {task} seed {seed}: not started (--stop-after reached)", flush=True)
        return {"status": "not started"}
    base = [] if method.recipe is not None else ["--config", str(args.base)]
    cmd = [sys.executable, "-m", "gorl", "fit", *base,
           *run_args(method, task, args.budget, args.decoder_data, args.eval_every, tuple(args.stages) if args.stages else None), *args.override,
           "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
           "--trainer.logger.save_dir", str(args.out), "--trainer.logger.name", group, "--trainer.logger.version", version]
    env = dict(os.environ)
    if args.jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # N runs on N cores, not N x all cores
    ckpt = prepare_resume(run_dir)
    if ckpt is FINISHED:
        print(f"[bench] {name} {task} seed {seed}: its last checkpoint is the end of its plan; recording it as finished", flush=True)
        return _record_done(name, method, task, seed, args, run_dir, cmd)
    if ckpt is not None:
        cmd += ["--ckpt_path", str(ckpt)]
    print(f"[bench] {name} {task} seed {seed}: " + (f"resuming from {ckpt}" if ckpt else "running"), flush=True)
    t0 = time.perf_counter()
    # The run's own output ([gorl] lines, the per-stage table) stays beside its metrics, every part
    # of a resumed run appended.
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "gorl.log"
    with log_path.open("a") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {' '.join(cmd)}\n# commit {source_commit()}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        returncode = _wait_or_stop(proc, args.deadline, args.stop_grace)
        if returncode is None:
            log.write(f"\n# part stopped at the --stop-after limit after {time.perf_counter() - t0:.0f} s\n")
        else:
            log.write(f"\n# part ended after {time.perf_counter() - t0:.0f} s\n")
    if returncode is None:
        print(f"[bench] {name} {task} seed {seed}: stopped at the --stop-after limit; it resumes from its checkpoint next time", flush=True)
        return {"status": "stopped"}
    if returncode != 0:
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        tail = [line for line in lines if line.startswith("gorl: error")][-1:] or lines[-1:] or ["(no output)"]
        raise RuntimeError(f"{name} {task} seed {seed} failed ({tail[0]}); its log: {log_path}")
    return _record_done(name, method, task, seed, args, run_dir, cmd)


def _record_done(name: str, method: Method, task: str, seed: int, args: argparse.Namespace, run_dir: Path, cmd: list[str]) -> dict:
    """Write a finished run's ``done.json`` (and archive its record), and return its results."""
    resumed = resumed_frames(run_dir)
    parts, started = part_seconds(run_dir / "gorl.log")
    # wall_s: every part of the run on record; wall_parts_missing counts parts with no time (killed
    # and never snapshotted), which the results table marks.
    (run_dir / "done.json").write_text(json.dumps({"wall_s": sum(parts), "wall_parts_s": parts, "wall_parts_missing": started - len(parts),
                                                   "command": cmd, "resumed_from": resumed}))
    if args.archive:
        archive_run(run_dir, Path(args.archive) / f"{name}_{task}" / f"seed{seed}", run_signature(method, task, seed, args))
    got = read_run(run_dir)
    print(f"[bench] {name} {task} seed {seed}: final eval/return {got['final_return']:.1f} in {got['wall_s'] / 60:.1f} min", flush=True)
    return got


def _wait_or_stop(proc: subprocess.Popen, deadline: float | None, grace: float) -> int | None:
    """The run's exit code; or, if ``deadline`` (epoch seconds) comes first, None after stopping it
    as Ctrl-C would: SIGTERM makes ``gorl fit`` write a checkpoint and its closing lines and exit
    143 (gorl.callbacks). A run that has not exited ``grace`` seconds later is killed; its last
    periodic checkpoint is then what it resumes from."""
    import signal

    try:
        return proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return None


def _rows_so_far(run_dir: Path) -> list[dict]:
    """An unfinished run's metric rows, every part joined."""
    parts = sorted(run_dir.glob("metrics.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    if (run_dir / "metrics.csv").is_file():
        return run_rows(run_dir / "metrics.csv")
    # the newest part was stopped before its first row: the rows so far are the earlier parts'
    return [r for part in parts for r in csv.DictReader(part.open(newline=""))]


def run_status(run_dir: Path, rows: list[dict] | None = None) -> dict:
    """Where a run stands: finished (final return), or unfinished with its frames and last
    evaluation so far, or not started; for the status table of a stopped matrix."""
    got = read_run(run_dir)
    if got is not None:
        return {"status": "finished", "frames": got["curve"][-1][0] if got["curve"] else None, "return": got["final_return"],
                "wall_s": got["wall_s"]}
    rows = _rows_so_far(run_dir) if rows is None else rows
    if not rows:
        return {"status": "not started"}
    frames = max((float(r["loop/frames"]) for r in rows if r.get("loop/frames")), default=None)
    evals = [float(r["eval/return"]) for r in rows if r.get("eval/return")]
    stage = max((int(float(r["loop/stage"])) for r in rows if r.get("loop/stage")), default=None)
    seconds, _ = part_seconds(run_dir / "gorl.log")
    ckpt = (run_dir / "checkpoints" / "last.ckpt").is_file()
    return {"status": "unfinished" + ("" if ckpt else " (no checkpoint)"), "frames": frames, "return": evals[-1] if evals else None,
            "stage": stage, "wall_s": sum(seconds)}


def status_table(cells: list[tuple[str, str, int]], out: Path) -> str:
    lines = ["| method | task | seed | status | env frames | last eval return | stage | wall time so far |", "|---|---|---|---|---|---|---|---|"]
    for name, task, seed in cells:
        st = run_status(out / f"{name}_{task}" / f"seed{seed}")
        frames = f"{st['frames']:,.0f}" if st.get("frames") is not None else "-"
        ret = _fmt(st["return"]) if st.get("return") is not None else "-"
        wall = f"{st['wall_s'] / 60:.1f} min" if st.get("wall_s") else "-"
        lines.append(f"| {name} | {task} | {seed} | {st['status']} | {frames} | {ret} | {st.get('stage', '-') if st.get('stage') is not None else '-'} | {wall} |")
    return "\n".join(lines) + "\n"


def recipe_task(paths: list[str]) -> str:
    """The env task a recipe's configs name (read as the CLI's quick checks read them, no torch)."""
    from gorl.config_check import expand_defaults, resolved_value

    task = resolved_value(expand_defaults([a for path in paths for a in ("--config", path)]), "model.env.task")
    if not isinstance(task, str):
        raise SystemExit(f"gorl bench: error: recipe {' + '.join(paths)} names no model.env.task")
    return task


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def table(results: dict[tuple[str, str], list[dict]], budget: float, references: dict[str, float] | None = None) -> str:
    """Per method and task: the final return, mean ± std over the finished seeds; with
    ``references``, the authors' number beside it."""
    ref = bool(references)
    lines = [f"Final deterministic evaluation return at {budget:,.0f} encoder-phase env frames (mean ± std over seeds).",
             "", "| task | method | final return | per seed | decoder-data frames per run | wall time per run |" + (" authors |" if ref else ""),
             "|---|---|---|---|---|---|" + ("---|" if ref else "")]
    for (method, task), runs in results.items():
        finals = [r["final_return"] for r in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        wall = statistics.mean(r["wall_s"] for r in runs)
        data = statistics.mean(r["decoder_data_frames"] for r in runs)
        per = ", ".join(_fmt(f) for f in finals)
        mark = "†" if any(r.get("wall_parts_missing", 1 if r.get("resumed_from") else 0) for r in runs) else ""
        authors = (f" {_fmt(references[method])} |" if method in references else " - |") if ref else ""
        lines.append(f"| {task} | {method} | {_fmt(statistics.mean(finals))} ± {_fmt(std)} | {per} | {data:,.0f} | {wall / 60:.1f} min{mark} |{authors}")
    if "†" in "".join(lines):
        lines += ["", "† some runs were resumed from a checkpoint after a part whose time was not recorded; their wall time leaves that part out."]
    return "\n".join(lines) + "\n"


def window_records(curve: list[tuple[float, float]], bounds: list[float]) -> list[dict]:
    """A single-stage run's evaluations cut at the GoRL stage boundaries ``bounds`` (env frames):
    per window its best and final return, so that PPO's last frames sit beside GoRL's later
    stages in one table. No ``initial``: PPO has no boundary to evaluate across."""
    # A GoRL stage ends with the first iteration at or past its boundary, and evaluates there; so a
    # window ends with the first evaluation at or past the boundary too.
    windows: list[list[float]] = [[] for _ in range(len(bounds) + 1)]
    k = 0
    for frames, ret in curve:
        windows[k].append(ret)
        if k < len(bounds) and frames >= bounds[k]:
            k += 1
    return [{"initial": None, "best": max(w) if w else None, "final": w[-1] if w else None} for w in windows]


def _window_name(k: int, bounds: list[float]) -> str:
    mega = [f"{b / 1e6:.3g}M" for b in bounds]
    if k == 0:
        return f"frames 0–{mega[0]}"
    return f"frames {mega[-1]}–end" if k == len(bounds) else f"frames {mega[k - 1]}–{mega[k]}"


def stage_table(results: dict[tuple[str, str], list[dict]], bounds: list[float] | None = None) -> str:
    """Per method, task and stage: initial / best / final evaluation return, mean over seeds (per
    seed in brackets), and the mean decoder fit that preceded the stage. With ``bounds`` (the
    GoRL methods' stage boundaries in env frames) single-stage methods get a row per frame window
    between them, for the comparison the study is about: what PPO gains over the frames GoRL
    spends on its later stages."""
    lines = ["| task | method | stage | initial | best | final | decoder fit before the stage |", "|---|---|---|---|---|---|---|"]

    def cell(values: list) -> str:
        got = [v for v in values if v is not None]
        if not got:
            return "-"
        per = "" if len(got) == 1 else " (" + ", ".join(_fmt(v) for v in got) + ")"
        return _fmt(statistics.mean(got)) + per

    for (method, task), runs in results.items():
        n_stages = max(len(r.get("stages", [])) for r in runs)
        windows = n_stages < 2 and bool(bounds)
        if windows:
            per_run = [window_records(r["curve"], bounds) for r in runs]
            n_stages = len(bounds) + 1
        elif n_stages < 2:
            continue
        else:
            per_run = [r.get("stages", []) for r in runs]
        for k in range(n_stages):
            recs = [stages[k] for stages in per_run if len(stages) > k]
            steps = [rec.get("fit_steps") for rec in recs if rec.get("fit_steps") is not None]
            secs = [rec.get("fit_seconds") for rec in recs if rec.get("fit_seconds") is not None]
            losses = [rec.get("best_val_loss") for rec in recs if rec.get("best_val_loss") is not None]
            fit = f"{statistics.mean(steps):,.0f} steps, {statistics.mean(secs):.0f} s" if steps and secs else "-"
            if losses and fit != "-":
                fit += f", best val loss {statistics.mean(losses):.4g}"
            lines.append(f"| {task} | {method} | {_window_name(k, bounds) if windows else k} | {cell([r.get('initial') for r in recs])} | {cell([r.get('best') for r in recs])} | "
                         f"{cell([r.get('final') for r in recs])} | {fit} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gorl bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=None, help=f"named: {', '.join(METHODS)}; or name=encoder.yaml (default: ppo gorl-flow gorl-diffusion)")
    p.add_argument("--recipes", nargs="+", default=None, metavar="NAME=CONFIG",
                   help="whole recipes instead of --methods, e.g. gorl-fm=conf/hopper_fm.yaml: each run is that config's own plan "
                        "(stages, refits, evaluations, task); --tasks, --budget, --stages, --eval-every and --base do not apply")
    p.add_argument("--layers", nargs="+", default=[], metavar="CONFIG",
                   help="configs applied on top of every recipe, e.g. conf/recipes/paper_gpu.yaml conf/recipes/paper_gpu_mjx.yaml")
    p.add_argument("--seed-major", action="store_true", help="run seed 0 of every method first, then seed 1, ... (default: method by method)")
    p.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly after this many minutes: running runs checkpoint (SIGTERM) and stop, the rest wait; with --archive "
                        "every run's state is archived; exit code 3 while runs are unfinished (run the same command again to continue)")
    p.add_argument("--stop-grace", type=float, default=180.0, help="seconds a stopped run may take to write its checkpoint before it is killed")
    p.add_argument("--tasks", nargs="+", default=["cheetah-run"], help="conf/env/<task>.yaml names")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", type=float, default=1e6, help="encoder-phase env frames per run")
    p.add_argument("--decoder-data", type=float, default=0.1, help="decoder data per refinement, fraction of the budget")
    p.add_argument("--stages", type=float, nargs="+", default=None,
                   help=f"GoRL methods: the budget's split over stages (default {' '.join(map(str, GORL_STAGES))}); single-stage methods ignore it")
    p.add_argument("--eval-every", type=float, default=1e5)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process and one torch thread each)")
    p.add_argument("--base", default=str(CONF / "bench.yaml"), help="base config every run starts from")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--archive", default=None,
                   help="directory (to commit) that keeps each finished run's record; runs --out lacks are restored from it first")
    p.add_argument("--snapshot", action="store_true",
                   help="with --archive: copy every run's current state (finished, or unfinished with its last checkpoint) there, then exit")
    p.add_argument("--reference", nargs="+", default=[], metavar="NAME=RETURN",
                   help="a method's published final return (e.g. read off the paper's figure): tabled beside its result, drawn beside its curve")
    p.add_argument("--reference-source", default="", help="where --reference comes from, said under the table")
    p.add_argument("--note", default="", help="a line under results.md's headline (e.g. a deviation from the authors' setup)")
    p.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="further gorl fit arguments for every run (put last)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv = argv
    args.deadline = None if args.stop_after is None else time.time() + 60.0 * args.stop_after
    if args.recipes is not None:
        if args.methods is not None:
            raise SystemExit("gorl bench: error: give --methods or --recipes, not both")
        methods = dict(recipe_from_arg(r, args.layers) for r in args.recipes)
        task_of = {name: recipe_task(m.recipe) for name, m in methods.items()}
        cells = [(name, task_of[name], seed) for name in methods for seed in args.seeds]
        return _run_matrix(args, methods, cells)
    if args.layers:
        raise SystemExit("gorl bench: error: --layers applies to --recipes")
    methods = dict(method_from_arg(m) for m in (args.methods or ["ppo", "gorl-flow", "gorl-diffusion"]))
    if args.stages is not None and (len(args.stages) < 2 or any(f <= 0 for f in args.stages) or abs(sum(args.stages) - 1.0) > 1e-6):
        raise SystemExit(f"gorl bench: error: --stages needs >= 2 positive fractions summing to 1, got {args.stages}")
    for task in args.tasks:
        if not (CONF / "env" / f"{task}.yaml").is_file():
            valid = sorted(p.stem for p in (CONF / "env").glob("*.yaml"))
            raise SystemExit(f"gorl bench: error: unknown task {task!r}; valid: {', '.join(valid)}")
    cells = [(name, task, seed) for task in args.tasks for name in methods for seed in args.seeds]
    _run_matrix(args, methods, cells)


def _run_matrix(args: argparse.Namespace, methods: dict[str, Method], cells: list[tuple[str, str, int]]) -> None:
    if args.seed_major:
        cells = sorted(cells, key=lambda c: (c[2], [n for n in methods].index(c[0])))
    if args.snapshot and not args.archive:
        raise SystemExit("gorl bench: error: --snapshot needs --archive DIR")
    if args.archive:
        for name, task, seed in cells:
            rel, signature = Path(f"{name}_{task}") / f"seed{seed}", run_signature(methods[name], task, seed, args)
            if args.snapshot:
                if archive_run(Path(args.out) / rel, Path(args.archive) / rel, signature, checkpoint=True):
                    print(f"[bench] {name} {task} seed {seed}: archived to {Path(args.archive) / rel}", flush=True)
            elif (what := restore_run(Path(args.archive) / rel, Path(args.out) / rel, signature)):
                print(f"[bench] {name} {task} seed {seed}: restored from {args.archive} ({what})", flush=True)
        if args.snapshot:
            return
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {cell: pool.submit(run_one, cell[0], methods[cell[0]], cell[1], cell[2], args) for cell in cells}
        try:
            outcomes = {cell: f.result() for cell, f in futures.items()}
        except RuntimeError as err:
            failure = str(err)
        else:
            failure = None
    out = Path(args.out)
    if failure is not None:
        _stop_report(args, methods, cells, out, why=failure)
    if any(got.get("status") in ("stopped", "not started") for got in outcomes.values()):
        _stop_report(args, methods, cells, out)
    write_results(args, methods, cells, out)


def _plan(args: argparse.Namespace, methods: dict[str, Method]) -> tuple[float, list[float]]:
    """The matrix's encoder-phase budget and its GoRL stage boundaries (env frames)."""
    if any(m.recipe is not None for m in methods.values()):
        plans = {name: recipe_stages(m.recipe) for name, m in methods.items()}
        longest = max(plans.values(), key=len)
        return max(sum(p) for p in plans.values()), [sum(longest[:k]) for k in range(1, len(longest))]
    split = tuple(args.stages) if args.stages else GORL_STAGES
    refining = any(m.refines for m in methods.values())
    return args.budget, ([args.budget * sum(split[:k]) for k in range(1, len(split))] if refining else [])


def write_results(args: argparse.Namespace, methods: dict[str, Method], cells: list[tuple[str, str, int]], out: Path) -> None:
    """``results.json``, ``results.md`` and ``figure.png`` of the matrix as it stands: the finished
    runs' final returns, every run's row (finished, or unfinished with its frames and last evaluation
    so far), the per-stage table, the curves. Written at the end and at every stop, into ``--out`` and
    the archive, so a matrix that spans machines always has its page."""
    runs = {cell: run_results(out / f"{cell[0]}_{cell[1]}" / f"seed{cell[2]}") for cell in cells}
    budget, bounds = _plan(args, methods)
    references = dict(parse_reference(r) for r in args.reference)
    finished: dict[tuple[str, str], list[dict]] = {}
    started: dict[tuple[str, str], list[dict]] = {}
    for (name, task, _seed), got in runs.items():
        if got["status"] == "finished":
            finished.setdefault((name, task), []).append(got)
        if got.get("curve") or got.get("stages"):
            started.setdefault((name, task), []).append(got)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"budget": args.budget, "seeds": args.seeds, "command": args.argv, "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "runs": [{"method": n, "task": t, "seed": s, **runs[(n, t, s)]} for n, t, s in cells]}, indent=1))
    head = (f"`gorl bench {' '.join(args.argv)}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{sum(len(v) for v in finished.values())} of {len(cells)} runs finished.\n\n")
    if args.note:
        head += args.note + "\n\n"
    md = head + (table(finished, budget, references) if finished else "No run has finished yet.\n")
    md += "\nEvery run (the final return is the last deterministic evaluation; an unfinished run shows its last one so far):\n\n"
    md += runs_table(cells, runs)
    stages = stage_table(started, bounds)
    if stages:
        md += ("\nPer stage (initial: evaluated right after the refit and reset, before any encoder update; single-stage methods "
               "over the same frame windows; unfinished runs so far):\n\n" + stages)
    if references:
        md += ("\nauthors: their figure's return at the same budget, read off by eye (±25), as this preset gives it"
               + (f" ({args.reference_source})" if args.reference_source else "") + ".\n")
    targets = [out] + ([Path(args.archive)] if args.archive else [])
    for where in targets:
        where.mkdir(parents=True, exist_ok=True)
        (where / "results.md").write_text(md)
    print("\n" + md)
    # The figure reads each run's metrics.csv (with the parts before it); a resumed part stopped
    # before its first row has none yet, and its curve waits for the next stop.
    drawn = [(out / f"{n}_{t}" / f"seed{s}", n) for n, t, s in cells
             if runs[(n, t, s)].get("curve") and (out / f"{n}_{t}" / f"seed{s}" / "metrics.csv").is_file()]
    if not drawn:
        return
    from gorl.analysis.plots import plot_runs

    try:
        fig = plot_runs(drawn, boundaries=bounds, references=references)
        for where in targets:
            fig.savefig(where / "figure.png", dpi=120)
    except Exception as err:  # noqa: BLE001  (a figure must never cost the stop its archive or exit code)
        print(f"[bench] figure.png not drawn: {type(err).__name__}: {err}", flush=True)
        return
    print(f"[bench] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'figure.png'}")


def parse_reference(arg: str) -> tuple[str, float]:
    """``ppo=280``: a method's published return, drawn beside its curve and tabled beside its result."""
    name, sep, value = arg.partition("=")
    try:
        if not (sep and name):
            raise ValueError(arg)
        return name, float(value)
    except ValueError:
        raise SystemExit(f"gorl bench: error: --reference takes NAME=RETURN, got {arg!r}") from None


def run_results(run_dir: Path) -> dict:
    """A run's results: :func:`read_run`'s for a finished run (``status`` finished); for an unfinished
    one its curve, stages, frames and wall time so far; ``status`` not started where it has no rows."""
    got = read_run(run_dir)
    parts, commits = part_dates(run_dir / "gorl.log")
    if got is not None:
        return {"status": "finished", **got, "parts": parts, "commits": commits}
    rows = _rows_so_far(run_dir)
    st = run_status(run_dir, rows)
    if not rows:
        return {**st, "parts": parts, "commits": commits}
    return {**st, "curve": eval_curve(rows), "stages": stage_records(rows), "parts": parts, "commits": commits}


_COMMIT = re.compile(r"^# commit (\S+)")


def part_dates(log_path: Path) -> tuple[list[str], list[str]]:
    """The UTC start of each part of a run and the commits its parts ran (``gorl.log``)."""
    if not log_path.is_file():
        return [], []
    lines = log_path.read_text(errors="replace").splitlines()
    dates = [m.group(1) for line in lines if (m := _PART_START.match(line))]
    commits = list(dict.fromkeys(m.group(1) for line in lines if (m := _COMMIT.match(line))))
    return dates, commits


def runs_table(cells: list[tuple[str, str, int]], runs: dict[tuple[str, str, int], dict]) -> str:
    """One row per run: where it stands, its return, its wall time (summed over its parts: GPU time
    on a one-GPU machine), when its parts started and which commits ran them."""
    lines = ["| method | task | seed | status | env frames | final return | wall time | parts (first, last start, UTC) | commits |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, task, seed in cells:
        got = runs[(name, task, seed)]
        curve = got.get("curve") or []
        frames = got.get("frames") if got.get("frames") is not None else (curve[-1][0] if curve else None)
        ret = got.get("final_return", got.get("return"))
        status = got["status"]
        if status != "finished" and got.get("stage") is not None:
            status += f", stage {got['stage']}"
        dates = got.get("parts", [])
        when = ", ".join(d[:16] for d in (dates[:1] + dates[1:][-1:]))
        cols = [name, task, str(seed), status, "-" if frames is None else f"{frames:,.0f}", "-" if ret is None else _fmt(ret),
                f"{got['wall_s'] / 60:.1f} min" if got.get("wall_s") else "-", f"{len(dates)}: {when}" if dates else "-",
                ", ".join(got.get("commits", [])) or "-"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
