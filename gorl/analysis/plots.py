"""Figures from a run's snapshots and metrics. Every function returns a matplotlib ``Figure``.

Matplotlib runs on the Agg backend (set on import unless a backend was already chosen, as in a
Jupyter kernel), so these work on headless machines and in tests; nothing calls ``plt.show()``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

# Agg unless someone chose already: a Jupyter kernel (inline backend shows the figures), an
# explicit MPLBACKEND, or a script that imported pyplot first.
if not ({"matplotlib.pyplot", "ipykernel"} & set(sys.modules) or os.environ.get("MPLBACKEND")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gorl.analysis.io import Snapshot, decoder_spans, eval_points, load_metrics, run_task, stage_boundaries  # noqa: E402
from gorl.analysis.stats import count_modes, dip_test, kde, samples_of  # noqa: E402

KIND_COLORS = {"policy": "tab:blue", "prior": "tab:orange"}
Reference = Callable[[np.ndarray], Sequence[float]]


def _obs_text(obs: np.ndarray, width: int = 3) -> str:
    shown = ", ".join(f"{v:.2f}" for v in obs[:width])
    return f"s=[{shown}{', ...' if obs.size > width else ''}]"


def plot_probe_distributions(
    snapshots: Sequence[Snapshot],
    kinds: Sequence[str] = ("policy",),
    space: str = "action",
    dim: int = 0,
    probes: Sequence[int] | None = None,
    bins: int = 50,
    reference: Reference | None = None,
    titles: Sequence[str] | None = None,
    stats_space: str | None = None,
    panel_size: tuple[float, float] = (2.6, 1.5),
) -> Figure:
    """Histogram + KDE of action dimension ``dim``: one row per probe state, one column per snapshot.

    Each panel is annotated with the dip-test p-value and KDE mode count of its first ``kind``,
    computed in ``stats_space`` (default: ``space``; ``"pre_tanh"`` keeps the squash's edge piles
    out of the statistics while the histogram shows env actions).
    ``reference(probe_obs) -> xs`` draws dashed lines (e.g. a toy task's optimal actions).
    """
    stats_space = stats_space or space
    probes = list(range(snapshots[0].probe_obs.shape[0])) if probes is None else list(probes)
    rows, cols = len(probes), len(snapshots)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False, sharex="row")
    for c, snap in enumerate(snapshots):
        axes[0, c].set_title(titles[c] if titles else f"stage {snap.stage} ({snap.phase})\n{snap.frames:,} frames", fontsize=9)
        for r, p in enumerate(probes):
            ax = axes[r, c]
            data = {k: samples_of(snap, k, space)[p, :, dim] for k in kinds}
            allx = np.concatenate(list(data.values()))
            edges = np.linspace(allx.min(), allx.max(), bins + 1) if np.ptp(allx) > 0 else bins
            grid = np.linspace(allx.min(), allx.max(), 400) if np.ptp(allx) > 0 else None
            for k, x in data.items():
                color = KIND_COLORS.get(k)
                ax.hist(x, bins=edges, density=True, alpha=0.35, color=color, label=k)
                ax.plot(*kde(x, grid=grid), color=color, lw=1.2)
            if reference is not None:
                for xr in reference(snap.probe_obs[p]):
                    ax.axvline(float(xr), color="k", ls="--", lw=0.8)
            first = samples_of(snap, kinds[0], stats_space)[p, :, dim]
            _, pval = dip_test(first)
            note = f"dip p={pval:.2g}\nmodes={count_modes(first)}" + ("\n(pre-tanh)" if stats_space != space else "")
            ax.text(0.02, 0.95, note, transform=ax.transAxes, va="top", fontsize=7, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"probe {p}\n{_obs_text(snap.probe_obs[p])}", fontsize=7)
            if r == rows - 1:
                ax.set_xlabel(f"{'action' if space == 'action' else 'pre-tanh action'}[{dim}]", fontsize=8)
            ax.tick_params(labelsize=7)
    if len(kinds) > 1:
        axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_modality(rows: Sequence[dict], kind: str = "policy", dim: int = 0, alpha: float = 0.05) -> Figure:
    """Dip-test p-value and KDE mode count per snapshot, one line per probe state.

    ``rows`` come from :func:`gorl.analysis.stats.modality_table`. The x axis is the snapshot
    index (decoder refinements take no encoder frames, so frames would stack them); stage changes
    are marked with dotted lines.
    """
    sel = [r for r in rows if r["kind"] == kind and r["dim"] == dim]
    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(10, 3.2))
    for p in sorted({r["probe"] for r in sel}):
        pts = sorted((r["index"], r["pvalue"], r["modes"]) for r in sel if r["probe"] == p)
        idx = [t[0] for t in pts]
        ax_p.plot(idx, [max(t[1], 1e-6) for t in pts], marker="o", ms=3, lw=1, label=f"probe {p}")
        ax_m.plot(idx, [t[2] for t in pts], marker="o", ms=3, lw=1)
    ax_p.set_yscale("log")
    ax_p.axhline(alpha, color="k", ls="--", lw=0.8)
    ax_p.set(xlabel="snapshot", ylabel="dip-test p-value (log)", title=f"{kind}: unimodality test (p < {alpha} = multimodal)")
    ax_m.set(xlabel="snapshot", ylabel="KDE modes", title=f"{kind}: mode count")
    ax_m.yaxis.get_major_locator().set_params(integer=True)
    stages = sorted({(r["index"], r["stage"]) for r in sel})
    for (i0, s0), (i1, s1) in zip(stages, stages[1:]):
        if s1 != s0:
            for ax in (ax_p, ax_m):
                ax.axvline(i1 - 0.5, color="grey", ls=":", lw=1)
                ax.text(i1 - 0.45, 0.98, f"stage {s1}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="grey")
    ax_p.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def train_points(metrics: dict[str, np.ndarray], x: str = "loop/frames") -> tuple[np.ndarray, np.ndarray]:
    """The ``train/return`` line: one point per row that logged it (episodes ended since the row
    before), broken (a NaN) wherever a stage begins, so that no segment spans a stage in which no
    training episode ended, nor joins one stage's encoder to the next one's."""
    tx, ty = metrics[x], metrics["train/return"]
    stage = metrics.get("loop/stage", np.zeros_like(tx))
    ok = np.isfinite(tx) & np.isfinite(ty)
    tx, ty, stage = tx[ok], ty[ok], stage[ok]
    breaks = np.flatnonzero(stage[1:] != stage[:-1]) + 1
    return np.insert(tx, breaks, np.nan), np.insert(ty, breaks, np.nan)


def plot_learning_curve(
    run: str | Path | dict[str, np.ndarray],
    x: str = "loop/frames",
    y: str = "eval/return",
    train: bool = True,
    ax: plt.Axes | None = None,
    label: str | None = None,
) -> Figure:
    """One run's ``y`` against ``x`` with stage starts marked (and, on the ``step`` axis, the
    decoder-refinement phases shaded: on the frames axis they take no width)."""
    metrics = run if isinstance(run, dict) else load_metrics(run)
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 3.5))
    ax = ax or fig.add_subplot(1, 1, 1)
    if train and "train/return" in metrics and y == "eval/return":
        tx, ty = train_points(metrics, x)
        ax.plot(tx, ty, color="tab:grey", lw=0.8, alpha=0.6, label="train/return (episodes)")
    ex, ey = eval_points(metrics, x, y)
    ax.plot(ex, ey, marker="o", ms=3, lw=1.5, label=label or y)
    if y == "eval/return" and "stage/initial_return" in metrics:
        ix, iy = eval_points(metrics, x, "stage/initial_return")
        if len(ix):
            ax.plot(ix, iy, ls="none", marker="x", ms=7, mew=1.5, color="tab:red", label="stage start, before any update")
    for stage, pos in stage_boundaries(metrics, x):
        ax.axvline(pos, color="k", ls=":", lw=1)
        ax.text(pos, 0.98, f" stage {stage}", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    if x == "step":
        for a, b in decoder_spans(metrics, x):
            ax.axvspan(a, b, color="tab:orange", alpha=0.15, lw=0)
    ax.set(xlabel="env frames (encoder phases)" if x == "loop/frames" else x, ylabel=y)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def label_from_dir(path: str | Path) -> str:
    """A method label from a run directory name: ``runs/gorl_fm_seed3`` -> ``gorl_fm``.

    Logger ``version_N`` folders are skipped (their parent names the run), and a trailing
    ``seed<N>`` / ``s<N>`` part is dropped so seeds of one method share a label.
    """
    p = Path(path).resolve()
    while re.fullmatch(r"version_\d+", p.name) and p.parent != p:
        p = p.parent
    return re.sub(r"[-_.]?(seed|s)\d+$", "", p.name) or p.name


def _curve(run_dir: str | Path, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = eval_points(load_metrics(run_dir), x, y)
    order = np.argsort(xs, kind="stable")
    return xs[order], ys[order]


def plot_runs(
    runs: Sequence[tuple[str | Path, str]],
    x: str = "loop/frames",
    y: str = "eval/return",
    spread: str = "std",
    points: int = 200,
    panel_size: tuple[float, float] = (4.0, 3.0),
    boundaries: Sequence[float] = (),
    references: dict[str, float] | None = None,
) -> Figure:
    """Paper-style comparison: one panel per task, one line per method, mean and spread over seeds.

    Args:
        runs: ``(run_dir, label)`` pairs; runs sharing a label and a task are seeds of one method.
            The task comes from the run's saved ``config.yaml`` (``model.env.task``).
        spread: ``std`` (mean +- one standard deviation), ``sem`` (standard error) or ``minmax``.
        points: seeds are interpolated onto this many points, up to the shortest seed's last ``x``.
        boundaries: ``x`` positions to mark with a dotted line (e.g. the GoRL stage boundaries of
            a ``gorl bench`` matrix, where every GoRL run refits at the same frames).
        references: ``{label: return}``, a published final return per method (the authors'), drawn
            as a dashed line in that method's colour, so a curve is read against the number it tests.
    """
    groups: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for run_dir, label in runs:
        task = run_task(run_dir) or "run"
        groups.setdefault(task, {}).setdefault(label, []).append(_curve(run_dir, x, y))
    labels = list(dict.fromkeys(label for _, label in runs))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(groups), figsize=(panel_size[0] * len(groups), panel_size[1]), squeeze=False)
    for ax, (task, methods) in zip(axes[0], sorted(groups.items())):
        for label, curves in methods.items():
            curves = [(cx, cy) for cx, cy in curves if len(cx)]
            if not curves:
                continue
            end = min(cx[-1] for cx, _ in curves)
            grid = np.linspace(min(cx[0] for cx, _ in curves), end, points)
            ys = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
            mean = ys.mean(0)
            if spread == "minmax":
                lo, hi = ys.min(0), ys.max(0)
            else:
                dev = ys.std(0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
                dev = dev / np.sqrt(len(ys)) if spread == "sem" else dev
                lo, hi = mean - dev, mean + dev
            ax.plot(grid, mean, color=colors[label], lw=1.6, label=f"{label} (n={len(ys)})")
            ax.fill_between(grid, lo, hi, color=colors[label], alpha=0.2, lw=0)
        for label, value in (references or {}).items():
            if label in methods:
                ax.axhline(value, color=colors[label], ls="--", lw=1, label=f"{label}, authors' figure")
        for pos in boundaries:
            ax.axvline(pos, color="k", ls=":", lw=1)
        ax.set(title=task, xlabel="env frames" if x == "loop/frames" else x, ylabel=y)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
