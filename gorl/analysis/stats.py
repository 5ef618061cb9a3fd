"""Is an action distribution multimodal? Hartigan's dip test, a KDE, and a KDE mode count.

All work on 1-D samples (one action dimension at one probe state); :func:`modality_table` applies
them to every probe, dimension and snapshot. Two measures because they fail differently: the dip
test is a calibrated test of unimodality but says nothing about *how many* modes; the KDE mode
count does, but depends on a bandwidth and a height threshold.

Note on the action space: ``tanh`` of a wide unimodal Gaussian piles mass at both ends of
``[-1, 1]``, which *is* bimodal in action space. Test ``pre_tanh`` samples (``space="pre_tanh"``)
to ask whether the policy itself, rather than the squash, has several modes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from gorl.analysis.io import Snapshot


def dip_test(samples: np.ndarray) -> tuple[float, float]:
    """Hartigan's dip statistic and its p-value under the null of unimodality (``diptest`` package).

    A small p-value (e.g. < 0.05) rejects unimodality. Constant samples are unimodal: ``(0, 1)``.
    """
    import diptest

    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 4 or np.ptp(x) == 0:
        return 0.0, 1.0
    dip, pvalue = diptest.diptest(x)
    return float(dip), float(pvalue)


def bandwidth(samples: np.ndarray) -> float:
    """Silverman's rule of thumb (robust variant, ``min(std, IQR / 1.34)``)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    q75, q25 = np.percentile(x, [75, 25])
    spread = min(np.std(x), (q75 - q25) / 1.34) or np.std(x)
    return float(0.9 * spread * x.size ** (-0.2)) if spread > 0 else 0.0


def kde(samples: np.ndarray, grid: np.ndarray | None = None, bw: float | None = None, points: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel density estimate ``(grid, density)`` in plain NumPy (no SciPy needed).

    The default grid spans the samples plus three bandwidths either side.
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    h = bandwidth(x) if bw is None else float(bw)
    if h <= 0:
        h = 1e-3 * max(1.0, abs(float(x.mean()))) if x.size else 1e-3
    if grid is None:
        grid = np.linspace(x.min() - 3 * h, x.max() + 3 * h, points)
    density = np.zeros_like(grid, dtype=np.float64)
    for chunk in np.array_split(x, max(1, x.size // 2048)):  # bounded memory: grid x chunk
        density += np.exp(-0.5 * ((grid[:, None] - chunk[None, :]) / h) ** 2).sum(1)
    density /= x.size * h * np.sqrt(2 * np.pi)
    return grid, density


def count_modes(samples: np.ndarray, rel_height: float = 0.1, valley: float = 0.9, bw: float | None = None, points: int = 512) -> int:
    """Number of modes of the KDE of ``samples``.

    A mode is a local maximum of the density at least ``rel_height`` times the highest one; two
    neighbouring modes count as one unless the density between them drops below ``valley`` times the
    lower of the two (so a noisy flat top is not several modes).
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        return 1 if x.size else 0
    grid, dens = kde(x, bw=bw, points=points)
    inner = (dens[1:-1] > dens[:-2]) & (dens[1:-1] >= dens[2:])
    peaks = [i + 1 for i in np.flatnonzero(inner) if dens[i + 1] >= rel_height * dens.max()]
    if not peaks:
        return 1
    kept = [peaks[0]]
    for p in peaks[1:]:
        low = dens[kept[-1] : p + 1].min()
        if low < valley * min(dens[kept[-1]], dens[p]):
            kept.append(p)
        elif dens[p] > dens[kept[-1]]:
            kept[-1] = p  # same mode: keep its higher top
    return len(kept)


def samples_of(snapshot: Snapshot, kind: str = "policy", space: str = "action") -> np.ndarray:
    """``[P, S, act_dim]`` samples of a snapshot: ``kind`` policy/prior, ``space`` action/pre_tanh."""
    if space not in ("action", "pre_tanh"):
        raise ValueError(f"space must be 'action' or 'pre_tanh', got {space!r}")
    key = f"{kind}_actions" if space == "action" else f"{kind}_pre_tanh"
    data = getattr(snapshot, key, None)
    data = snapshot.extra.get(key) if data is None else data
    if data is None:
        raise KeyError(f"snapshot {snapshot.path} has no {key!r}")
    return data


def modality_table(
    snapshots: Iterable[Snapshot], kinds: tuple[str, ...] = ("policy", "prior"), space: str = "action", **mode_kwargs
) -> list[dict]:
    """One row per (snapshot, kind, probe, action dim): dip statistic, p-value and KDE mode count."""
    rows = []
    for snap in snapshots:
        for kind in kinds:
            data = samples_of(snap, kind, space)
            for p in range(data.shape[0]):
                for d in range(data.shape[2]):
                    dip, pval = dip_test(data[p, :, d])
                    rows.append(
                        {
                            "index": snap.index, "stage": snap.stage, "phase": snap.phase, "frames": snap.frames,
                            "kind": kind, "probe": p, "dim": d, "dip": dip, "pvalue": pval,
                            "modes": count_modes(data[p, :, d], **mode_kwargs),
                        }
                    )
    return rows


def format_table(rows: list[dict], columns: tuple[str, ...] = ("index", "stage", "phase", "frames", "kind", "probe", "dim", "dip", "pvalue", "modes")) -> str:
    """A fixed-width text table of :func:`modality_table` rows (no pandas needed)."""
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    body = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)
