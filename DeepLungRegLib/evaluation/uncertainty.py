"""The uncertainty map of a registration: its per-lung summary, and how well it predicts the true error.

The map (``uncertainty.nii.gz``, mm on the fixed grid) is what a method says about how sure it is of the
displacement at each voxel: the spread of the matching costs searched around the field
(:mod:`DeepLungRegLib.methods.uncertainty`), or, on request, the inverse consistency with the same method's
registration the other way round (:func:`DeepLungRegLib.methods.base.register`; docs/uncertainty.md).
:func:`uncertainty_summary` is what ``metrics.json`` holds; :func:`predictor_scores` measures a map against a known
error (simulated pairs).
"""

from __future__ import annotations

import numpy as np

from .ventilation import LUNGS

#: The summary gives the share of the lung whose uncertainty is above each of these (mm).
SHARE_ABOVE_MM = (4.0, 6.0, 8.0)  # the map ranks; on the design pairs its lung values lay between about 3 and 7 mm
#: Histogram bins of the summary's percentiles (mm): 0 to 50 mm in 0.01 mm steps, the last bin open.
_BINS = np.append(np.arange(0.0, 50.0 + 1e-9, 0.01), np.inf)


def uncertainty_summary(values: np.ndarray, labels: np.ndarray, above_mm: tuple[float, ...] = SHARE_ABOVE_MM) -> dict:
    """Per lung (right, left, both): mean, median and 90th percentile of the map (mm, to 0.01 mm; 50 stands for 50 or
    more), and the share
    (%) of its voxels above each of ``above_mm`` (counted exactly). A slice at a time (the map may be full resolution).

    Args:
        values: ``(Z, Y, X)`` uncertainty in mm.
        labels: ``(Z, Y, X)`` lung labels (1 right, 2 left, 0 outside), as :func:`~DeepLungRegLib.segmentation.split_lungs`.
    """
    counts = {name: np.zeros(len(_BINS) - 1, np.int64) for name, _ in LUNGS}
    sums = dict.fromkeys(counts, 0.0)
    above = {name: np.zeros(len(above_mm), np.int64) for name in counts}
    thresholds = np.asarray(above_mm, np.float64)
    for k in range(labels.shape[0]):
        lk, vk = labels[k], values[k]
        for name, ids in LUNGS:
            sel = (lk == ids[0]) if len(ids) == 1 else (lk > 0)
            if sel.any():
                v = vk[sel].astype(np.float64)
                counts[name] += np.histogram(v, _BINS)[0]
                sums[name] += float(v.sum())
                above[name] += (v[:, None] > thresholds[None, :]).sum(0) if len(thresholds) else 0
    out = {}
    for name, c in counts.items():
        n = int(c.sum())
        if n == 0:
            continue
        cum = np.cumsum(c) / n

        def quantile(q: float) -> float:
            return float(_BINS[min(int(np.searchsorted(cum, q)) + 1, len(_BINS) - 2)])

        entry = {"n": n, "mean_mm": sums[name] / n, "median_mm": quantile(0.5), "p90_mm": quantile(0.9)}
        for t, count in zip(above_mm, above[name]):
            entry[f"percent_above_{t:g}mm"] = round(100.0 * float(count) / n, 3)
        out[name] = entry
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1D samples (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def predictor_scores(predicted: np.ndarray, error: np.ndarray, top_fraction: float = 0.1, large_mm: float = 2.0) -> dict:
    """How well ``predicted`` (any map's values, higher = less sure) orders a known ``error`` (mm) at the same points.

    Returns:
        ``{"spearman", "large_in_top", "large"}``: the rank correlation; the fraction of the points with an
        error above ``large_mm`` that lie in the ``top_fraction`` of ``predicted`` (``nan`` without such points),
        and how many such points there are.
    """
    p, e = np.asarray(predicted, float).ravel(), np.asarray(error, float).ravel()
    cut = np.quantile(p, 1.0 - top_fraction) if p.size else np.inf
    large = e > large_mm
    return {"spearman": spearman(p, e), "large_in_top": float((p[large] >= cut).mean()) if large.any() else float("nan"),
            "large": int(large.sum())}


def calibration(predicted: np.ndarray, error: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """Predicted against observed error by decile of ``predicted``: ``(mean predicted, mean error, points)`` per bin."""
    p, e = np.asarray(predicted, float).ravel(), np.asarray(error, float).ravel()
    edges = np.quantile(p, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    return [(float(p[which == i].mean()), float(e[which == i].mean()), int((which == i).sum())) for i in range(bins) if (which == i).any()]
