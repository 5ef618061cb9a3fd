"""How many refit steps a decoder needs to learn a multimodal, state-conditioned action distribution.

The target of ``tests/test_refit_converges.py`` (three modes on the unit circle whose angle moves
with a context observation, four distractor observation dims, 28,800 training pairs: the quick
start's refit data size). Each shipped CPU decoder (``conf/decoder/{flow,diffusion}_cpu.yaml``) is
fitted with the CPU refit preset (``conf/refinement/cpu.yaml``), and the share of samples within
0.15 of a mode centre (and the smallest mode's share) is printed along the fit, then for the
best-validation weights the preset keeps. A Gaussian fitted by maximum likelihood is the reference.

    python benchmarks/refit_modes.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the target lives with its test in tests/
from tests.test_refit_converges import CONTEXTS, fit_shipped, mode_score, probe, shipped_refinement, three_modes  # noqa: E402

CHECKPOINTS = (100, 300, 500, 1000, 1500)


def score(decoder) -> tuple[float, float]:
    """Mean over the probe contexts of (share near a mode, smallest mode's share)."""
    near, smallest = [], []
    for context in CONTEXTS:
        with torch.no_grad():
            samples = decoder.decode(probe(context, 3000, seed=2), torch.randn(3000, 2))
        n, per_mode = mode_score(samples, context)
        near.append(n)
        smallest.append(min(per_mode))
    return sum(near) / len(near), sum(smallest) / len(smallest)


def gaussian_score() -> tuple[float, float]:
    data = three_modes(28_800, seed=0)
    x = torch.cat([data["observation"], torch.ones(len(data), 1)], 1)
    w = torch.linalg.lstsq(x, data["action"]).solution
    std = (data["action"] - x @ w).std(0)
    near, smallest = [], []
    for context in CONTEXTS:
        obs = probe(context, 3000, seed=2)
        samples = torch.cat([obs, torch.ones(3000, 1)], 1) @ w + std * torch.randn(3000, 2)
        n, per_mode = mode_score(samples, context)
        near.append(n)
        smallest.append(min(per_mode))
    return sum(near) / len(near), sum(smallest) / len(smallest)


def main() -> None:
    cfg = shipped_refinement()
    print(f"# refinement/cpu.yaml: {cfg.steps} steps, batch {cfg.batch_size}, validation every {cfg.val_every}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'decoder':<16}{'steps':>7}{'near a mode':>13}{'smallest mode':>15}{'seconds':>9}")
    torch.manual_seed(0)
    near, smallest = gaussian_score()
    print(f"{'gaussian (MLE)':<16}{'-':>7}{near:>13.2f}{smallest:>15.2f}{'-':>9}")
    for name in ("flow_cpu", "diffusion_cpu"):
        clock = {"start": time.perf_counter(), "spent": 0.0}

        def report(fit, dec, name=name, clock=clock) -> None:
            clock["spent"] += time.perf_counter() - clock["start"]
            if fit.steps in CHECKPOINTS:
                near, smallest = score(dec)
                print(f"{name:<16}{fit.steps:>7}{near:>13.2f}{smallest:>15.2f}{clock['spent']:>9.0f}", flush=True)
            clock["start"] = time.perf_counter()  # scoring is not fitting time

        fit, dec = fit_shipped(name, report)
        dec.load_state_dict(fit.best_state)
        near, smallest = score(dec)
        print(f"{name + ' kept':<16}{fit.best_step:>7}{near:>13.2f}{smallest:>15.2f}{clock['spent']:>9.0f}")


if __name__ == "__main__":
    main()
