"""Learning checks: final deterministic evaluation return at a fixed env-frame budget.

Each run is a real ``gorl fit`` in a subprocess (the same path a user takes), logged under
``--out``; finished runs are skipped, so the script resumes where it stopped. Prints a markdown
table (mean +- std over seeds, wall time) and writes ``results.json`` next to the runs.

    # issue 2: Gaussian PPO on cheetah-run, 1M frames, 3 seeds
    python benchmarks/learning.py --methods ppo --tasks cheetah-run --budget 1e6 --seeds 0 1 2
    # GoRL (flow, diffusion) vs Gaussian PPO in the same harness
    python benchmarks/learning.py --methods ppo gorl-flow gorl-diffusion --tasks cheetah-run hopper-stand --budget 1e6 --seeds 0 1

Methods share the CPU PPO settings of ``conf/encoder/ppo_cpu.yaml``. GoRL splits the budget into
stages 40% / 30% / 30% of encoder-phase frames; the frames it spends collecting decoder data
(``--decoder-data`` of the budget per refinement) come on top and are reported separately.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def method_args(method: str, task: str, budget: float, decoder_data: float) -> list[str]:
    base = ["--config", str(CONF / "ppo_cheetah.yaml"), "--model.env", str(CONF / "env" / f"{task}.yaml")]
    if method == "ppo":
        return base + ["--model.loop.stages", f"[{int(budget)}]"]
    decoder = {"gorl-flow": "flow", "gorl-diffusion": "diffusion"}[method]
    stages = [int(budget * f) for f in (0.4, 0.3, 0.3)]
    return base + [
        "--model.decoder", str(CONF / "decoder" / f"{decoder}.yaml"),
        "--model.encoder.prior_reg", "kl", "--model.encoder.prior_coef", "[5e-4, 1e-3]",
        "--model.loop.stages", json.dumps(stages),
        "--model.refinement.transitions", str(int(budget * decoder_data)),
        "--model.refinement.epochs", "30", "--model.refinement.patience", "5", "--model.refinement.batch_size", "4096",
    ]


def final_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.csv"
    done = run_dir / "done.json"
    if not path.exists() or not done.exists():
        return None
    rows = list(csv.DictReader(path.open()))
    evals = [(float(r["loop/frames"]), float(r["eval/return"])) for r in rows if r.get("eval/return") and r.get("loop/frames")]
    collect = max((float(r["decoder/dataset_size"]) for r in rows if r.get("decoder/dataset_size")), default=0.0)
    return {"final_return": evals[-1][1], "curve": evals, "wall_s": json.loads(done.read_text())["wall_s"], "decoder_pairs": collect}


def run(method: str, task: str, seed: int, args: argparse.Namespace) -> dict:
    name, version = f"{method}_{task}", f"seed{seed}"
    run_dir = Path(args.out) / name / version
    got = final_metrics(run_dir)
    if got is not None:
        return got
    cmd = [sys.executable, "-m", "gorl", "fit", *method_args(method, task, args.budget, args.decoder_data),
           "--seed_everything", str(seed), "--model.loop.eval_every", str(args.eval_every),
           "--trainer.enable_progress_bar", "false",
           "--trainer.logger.init_args.save_dir", str(args.out), "--trainer.logger.init_args.name", name,
           "--trainer.logger.init_args.version", version]
    print(f"[learning] {method} {task} seed {seed} ...", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    (run_dir / "done.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    return final_metrics(run_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["ppo"], choices=["ppo", "gorl-flow", "gorl-diffusion"])
    p.add_argument("--tasks", nargs="+", default=["cheetah-run"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=1e6, help="encoder-phase env frames per run")
    p.add_argument("--decoder-data", type=float, default=0.1, help="decoder data per refinement, as a fraction of the budget")
    p.add_argument("--eval-every", type=float, default=1e5)
    p.add_argument("--out", default="runs/learning")
    args = p.parse_args()
    table = {}
    for task in args.tasks:
        for method in args.methods:
            table[(method, task)] = [run(method, task, s, args) for s in args.seeds]
    results = {f"{m}|{t}": v for (m, t), v in table.items()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nbudget {args.budget:.0f} encoder-phase frames per run; seeds {args.seeds}")
    print("| task | method | final eval return (mean ± std) | per seed | wall time per run |")
    print("|---|---|---|---|---|")
    for (method, task), runs in table.items():
        finals = [r["final_return"] for r in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        wall = statistics.mean(r["wall_s"] for r in runs)
        per = ", ".join(f"{f:.0f}" for f in finals)
        print(f"| {task} | {method} | {statistics.mean(finals):.0f} ± {std:.0f} | {per} | {wall / 60:.1f} min |")


if __name__ == "__main__":
    main()
