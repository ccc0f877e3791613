"""The CT intensity window every feature, method and network sees."""

from __future__ import annotations

import numpy as np

#: CT intensity window (HU) mapped to [0, 1] before features are computed or a network runs.
HU_WINDOW = (-1000.0, 600.0)


def normalise_ct(arr: np.ndarray) -> np.ndarray:
    """HU ``arr`` clipped to :data:`HU_WINDOW` and mapped to [0, 1], float32 (a new array; one float32 copy of
    ``arr`` is all the memory it takes: the steps work in place)."""
    lo, hi = HU_WINDOW
    out = np.array(arr, dtype=np.float32)
    np.clip(out, lo, hi, out=out)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return out
