"""The CT intensity window every feature, method and network sees."""

from __future__ import annotations

import numpy as np

#: CT intensity window (HU) mapped to [0, 1] before features are computed or a network runs.
HU_WINDOW = (-1000.0, 600.0)


def normalise_ct(arr: np.ndarray) -> np.ndarray:
    """HU ``arr`` clipped to :data:`HU_WINDOW` and mapped to [0, 1], float32."""
    lo, hi = HU_WINDOW
    return ((np.clip(arr.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)
