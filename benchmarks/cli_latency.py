"""How long a ``gorl`` command takes to say something, before and after a change, in one run.

    python benchmarks/cli_latency.py --before 0792389 [--repeats 5] [--out benchmarks/logs/cli_latency/DATE.md]

Each command runs ``--repeats`` times from the given git revision (``git archive`` into a temporary
directory) and from this working tree, alternating, on ``PYTHONPATH`` (no install), and the median
wall time of each is reported with the before/after ratio. ``python -c pass`` is the floor: the
interpreter's own start. The commands are what a user meets first: help texts, and mistakes in a
config (an unknown key or task, a missing file, a wrong type).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass (floor)", ["-c", "pass"]),
    ("gorl --help", ["-m", "gorl", "--help"]),
    ("gorl export --help", ["-m", "gorl", "export", "--help"]),
    ("gorl fit (no config: refused)", ["-m", "gorl", "fit"]),
    ("missing config file", ["-m", "gorl", "fit", "--config", "missing.yaml"]),
    ("unknown key --trainer.max_epochz", ["-m", "gorl", "fit", "--config", "{root}/conf/smoke.yaml", "--trainer.max_epochz", "3"]),
    ("unknown key in a class's arguments", ["-m", "gorl", "fit", "--config", "{root}/conf/hopper.yaml", "--model.encoder.init_args.lrr", "1"]),
    ("unknown task cheetah-fly", ["-m", "gorl", "fit", "--config", "{root}/conf/smoke.yaml", "--model.env.task", "cheetah-fly"]),
    ("wrong type of a plain setting", ["-m", "gorl", "fit", "--config", "{root}/conf/smoke.yaml", "--model.env.num_envs", "abc"]),
    ("wrong type of a class's argument (full parser)", ["-m", "gorl", "fit", "--config", "{root}/conf/smoke.yaml", "--model.encoder.init_args.lr", "fast"]),
]


def _time(root: Path, args: list[str], cwd: Path) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(root), "MUJOCO_GL": "disabled", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, *[a.format(root=root) for a in args]], cwd=cwd, env=env, capture_output=True, timeout=300)
    return time.perf_counter() - start, res.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision to compare against (e.g. a commit before the change)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = p.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "gorl"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        rows = []
        for name, cmd in COMMANDS:
            times: dict[str, list[float]] = {"before": [], "after": []}
            codes = {}
            for _ in range(args.repeats):
                for which, root in (("before", before), ("after", ROOT)):
                    t, code = _time(root, cmd, cwd)
                    times[which].append(t)
                    codes[which] = code
            b, a = statistics.median(times["before"]), statistics.median(times["after"])
            rows.append(f"| {name} | {b:.2f} | {a:.2f} | {b / a:.1f}x | {codes['before']} / {codes['after']} |")
            print(rows[-1], flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join([
        f"`python benchmarks/cli_latency.py --before {args.before} --repeats {args.repeats}`, {stamp}, after = {head}{' + uncommitted changes' if dirty else ''}; "
        f"median wall seconds of {args.repeats} calls each, before and after alternating, this machine ({os.cpu_count()} cores).",
        "",
        "| command | before (s) | after (s) | before / after | exit codes |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
