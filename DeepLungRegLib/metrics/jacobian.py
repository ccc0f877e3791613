"""Jacobian determinant of displacement fields, in world (LPS mm) coordinates."""

from __future__ import annotations

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..transforms.warp import as_field_array
from .moments import RunningMoments


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


def jacobian_determinant(field: np.ndarray, geometry: Geometry, *, slab_voxels: int = 4_000_000) -> np.ndarray:
    """``det(I + grad u)`` at every voxel, shape ``(Z, Y, X)`` float32.

    The same differences as :func:`spatial_gradient`, computed in float32 a slab
    of slices at a time (with one slice of overlap each side), so the memory
    beyond the field and the result stays bounded for full-resolution CTs
    (``field`` may be a :class:`~DeepLungRegLib.transforms.fields.SlabField`, which is then never whole).
    """
    f = as_field_array(field)  # a SlabField is read a slab at a time
    if f.shape != (*geometry.shape, 3):
        raise DeepLungRegError(f"jacobian_determinant: field shape {f.shape} does not match the grid {(*geometry.shape, 3)}")
    inv = np.linalg.inv(geometry.direction_matrix).astype(np.float32)
    nz = geometry.shape[0]
    step = max(1, slab_voxels // max(1, geometry.shape[1] * geometry.shape[2]))
    out = np.empty(geometry.shape, np.float32)
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        lo, hi = max(0, z0 - 1), min(nz, z1 + 1)
        slab = np.asarray(f[lo:hi], dtype=np.float32)
        keep = slice(z0 - lo, z0 - lo + (z1 - z0))
        # g[c][d]: d u_c / d xi_d (xi: spacing-scaled index axes i, j, k)
        g = [[None] * 3 for _ in range(3)]
        for axis, col in ((2, 0), (1, 1), (0, 2)):
            for c in range(3):
                if slab.shape[axis] > 1:
                    g[c][col] = np.gradient(slab[..., c], geometry.spacing[col], axis=axis)[keep]
                else:
                    g[c][col] = np.zeros(slab[keep].shape[:3], np.float32)
        # world gradient G = g @ inv(D); J = det(I + G)
        m = [[sum(g[c][d] * inv[d, e] for d in range(3)) + (1.0 if c == e else 0.0) for e in range(3)] for c in range(3)]
        out[z0:z1] = (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                      - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                      + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    return out


def jacobian_stats(jac: np.ndarray, mask: np.ndarray | None = None, *, chunk: int = 1 << 22) -> dict[str, float]:
    """Folding percentage (J <= 0), SD of log J (J clipped to [1e-9, 1e9]), min/max/mean J.

    Statistics are taken inside ``mask`` when given (it must not be empty). The
    voxels are visited a chunk at a time with float64 sums, so the memory needed
    does not grow with the image.
    """
    j = np.asarray(jac)
    m = None
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != j.shape:
            raise DeepLungRegError(f"jacobian_stats: mask shape {m.shape} does not match {j.shape}")
        if not m.any():
            raise DeepLungRegError("jacobian_stats: the mask is empty")
    flat, mflat = j.reshape(-1), None if m is None else m.reshape(-1)
    values, logs = RunningMoments(), RunningMoments()
    folded = 0
    for i in range(0, flat.size, chunk):
        v = flat[i:i + chunk]
        if mflat is not None:
            v = v[mflat[i:i + chunk]]
        if v.size == 0:
            continue
        v = v.astype(np.float64)
        folded += int(np.count_nonzero(v <= 0))
        values.add(v)
        logs.add(np.log(np.clip(v, 1e-9, 1e9)))
    return {
        "folding_percent": float(100.0 * folded / values.n),
        "sd_log_j": logs.std,
        "min_j": values.min,
        "max_j": values.max,
        "mean_j": values.mean,
    }
