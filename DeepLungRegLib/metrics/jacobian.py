"""Jacobian determinant of displacement fields, in world (LPS mm) coordinates."""

from __future__ import annotations

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry


def spatial_gradient(field: np.ndarray, geometry: Geometry) -> np.ndarray:
    """World-frame gradient ``du_c/dx_d`` of a field, shape ``(Z, Y, X, 3, 3)``.

    Central differences along the index axes (one-sided at borders) are
    divided by the spacing and mapped through the inverse direction matrix,
    so the result is correct on oblique, anisotropic grids.
    """
    f = np.asarray(field, dtype=np.float64)
    if f.shape != (*geometry.shape, 3):
        raise DeepLungRegError(f"spatial_gradient: field shape {f.shape} does not match the grid {(*geometry.shape, 3)}")
    g = np.zeros((*geometry.shape, 3, 3))
    # array axes (0, 1, 2) = (k, j, i) = index axes (z, y, x) -> column (2, 1, 0)
    for axis, col in ((2, 0), (1, 1), (0, 2)):
        if f.shape[axis] > 1:
            g[..., :, col] = np.gradient(f, geometry.spacing[col], axis=axis)
    # d u / d xi (xi = spacing-scaled index coords) -> d u / d x, with x = o + D xi
    return g @ np.linalg.inv(geometry.direction_matrix)


def jacobian_determinant(field: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``det(I + grad u)`` at every voxel, shape ``(Z, Y, X)`` float32."""
    return np.linalg.det(np.eye(3) + spatial_gradient(field, geometry)).astype(np.float32)


def jacobian_stats(jac: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Folding percentage (J <= 0), SD of log J (J clipped to [1e-9, 1e9]), min/max/mean J.

    Statistics are taken inside ``mask`` when given (it must not be empty).
    """
    j = np.asarray(jac, dtype=np.float64)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != j.shape:
            raise DeepLungRegError(f"jacobian_stats: mask shape {m.shape} does not match {j.shape}")
        if not m.any():
            raise DeepLungRegError("jacobian_stats: the mask is empty")
        j = j[m]
    j = j.ravel()
    logj = np.log(np.clip(j, 1e-9, 1e9))
    return {
        "folding_percent": float(100.0 * np.mean(j <= 0)),
        "sd_log_j": float(logj.std()),
        "min_j": float(j.min()),
        "max_j": float(j.max()),
        "mean_j": float(j.mean()),
    }
