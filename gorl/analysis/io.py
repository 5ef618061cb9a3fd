"""Reading a run's outputs: distribution snapshots (:mod:`gorl.distributions`) and ``metrics.csv``.

A *run directory* may be a logger version directory (``runs/gorl/version_0``) or any folder above
one (``runs/gorl``): a resumed run logs into a new version directory, so both loaders gather every
file below the given path and merge them in order.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Snapshot:
    """One ``snapshot_XXXX.npz``: arrays as NumPy, scalars as Python values (see gorl.distributions)."""

    path: Path
    index: int
    stage: int
    phase: str
    frames: int
    event: str
    probe_obs: np.ndarray  # [P, obs_dim]
    policy_actions: np.ndarray  # [P, S, act_dim]
    prior_actions: np.ndarray  # [P, S, act_dim]
    policy_pre_tanh: np.ndarray  # [P, S, act_dim]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"stage {self.stage} ({self.phase}) @ {self.frames:,} frames"


def load_snapshot(path: str | Path) -> Snapshot:
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    main = ("probe_obs", "policy_actions", "prior_actions", "policy_pre_tanh")
    scalars = ("index", "stage", "phase", "frames", "event")
    return Snapshot(
        path=Path(path),
        index=int(data.get("index", -1)),
        stage=int(data["stage"]),
        phase=str(data["phase"]),
        frames=int(data["frames"]),
        event=str(data.get("event", "")),
        **{k: data[k] for k in main},
        extra={k: v for k, v in data.items() if k not in main + scalars},
    )


def load_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """Every snapshot below ``run_dir``, ordered by snapshot index (then by file path)."""
    paths = sorted(Path(run_dir).glob("**/distributions/snapshot_*.npz"))
    if not paths:
        raise FileNotFoundError(f"no distribution snapshots (distributions/snapshot_*.npz) under {run_dir}")
    snaps = [load_snapshot(p) for p in paths]
    return sorted(snaps, key=lambda s: (s.index, str(s.path)))


def end_of_stage(snapshots: list[Snapshot]) -> dict[int, Snapshot]:
    """The last snapshot of each stage: the policy as that stage finished (stage -> snapshot)."""
    last: dict[int, Snapshot] = {}
    for snap in snapshots:
        last[snap.stage] = snap
    return dict(sorted(last.items()))


def _metrics_files(run_dir: Path) -> list[Path]:
    if run_dir.is_file():
        return [run_dir]
    paths = sorted(run_dir.glob("**/metrics.csv"), key=lambda p: (p.stat().st_mtime, str(p)))
    if not paths:
        raise FileNotFoundError(f"no metrics.csv (CSV logger) under {run_dir}")
    return paths


def resumed_points(run_dir: Path) -> list[tuple[float, float | None]]:
    """Where a ``gorl bench`` run was resumed, one ``(frames, iteration)`` per resumption
    (``resumed.json``; records written before 2026-12-05 hold the frames alone)."""
    path = run_dir / "resumed.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    return [(float(e["frames"]), e.get("iteration")) if isinstance(e, dict) else (float(e), None) for e in entries]


def resumed_frames(run_dir: Path) -> list[float]:
    """The frames a ``gorl bench`` run was resumed from, one per resumption."""
    return [frames for frames, _ in resumed_points(run_dir)]


def _bench_rows(metrics_csv: Path) -> list[dict[str, str]]:
    """The rows of one ``metrics.csv``, preceded by the parts ``gorl bench`` set aside when it
    resumed that run (``metrics.part<N>.csv`` beside it, each cut where the next part resumed: rows
    past it were recomputed after the resume). The cut is at the checkpoint's loop iteration (the
    ``step`` column), where it is on record: a refit's rows all share one frame count."""
    run_dir = metrics_csv.parent
    parts = sorted(run_dir.glob("metrics.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    rows: list[dict[str, str]] = []
    for part, (upto, iteration) in zip(parts, resumed_points(run_dir)):
        with part.open(newline="") as f:
            if iteration is not None:
                rows += [r for r in csv.DictReader(f) if not r.get("step") or float(r["step"]) <= float(iteration)]
            else:
                rows += [r for r in csv.DictReader(f) if not r.get("loop/frames") or float(r["loop/frames"]) <= upto]
    with metrics_csv.open(newline="") as f:
        return rows + list(csv.DictReader(f))


def _resumed_from(run_dir: Path) -> Path | None:
    """The checkpoint a ``gorl fit --ckpt_path`` call resumed this run directory from (its
    ``config.yaml``), found as given or, for a relative path, below one of the directory's parents."""
    import yaml  # a dependency of jsonargparse, which the CLI needs anyway

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    given = cfg.get("ckpt_path") if isinstance(cfg, dict) else None
    if not given:
        return None
    path = Path(given)
    candidates = [path] if path.is_absolute() else [path, *(parent / path for parent in run_dir.resolve().parents)]
    return next((c for c in candidates if c.is_file()), None)


def _checkpoint_position(path: Path) -> tuple[float | None, float | None]:
    """``(iteration, frames)`` of a checkpoint's loop state, or ``(None, None)`` if unreadable."""
    try:
        from gorl.run_dirs import loop_state

        state = loop_state(path)
        return float(state["iteration"]), float(state["frames"])
    except Exception:  # noqa: BLE001  (a damaged or foreign file: fall back to the next part's first row)
        return None, None


def earlier_parts(run_dir: Path) -> list[tuple[Path, float | None, float | None]]:
    """``(metrics.csv, last step, last frames)`` of each earlier part of a run, oldest first.

    A run resumed with ``gorl fit --ckpt_path`` logs into a new directory whose ``config.yaml``
    names the checkpoint it started from; that checkpoint's directory holds the part before, and so
    on. Each earlier part counts up to the step its checkpoint was written at: later rows there
    were computed again by the part that resumed.
    """
    parts: list[tuple[Path, float | None, float | None]] = []
    seen, current = {run_dir.resolve()}, run_dir
    while (ckpt := _resumed_from(current)) is not None:
        previous = ckpt.parent.parent  # <run>/checkpoints/last.ckpt
        if previous.resolve() in seen or not (previous / "metrics.csv").is_file():
            break
        step, frames = _checkpoint_position(ckpt)
        parts.insert(0, (previous / "metrics.csv", step, frames))
        seen.add(previous.resolve())
        current = previous
    return parts


def run_rows(metrics_csv: Path) -> list[dict[str, str]]:
    """A run's rows as one history: the earlier parts it was resumed from (:func:`earlier_parts`,
    each cut where the next part took over), then this ``metrics.csv`` (with any parts ``gorl
    bench`` set aside beside it)."""
    rows: list[dict[str, str]] = []
    own = _bench_rows(metrics_csv)
    for part, step, frames in earlier_parts(metrics_csv.parent):
        if step is None:  # unreadable checkpoint: cut where the resumed rows begin
            firsts = [float(r["step"]) for r in own if r.get("step")]
            step = min(firsts) - 1 if firsts else None
        rows += [r for r in _bench_rows(part) if step is None or not r.get("step") or float(r["step"]) <= step]
    return rows + own


def load_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The CSV logger's ``metrics.csv`` as columns: ``{name: float array}``, NaN where a row has no value.

    All ``metrics.csv`` below ``run_dir`` are concatenated, oldest first, each with the earlier
    parts of its run (:func:`run_rows`: the ``gorl fit --ckpt_path`` parts it continues and the
    parts ``gorl bench`` kept of it), a part that another part continues only once. Plain NumPy columns
    rather than a DataFrame: pandas is not a dependency.
    """
    rows: list[dict[str, str]] = []
    paths = _metrics_files(Path(run_dir))
    # A folder holding a run and its resumes: each resumed part brings its earlier parts along.
    included = {part.resolve() for path in paths for part, _, _ in earlier_parts(path.parent)}
    for path in paths:
        if path.resolve() not in included:
            rows.extend(run_rows(path))
    names = sorted({k for row in rows for k in row})

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else np.nan
        except ValueError:
            return np.nan

    return {name: np.array([number(row.get(name)) for row in rows], dtype=np.float64) for name in names}


def eval_points(metrics: dict[str, np.ndarray], x: str = "loop/frames", y: str = "eval/return") -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` points of a metric that is logged only sometimes (evaluations).

    Lightning repeats the last ``on_step`` value of a metric in later rows until it is logged again,
    so rows are kept where the value (or its ``_std`` companion) changes, plus the first and last.
    An evaluation's x in frames is the ``eval/frames`` it records (the frames at which its agent was
    frozen: an evaluation in the training batch's side lanes, ``loop.eval_lanes``, is recorded some
    updates later), where a run has that column.
    """
    if y not in metrics or x not in metrics:
        return np.array([]), np.array([])
    xs, ys = metrics[x], metrics[y]
    if x == "loop/frames" and y.startswith("eval/") and "eval/frames" in metrics:
        xs = np.where(np.isfinite(metrics["eval/frames"]), metrics["eval/frames"], xs)
    std = metrics.get(f"{y}_std", np.zeros_like(ys))
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys, std = xs[ok], ys[ok], np.nan_to_num(std[ok])
    if len(ys) == 0:
        return xs, ys
    keep = np.ones(len(ys), dtype=bool)
    keep[1:] = (ys[1:] != ys[:-1]) | (std[1:] != std[:-1])
    keep[-1] = True
    return xs[keep], ys[keep]


def stage_boundaries(metrics: dict[str, np.ndarray], x: str = "loop/frames") -> list[tuple[int, float]]:
    """``(stage, x)`` where each stage after the first begins (from the ``loop/stage`` column)."""
    if "loop/stage" not in metrics or x not in metrics:
        return []
    stage, xs = metrics["loop/stage"], metrics[x]
    ok = np.isfinite(stage) & np.isfinite(xs)
    stage, xs = stage[ok], xs[ok]
    return [(int(stage[i]), float(xs[i])) for i in range(1, len(stage)) if stage[i] != stage[i - 1]]


def decoder_spans(metrics: dict[str, np.ndarray], x: str = "step") -> list[tuple[float, float]]:
    """``(start, end)`` in ``x`` of each decoder-refinement phase (``loop/phase == 1``)."""
    if "loop/phase" not in metrics or x not in metrics:
        return []
    phase, xs = metrics["loop/phase"], metrics[x]
    ok = np.isfinite(phase) & np.isfinite(xs)
    phase, xs = phase[ok] > 0.5, xs[ok]
    spans, start = [], None
    for i, in_decoder in enumerate(phase):
        if in_decoder and start is None:
            start = xs[i]
        elif not in_decoder and start is not None:
            spans.append((float(start), float(xs[i])))
            start = None
    if start is not None:
        spans.append((float(start), float(xs[-1])))
    return spans


def run_task(run_dir: str | Path) -> str | None:
    """The env task of a run, from the ``config.yaml`` the CLI saves next to ``metrics.csv``."""
    import yaml  # a dependency of jsonargparse, which the CLI needs anyway

    for path in sorted(Path(run_dir).glob("**/config.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        task = ((cfg.get("model") or {}).get("env") or {}).get("task")
        if task:
            return str(task)
    return None
