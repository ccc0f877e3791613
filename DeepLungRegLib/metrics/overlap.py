"""Label overlap."""

from __future__ import annotations

import numpy as np

from ..errors import DeepLungRegError


def dice(a: np.ndarray, b: np.ndarray, labels: list[int] | None = None) -> dict[int, float]:
    """Dice per label between two label arrays of equal shape ``(Z, Y, X)``.

    Labels default to every non-zero value present in either array. A label
    absent from both gets NaN.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise DeepLungRegError(f"dice: label arrays differ in shape, {a.shape} vs {b.shape}")
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(a), np.unique(b)) if v != 0)
    out = {}
    for lab in labels:
        x, y = a == lab, b == lab
        denom = x.sum() + y.sum()
        out[int(lab)] = float(2.0 * np.logical_and(x, y).sum() / denom) if denom else float("nan")
    return out
