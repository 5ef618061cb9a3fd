"""The device check for a lent GPU machine (one GPU, many cores): one run, one results file.

What it measures, in this order (each step's output and result go to ``--out``, and are printed):

1. the CUDA test subset (``tests/test_cuda.py``: evaluation with a CUDA policy over CPU envs, the
   smoke fit on CUDA under ``32-true``, ``bf16-mixed`` and ``16-mixed``);
2. env frames/s of the paper-shaped GoRL hopper-stand loop (``conf/hopper.yaml`` +
   ``conf/recipes/paper_gpu.yaml``: 2048 dm_control envs, networks on the GPU) at each
   ``--workers`` count, from ``perf/collect_fps`` and ``perf/fps`` of a short real ``gorl fit``
   (one rollout of 2048 x 30 per update, so each count takes seconds);
3. the update's time for one full 983,040-frame rollout (16 rollouts of 2048 x 30, the authors'
   update), with the largest worker count: loop time less collection time;
4. the projected wall time of the full 180M-frame plan from 2 and 3 (decoder fits excluded; the
   log says so), labelled as a projection.

    python benchmarks/gpu_check.py                       # the lent machine: ~5-8 minutes
    python benchmarks/gpu_check.py --quick --workers 1 2 # a CPU dry run of the same path, tiny sizes

It never fails silently: a step that fails is written down with its error and the rest still run.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN_FRAMES = 180e6  # the paper recipes' 60M + 60M + 30M + 30M encoder frames
UPDATE_FRAMES = 983_040


def _gorl(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "gorl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return res.returncode, (res.stdout + res.stderr)[-2000:]


def _rates(run_dir: Path) -> tuple[float, float]:
    """Median (loop frames/s, collection frames/s) over the iterations after the first (warm-up)."""
    (path,) = run_dir.glob("runs/gorl/version_*/metrics.csv")
    rows = [r for r in csv.DictReader(path.open()) if r.get("perf/fps")]
    rows = rows[1:] or rows
    return statistics.median(float(r["perf/fps"]) for r in rows), statistics.median(float(r["perf/collect_fps"]) for r in rows)


def loop_rates(workers: int, envs: int, rollouts_per_update: int, iterations: int, accelerator: str, timeout: float) -> tuple[float, float]:
    per_worker = max(1, envs // workers)
    frames = per_worker * workers * 30 * rollouts_per_update
    with tempfile.TemporaryDirectory() as tmp:
        code, tail = _gorl([
            "fit", "--config", str(ROOT / "conf" / "hopper.yaml"), "--config", str(ROOT / "conf" / "recipes" / "paper_gpu.yaml"),
            "--trainer.accelerator", accelerator, "--trainer.enable_progress_bar", "false",
            "--model.env.num_workers", str(workers), "--model.env.num_envs", str(per_worker), "--model.env.eval_envs", "2",
            "--model.encoder.rollouts_per_update", str(rollouts_per_update),
            "--model.loop.stages", f"[{frames * iterations}]", "--model.loop.evals_per_stage", "null",
            "--model.loop.eval_every", str(10 * frames * iterations), "--model.loop.eval_max_steps", "5",
            "--checkpoint.every_frames", "1e12",
        ], Path(tmp), timeout)
        if code != 0:
            raise RuntimeError(f"gorl fit exited {code}: {tail}")
        return _rates(Path(tmp))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 15])
    p.add_argument("--envs", type=int, default=2048, help="env copies in all (the authors' 2048)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every step (on a CPU, too)")
    p.add_argument("--out", default="gpu_check.txt")
    args = p.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    accelerator = "cuda" if cuda else "cpu"
    envs, iterations, rpu = (64, 2, 2) if args.quick else (args.envs, 3, 16)
    out = open(args.out, "w")

    def say(line: str) -> None:
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    say(f"# gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; "
        f"{torch.cuda.get_device_name() if cuda else 'no CUDA'}; {os.cpu_count()} cores; quick={args.quick}")

    # 1. the CUDA test subset
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
    say(f"1. CUDA tests: exit {res.returncode}: {summary} ({time.perf_counter() - t0:.0f} s)")
    if res.returncode not in (0, 5):
        say(res.stdout[-3000:])

    # 2. env frames/s by worker count (one rollout per update: collection dominates these rows)
    fps = {}
    for w in args.workers:
        try:
            loop, collect = loop_rates(w, envs, 1, iterations + 1, accelerator, timeout=300)
            fps[w] = collect
            say(f"2. paper-shaped hopper-stand loop, {w:>2} worker processes x {max(1, envs // w)} envs: "
                f"collection {collect:,.0f} frames/s, loop {loop:,.0f} frames/s")
        except Exception as err:  # noqa: BLE001  (written down, the other steps still run)
            say(f"2. {w} workers: FAILED: {err}")

    # 3. one full 983,040-frame update (16 rollouts per update) at the largest worker count
    w = max(args.workers)
    try:
        loop, collect = loop_rates(w, envs, rpu, 2, accelerator, timeout=420)
        frames = max(1, envs // w) * w * 30 * rpu
        update_s = frames / loop - frames / collect
        say(f"3. one update of {frames:,} frames ({rpu} rollouts of {envs} x 30) with {w} workers: "
            f"{update_s:.1f} s of update, {frames / collect:.1f} s of collection")
        iters = PLAN_FRAMES / frames
        label = " (--quick: not the paper's sizes, meaningless as a projection)" if args.quick else ""
        say(f"4. PROJECTED{label} wall time of the 180M-frame plan: {iters:.0f} updates x {frames / loop:.1f} s = "
            f"{iters * frames / loop / 3600:.1f} h (encoder phases only; the 3 decoder fits and decoder-data "
            "collection come on top)")
    except Exception as err:  # noqa: BLE001
        say(f"3. FAILED: {err}")
    out.close()
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
