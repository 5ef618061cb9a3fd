"""How well a CPU refit learns a multimodal, state-conditioned action distribution.

Targets (``ModeTarget`` of ``tests/test_refit_converges.py``): modes on a circle whose angle moves
with a context observation, four distractor observation dims, 28,800 training pairs (the quick
start's refit data size). ``three`` is the test's target; the others change one thing: narrower
modes (scored within a tighter radius), more modes, a smaller or a larger circle. Each decoder
variant is fitted with the CPU refit preset (``conf/refinement/cpu.yaml``) and its best-validation
weights are scored at three probe contexts: the share of samples within ``near`` of a mode centre,
and the balance (the smallest mode's share of those, times the number of modes: 1 = equal shares).
A Gaussian fitted by maximum likelihood is the reference. The seconds are fitting time only.

    python benchmarks/refit_modes.py                                   # shipped presets, every target
    python benchmarks/refit_modes.py --variants diffusion_cpu diff_old_out1 --targets five --seeds 0 1 2
    python benchmarks/refit_modes.py --checkpoints 100 500 1000 1500   # scores along the fit as well
    python benchmarks/refit_modes.py --exact --targets three narrow five seven small wide  # samplers alone
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the targets live with their test in tests/
from gorl.decoders.diffusion import cosine_alpha_bar, linear_alpha_bar  # noqa: E402
from tests.test_refit_converges import CONTEXTS, TARGETS, ModeTarget, fit_shipped, probe, shipped_refinement  # noqa: E402

# name -> (conf/decoder preset, init_args overrides, conf/refinement/cpu.yaml overrides): the
# shipped presets and the one-change-at-a-time variants of the diffusion preset measured in
# benchmarks/RESULTS.md.
OLD_DIFFUSION_CPU = {"hidden": [64] * 4, "steps": 10, "schedule": "linear", "draws": 8, "time_dim": 8, "output_scale": 0.25, "lr": 1e-3,
                     "alpha_min": 1e-3}
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "flow_cpu": ("flow_cpu", {}, {}),
    "diffusion_cpu": ("diffusion_cpu", {}, {}),
    "diffusion_cpu_old": ("diffusion_cpu", OLD_DIFFUSION_CPU, {}),  # the preset before 2026-12-04
    "diff_old_wide": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "hidden": [128] * 4}, {}),
    "diff_old_out1": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "output_scale": 1.0}, {}),
    "diff_old_lr3e-3": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "lr": 3e-3}, {}),
    "diff_old_cosine": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine"}, {}),
    "diff_old_T20": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "steps": 20}, {}),
    "diff_old_draws32": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "draws": 32}, {}),
    "diff_old_steps4500": ("diffusion_cpu", OLD_DIFFUSION_CPU, {"steps": 4500}),
    "diff_old_amin0.01": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "alpha_min": 0.01}, {}),
    "diff_old_amin0.024": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "alpha_min": 0.024}, {}),
    "diff_old_amin0.05": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "alpha_min": 0.05}, {}),
    "diff_cos_lr3e-3": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine", "lr": 3e-3}, {}),
    "diff_cos_lr2e-3": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine", "lr": 2e-3}, {}),
    "diff_cos_wide": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine", "hidden": [128] * 4}, {}),
    "diff_cos_out1": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine", "output_scale": 1.0}, {}),
    "diff_cos_T20": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine", "steps": 20}, {}),
    "diff_cos_steps4500": ("diffusion_cpu", {**OLD_DIFFUSION_CPU, "schedule": "cosine"}, {"steps": 4500}),
}


def score(decoder, target: ModeTarget) -> tuple[float, float]:
    """Means over the probe contexts of (share near a mode, balance)."""
    near, balance = [], []
    gen = torch.Generator().manual_seed(3)
    for context in CONTEXTS:
        with torch.no_grad():
            samples = decoder.decode(probe(context, 3000, seed=2), torch.randn(3000, 2, generator=gen))
        n, per_mode = target.score(samples, context)
        near.append(n)
        balance.append(target.modes * min(per_mode) / max(n, 1e-9))
    return sum(near) / len(near), sum(balance) / len(balance)


def _posterior_mean(x: torch.Tensor, centres: torch.Tensor, scale: float, noise: float, sigma: float) -> torch.Tensor:
    """``E[a | x]`` for ``x = scale a + sigma eps`` and ``a`` an equal mixture of N(centre, noise^2 I)."""
    var = scale**2 * noise**2 + sigma**2
    w = torch.softmax(-torch.cdist(x, scale * centres) ** 2 / (2 * var), 1)
    means = centres + (scale * noise**2 / var) * (x.unsqueeze(1) - scale * centres)  # [n, modes, 2]
    return (w.unsqueeze(-1) * means).sum(1)


def exact_ddim(target: ModeTarget, centres: torch.Tensor, abar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DiffusionDecoder's deterministic DDIM sampler on ``abar`` with the exact denoiser in place of
    the network (the same update, written with the x0 prediction)."""
    x = eps
    for k in range(len(abar) - 1, 0, -1):
        a = float(abar[k])
        x0 = _posterior_mean(x, centres, a**0.5, target.noise, (1 - a) ** 0.5)
        e = (x - a**0.5 * x0) / (1 - a) ** 0.5
        x = float(abar[k - 1]) ** 0.5 * x0 + (1 - float(abar[k - 1])) ** 0.5 * e
    return x


def exact_ddpm(target: ModeTarget, centres: torch.Tensor, abar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Ancestral (DDPM) sampling on ``abar`` with the exact denoiser: fresh noise at every step, so the
    action is no longer a function of the latent (GoRL's decoder must be one); for comparison only."""
    gen, x = torch.Generator().manual_seed(4), eps
    for k in range(len(abar) - 1, 0, -1):
        a, a_prev = float(abar[k]), float(abar[k - 1])
        x0 = _posterior_mean(x, centres, a**0.5, target.noise, (1 - a) ** 0.5)
        beta = 1 - a / a_prev
        mean = (a_prev**0.5 * beta * x0 + (1 - beta) ** 0.5 * (1 - a_prev) * x) / (1 - a)
        x = mean + ((1 - a_prev) / (1 - a) * beta) ** 0.5 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x


def exact_flow(target: ModeTarget, centres: torch.Tensor, steps: int, eps: torch.Tensor) -> torch.Tensor:
    """FlowDecoder's Euler sampler (t = 1 -> 0) with the exact velocity ``(x - E[a | x_t]) / t``."""
    x, dt = eps, 1.0 / steps
    for i in range(steps):
        t = 1.0 - i * dt
        x = x - dt * (x - _posterior_mean(x, centres, 1 - t, target.noise, t)) / t
    return x


SAMPLERS = {
    "flow, 10 Euler steps": lambda tg, c, e: exact_flow(tg, c, 10, e),
    "DDIM linear, 10 steps": lambda tg, c, e: exact_ddim(tg, c, linear_alpha_bar(10), e),
    "DDIM linear amin 0.05": lambda tg, c, e: exact_ddim(tg, c, linear_alpha_bar(10, 0.05), e),
    "DDIM linear, 20 steps": lambda tg, c, e: exact_ddim(tg, c, linear_alpha_bar(20), e),
    "DDIM cosine, 10 steps": lambda tg, c, e: exact_ddim(tg, c, cosine_alpha_bar(10), e),
    "DDPM linear, 10 steps": lambda tg, c, e: exact_ddpm(tg, c, linear_alpha_bar(10), e),
}


def exact_samplers(targets: list[str]) -> None:
    """Each sampler with the exact denoiser: the best any fit can do with that sampler."""
    print(f"{'target':<8}" + "".join(f"{name:>24}" for name in SAMPLERS))
    for tname in targets:
        target, row = TARGETS[tname], []
        for sampler in SAMPLERS.values():
            gen, near = torch.Generator().manual_seed(3), []
            for context in CONTEXTS:
                centres = target.centres(context).double()
                samples = sampler(target, centres, torch.randn(3000, 2, generator=gen, dtype=torch.float64))
                near.append(target.score(samples.float(), context)[0])
            row.append(sum(near) / len(near))
        print(f"{tname:<8}" + "".join(f"{v:>24.2f}" for v in row), flush=True)


class _Gaussian:
    """Maximum-likelihood Gaussian policy: mean linear in the observation, diagonal std."""

    def __init__(self, target: ModeTarget) -> None:
        data = target.sample(28_800, seed=0)
        x = torch.cat([data["observation"], torch.ones(len(data), 1)], 1)
        self.w = torch.linalg.lstsq(x, data["action"]).solution
        self.std = (data["action"] - x @ self.w).std(0)

    def decode(self, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, torch.ones(len(obs), 1)], 1) @ self.w + self.std * eps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["three", "narrow", "five", "small", "wide"], choices=sorted(TARGETS))
    parser.add_argument("--variants", nargs="+", default=["flow_cpu", "diffusion_cpu_old", "diffusion_cpu"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--checkpoints", nargs="*", type=int, default=[], help="also score at these fit steps")
    parser.add_argument("--exact", action="store_true", help="score the samplers with the exact denoiser instead (no fit)")
    args = parser.parse_args()
    if args.exact:
        print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; share of samples near a mode with the exact denoiser, 3 x 3000 samples")
        exact_samplers(args.targets)
        return

    cfg = shipped_refinement()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; refinement/cpu.yaml: {cfg.steps} steps, batch {cfg.batch_size}, "
          f"validation every {cfg.val_every}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'target':<8}{'decoder':<20}{'seed':>5}{'step':>7}{'near a mode':>13}{'balance':>9}{'seconds':>9}")
    for tname in args.targets:
        target = TARGETS[tname]
        torch.manual_seed(0)
        near, balance = score(_Gaussian(target), target)
        print(f"{tname:<8}{'gaussian (MLE)':<20}{'-':>5}{'-':>7}{near:>13.2f}{balance:>9.2f}{'-':>9}", flush=True)
        for vname in args.variants:
            preset, overrides, ref_overrides = VARIANTS[vname]
            for seed in args.seeds:
                clock = {"start": time.perf_counter(), "spent": 0.0}

                def report(fit, dec, clock=clock, vname=vname, seed=seed, target=target, tname=tname) -> None:
                    clock["spent"] += time.perf_counter() - clock["start"]
                    if fit.steps in args.checkpoints:
                        near, balance = score(dec, target)
                        print(f"{tname:<8}{vname:<20}{seed:>5}{fit.steps:>7}{near:>13.2f}{balance:>9.2f}{clock['spent']:>9.0f}", flush=True)
                    clock["start"] = time.perf_counter()  # scoring is not fitting time

                fit, dec = fit_shipped(preset, report, target=target, seed=seed, refinement=shipped_refinement(**ref_overrides), **overrides)
                dec.load_state_dict(fit.best_state)
                near, balance = score(dec, target)
                print(f"{tname:<8}{vname + ' kept':<20}{seed:>5}{fit.best_step:>7}{near:>13.2f}{balance:>9.2f}{clock['spent']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
