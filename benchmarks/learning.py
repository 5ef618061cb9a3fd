"""The learning checks recorded in benchmarks/RESULTS.md, as named presets of ``gorl bench``.

Not part of the test suite (each preset takes from ~15 minutes to an hour on 2 CPU cores). Every
preset is one ``gorl bench`` call; finished runs are skipped and interrupted ones resume, so a
preset can be stopped and started again. Extra arguments go to ``gorl bench`` (e.g. ``--jobs 1``,
``--out elsewhere``, ``--budget 5e6``). Presets write to ``runs/bench`` unless they say otherwise, and
``results.*`` there describe the latest call.

    python benchmarks/learning.py ppo       # Gaussian PPO (CleanRL's schedule), cheetah-run, 1M frames, 3 seeds
    python benchmarks/learning.py matrix    # GoRL (flow, diffusion) vs PPO, FPO, DPPO on
                                            # cheetah-run and hopper-stand, 1M frames, 2 seeds
    python benchmarks/learning.py critic    # the CPU PPO preset with a 2x256 vs a 2x64 critic,
                                            # cheetah-run, 1M frames, 6 seeds
    python benchmarks/learning.py recipe    # PPO vs GoRL (flow, diffusion) with the authors' current
                                            # recipe, cheetah-run and hopper-stand, 1M frames, 3 seeds
"""

from __future__ import annotations

import sys

from gorl.bench import main as bench

PRESETS: dict[str, list[str]] = {
    "ppo": ["--methods", "ppo-cleanrl", "--tasks", "cheetah-run", "--seeds", "0", "1", "2", "--budget", "1e6", "--jobs", "2",
            "--out", "runs/bench"],
    "critic": ["--methods", "ppo", "ppo-c64=conf/encoder/ppo_cpu_critic64.yaml", "--tasks", "cheetah-run",
               "--seeds", "0", "1", "2", "3", "4", "5", "--budget", "1e6", "--jobs", "2", "--out", "runs/bench"],
    "matrix": ["--methods", "ppo", "gorl-flow", "gorl-diffusion", "fpo", "dppo", "--tasks", "cheetah-run", "hopper-stand",
               "--seeds", "0", "1", "--budget", "1e6", "--jobs", "2", "--out", "runs/bench"],
    # The 1M-frame matrix again with the authors' current recipe (decoders fitted in steps, the
    # diffusion warm start and pairwise term, post-update observation statistics, stage-boundary
    # evaluations), 3 seeds; its own output directory, so the older runs stay comparable.
    "recipe": ["--methods", "ppo", "gorl-flow", "gorl-diffusion", "--tasks", "cheetah-run", "hopper-stand",
               "--seeds", "0", "1", "2", "--budget", "1e6", "--jobs", "2", "--out", "runs/bench_recipe"],
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in PRESETS:
        raise SystemExit(f"usage: python benchmarks/learning.py {{{','.join(PRESETS)}}} [gorl bench arguments]")
    # argparse keeps the last of repeated options, so the user's extra arguments win.
    bench(PRESETS[argv[0]] + argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
