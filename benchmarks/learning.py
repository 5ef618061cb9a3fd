"""The learning checks recorded in benchmarks/RESULTS.md, as named presets of ``gorl bench``.

Not part of the test suite (each preset takes from ~15 minutes to an hour on 2 CPU cores). Every
preset is one ``gorl bench`` call; finished runs are skipped and interrupted ones resume, so a
preset can be stopped and started again. Extra arguments go to ``gorl bench`` (e.g. ``--jobs 1``,
``--out elsewhere``, ``--budget 5e6``). Presets write to ``runs/bench`` unless they say otherwise, and
``results.*`` there describe the latest call.

The study presets (``study``, ``study-hopper``, ``boundary``) are longer than one sitting of a 2-core
machine. They keep each finished run's record under ``benchmarks/logs/<preset>/`` (commit it) and
restore from there what ``runs/`` lacks, so on a fresh clone the same command continues the matrix.
Before a session ends, ``python benchmarks/learning.py study --snapshot`` also archives the
unfinished runs with their last checkpoint (``git add -f`` is not needed: .gitignore lets those
through).

    python benchmarks/learning.py ppo       # Gaussian PPO (CleanRL's schedule), cheetah-run, 1M frames, 3 seeds
    python benchmarks/learning.py matrix    # GoRL (flow, diffusion) vs PPO, FPO, DPPO on
                                            # cheetah-run and hopper-stand, 1M frames, 2 seeds
    python benchmarks/learning.py critic    # the CPU PPO preset with a 2x256 vs a 2x64 critic,
                                            # cheetah-run, 1M frames, 6 seeds
    python benchmarks/learning.py recipe    # PPO vs GoRL (flow, diffusion) with the authors' current
                                            # recipe, cheetah-run and hopper-stand, 1M frames, 3 seeds
    python benchmarks/learning.py schedule  # the cheap CPU PPO preset at 6M frames, 2 seeds: which PPO
                                            # schedule learns most per CPU-minute (against the study's PPO)
    python benchmarks/learning.py study     # the same three on CleanRL's PPO schedule past PPO's
                                            # plateau: cheetah-run, 3M frames (2M + 0.5M + 0.5M), 3 seeds
    python benchmarks/learning.py study-hopper   # hopper-stand, 2M frames, 2 seeds
    python benchmarks/learning.py paper-hopper --stop-after 8   # GPU: the authors' HopperStand recipes at 180M
                                            # frames, GoRL-FM / PPO / GoRL-diffusion, seeds 0-2, resumable
    python benchmarks/learning.py boundary  # reset fresh / warm_value / warm, and 500 / 1,500 / 5,000
                                            # decoder steps, cheetah-run, 1.5M frames, seed 0
"""

from __future__ import annotations

import sys

from gorl.bench import main as bench

# Stage 0 long enough for PPO to plateau (two thirds of the budget), then two short GoRL stages.
_PLATEAU_SPLIT = ["--stages", "0.6666666", "0.1666667", "0.1666667"]
_STUDY = ["--methods", "ppo-cleanrl", "gorl-flow-cleanrl", "gorl-diffusion-cleanrl", *_PLATEAU_SPLIT, "--jobs", "2"]
_BOUNDARY = ["--tasks", "cheetah-run", "--seeds", "0", "--budget", "1.5e6", *_PLATEAU_SPLIT, "--jobs", "2"]

_PAPER_HOPPER = ["gorl-fm=conf/hopper_fm.yaml", "ppo=conf/baselines/ppo_hopper.yaml", "gorl-diffusion=conf/hopper.yaml"]
# What the paper-hopper runs test: the authors' HopperStand returns at 180M frames, read off their
# figure by eye (arXiv 2512.02581, the DMC learning curves; about ±25).
_PAPER_HOPPER_REFERENCE = ["--reference", "gorl-fm=745", "ppo=280", "gorl-diffusion=880",
                           "--reference-source", "arXiv 2512.02581, HopperStand learning curves at 180M frames"]

PRESETS: dict[str, list[str] | list[list[str]]] = {
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
    # Which PPO schedule learns most per CPU-minute: the cheap CPU preset (64 envs x 32 steps) run
    # for about the wall time the study's CleanRL-schedule PPO takes for 3M frames.
    "schedule": ["--methods", "ppo", "--tasks", "cheetah-run", "--seeds", "0", "1", "--budget", "6e6", "--eval-every", "2e5",
                 "--jobs", "2", "--out", "runs/schedule", "--archive", "benchmarks/logs/schedule"],
    # Does GoRL beat Gaussian PPO where PPO has plateaued? CleanRL's schedule for every method.
    "study": [*_STUDY, "--tasks", "cheetah-run", "--seeds", "0", "1", "2", "--budget", "3e6", "--out", "runs/study",
              "--archive", "benchmarks/logs/study"],
    "study-hopper": [*_STUDY, "--tasks", "hopper-stand", "--seeds", "0", "1", "--budget", "2e6", "--out", "runs/study_hopper",
                     "--archive", "benchmarks/logs/study_hopper"],
    # The paper's claim at the paper's budget (GPU only): the authors' HopperStand recipes, whole
    # (180M encoder-phase frames, their refits and evaluation schedule), on MJX on CUDA in their
    # rollout shape (2,048 envs x 16 unrolls of 30 steps per update), seed 0 of each method first.
    # Runs outlive a device command: pass --stop-after MINUTES (benchmarks/gpu_paper_runs.sh does) and
    # the same command on a later machine continues from the archive.
    "paper-hopper": ["--recipes", *_PAPER_HOPPER, "--layers", "conf/recipes/paper_gpu.yaml", "conf/recipes/paper_gpu_mjx.yaml",
                     "--seeds", "0", "1", "2", "--seed-major", "--out", "runs/paper_hopper", "--archive", "benchmarks/logs/paper_hopper",
                     *_PAPER_HOPPER_REFERENCE, "--note", "The authors' rollout shape: 2,048 MJX envs x 16 unrolls of 30 steps per update."],
    # The same from 16,384 envs x 2 unrolls (a deviation from the authors' shape, stated in
    # conf/recipes/paper_gpu_wide.yaml): label its results as such.
    "paper-hopper-wide": ["--recipes", *_PAPER_HOPPER, "--layers", "conf/recipes/paper_gpu.yaml", "conf/recipes/paper_gpu_mjx.yaml",
                          "conf/recipes/paper_gpu_wide.yaml", "--seeds", "0", "1", "2", "--seed-major", "--out", "runs/paper_hopper_wide",
                          "--archive", "benchmarks/logs/paper_hopper_wide", *_PAPER_HOPPER_REFERENCE,
                          "--note", "**A deviation from the authors' setup:** each update's 983,040 frames come from 16,384 MJX envs x 2 "
                                    "unrolls of 30 steps, not their 2,048 x 16 (conf/recipes/paper_gpu_wide.yaml says what that changes)."],
    # The stage boundary, one seed each: reset fresh / warm_value / warm, then refits of 500 and
    # 5,000 decoder steps against the preset's 1,500 (the fresh run of the first call).
    "boundary": [
        ["--methods", "gorl-flow-cleanrl", "gorl-flow-cleanrl-warm-value", "gorl-flow-cleanrl-warm", *_BOUNDARY, "--out", "runs/boundary",
         "--archive", "benchmarks/logs/boundary"],
        ["--methods", "gorl-flow-cleanrl", *_BOUNDARY, "--out", "runs/boundary_steps500",
         "--archive", "benchmarks/logs/boundary_steps500", "--override", "--model.refinement.steps", "500"],
        ["--methods", "gorl-flow-cleanrl", *_BOUNDARY, "--out", "runs/boundary_steps5000",
         "--archive", "benchmarks/logs/boundary_steps5000", "--override", "--model.refinement.steps", "5000"],
    ],
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in PRESETS:
        raise SystemExit(f"usage: python benchmarks/learning.py {{{','.join(PRESETS)}}} [gorl bench arguments]")
    # argparse keeps the last of repeated options, so the user's extra arguments win.
    preset = PRESETS[argv[0]]
    calls = preset if isinstance(preset[0], list) else [preset]
    for call in calls:
        if "--override" in call:  # --override takes the rest of the line: user arguments go before it
            i = call.index("--override")
            bench(call[:i] + argv[1:] + call[i:])
        else:
            bench(call + argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
