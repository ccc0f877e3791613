"""Target registration error of landmark pairs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DeepLungRegError
from ..io.landmarks import check_pairing
from ..geometry import Geometry
from ..transforms.warp import sample_field_at_points


@dataclass(frozen=True)
class TRESummary:
    """Summary of per-landmark errors in mm."""

    n: int
    mean: float
    std: float
    median: float
    p95: float
    max: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} mm (median {self.median:.2f}, 95th {self.p95:.2f}, max {self.max:.2f}, n={self.n})"


def tre_vectors(fixed_points: np.ndarray, moving_points: np.ndarray, field: np.ndarray | None = None,
                geometry: Geometry | None = None) -> np.ndarray:
    """Per-landmark error vectors ``p + u(p) - q`` in mm (LPS): where the registration maps each fixed
    point, minus its moving point.

    Args:
        fixed_points: ``(N, 3)`` LPS mm landmarks ``p`` in the fixed image.
        moving_points: ``(N, 3)`` corresponding landmarks ``q`` in the moving image.
        field: optional ``(Z, Y, X, 3)`` field on ``geometry``; ``None`` gives the initial error.
        geometry: the fixed grid of ``field``.

    Returns:
        ``(N, 3)`` error vectors in mm.
    """
    check_pairing(fixed_points, moving_points, "tre")
    p = np.asarray(fixed_points, dtype=float)
    q = np.asarray(moving_points, dtype=float)
    if field is not None:
        if geometry is None:
            raise DeepLungRegError("tre: a field needs its geometry")
        p = p + sample_field_at_points(field, geometry, p)
    return p - q


def tre(fixed_points: np.ndarray, moving_points: np.ndarray, field: np.ndarray | None = None, geometry: Geometry | None = None) -> np.ndarray:
    """Per-landmark error ``|p + u(p) - q|`` in mm (the lengths of :func:`tre_vectors`, same arguments).

    Returns:
        ``(N,)`` errors in mm.
    """
    return np.linalg.norm(tre_vectors(fixed_points, moving_points, field, geometry), axis=1)


def tre_summary(errors: np.ndarray) -> TRESummary:
    """Mean, std, median, 95th percentile and max of per-landmark errors."""
    e = np.asarray(errors, dtype=float).ravel()
    if e.size == 0:
        raise DeepLungRegError("tre_summary: no errors given")
    return TRESummary(int(e.size), float(e.mean()), float(e.std()), float(np.median(e)), float(np.percentile(e, 95)), float(e.max()))
