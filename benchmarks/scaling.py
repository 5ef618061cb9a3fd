"""How the dm_control env pool scales with worker processes, and the cost model behind it.

One batch of ``--envs`` copies is stepped by ``w`` processes (this one included, ``--workers``
counts), under random actions through ``step_and_maybe_reset``, beside the raw single-env loop in
the same run. The time of one batch step is modelled as

    t(w) = (N / w) * t_phys * s(w) + c_parent + (w - 1) * c_worker

- ``t_phys``: raw physics per env step (the raw loop, measured here);
- ``s(w)``: the machine's slowdown when ``w`` processes run at once (1 while w <= cores);
- ``c_parent``: the parent's fixed cost per batch step (TorchRL's step, tensordict, buffers), from
  w = 1: ``t(1) - N * t_phys``;
- ``c_worker``: each extra worker's cost per step (its pipe round trip), from w = 2.

It stops scaling where the shard time ``(N / w) t_phys`` falls to the per-step overheads, or at the
core count, whichever comes first. The script prints the measured step times, the fitted
``c_parent`` and ``c_worker``, and the model's prediction for every ``w`` beside the measurement.

    python benchmarks/scaling.py --task hopper-stand --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gorl.envs.factory import EnvConfig, make_env


def step_seconds(task: str, envs: int, workers: int, seconds: float) -> float:
    """Median wall time of one batch step of ``envs`` copies over ``workers`` processes."""
    env = make_env(EnvConfig(task=task, num_envs=envs // workers, num_workers=workers), seed=0)
    try:
        td = env.reset()
        shape = env.action_spec.shape
        times, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            td["action"] = torch.rand(shape) * 2 - 1
            t0 = time.perf_counter()
            _, td = env.step_and_maybe_reset(td)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        env.close()


def raw_step_seconds(task: str, seconds: float) -> float:
    from throughput import raw_rate  # the same raw loop as throughput.py's yardstick (a)

    return 1.0 / raw_rate(task, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="hopper-stand")
    p.add_argument("--envs", type=int, default=64, help="env copies in all processes together")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    t_phys = raw_step_seconds(args.task, args.seconds)
    measured = {w: step_seconds(args.task, args.envs, w, args.seconds) for w in sorted(set(args.workers) | {1, 2})}
    n = args.envs
    c_parent = measured[1] - n * t_phys
    c_worker = measured[2] - (n / 2) * t_phys - c_parent  # assumes 2 <= cores (no slowdown at w = 2)
    print(f"# {args.task}, {n} envs, {cores} cores usable; raw physics {t_phys * 1e6:.0f} us per env step "
          f"({1 / t_phys:,.0f} steps/s)")
    print(f"# fitted: c_parent = {c_parent * 1e3:.2f} ms per batch step, c_worker = {c_worker * 1e3:.2f} ms per extra worker")
    print(f"{'workers':>7} {'step ms':>8} {'steps/s':>9} {'vs raw':>7} {'model ms':>9}  (model: s(w)=1; above {cores} cores it cannot hold)")
    for w, t in measured.items():
        model = (n / w) * t_phys + c_parent + (w - 1) * c_worker
        print(f"{w:>7} {t * 1e3:>8.2f} {n / t:>9,.0f} {n / t * t_phys:>7.2f} {model * 1e3:>9.2f}")


if __name__ == "__main__":
    main()
