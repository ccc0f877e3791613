"""Count, sum, mean, SD, min and max of values seen a chunk at a time (float64, numerically stable),
so that statistics over full-resolution volumes need no full-size copies."""

from __future__ import annotations

import numpy as np


class RunningMoments:
    """Accumulates chunks of values; the chunks' means and squared deviations are combined pairwise (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = 0.0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = np.inf
        self.max = -np.inf

    def add(self, values: np.ndarray) -> "RunningMoments":
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return self
        mu = float(v.mean())
        m2 = float(((v - mu) ** 2).sum())
        n = self.n + v.size
        delta = mu - self.mean
        self.mean += delta * v.size / n
        self._m2 += m2 + delta * delta * self.n * v.size / n
        self.n = n
        self.sum += float(v.sum())
        self.min, self.max = min(self.min, float(v.min())), max(self.max, float(v.max()))
        return self

    @property
    def std(self) -> float:
        """Population SD (as ``np.std``)."""
        return float(np.sqrt(self._m2 / self.n)) if self.n else float("nan")
