"""The image geometry type and the project's coordinate conventions.

Conventions (obeyed everywhere in DeepLungRegLib)
-------------------------------------------------
* Voxel arrays are indexed ``(z, y, x)``, as ``SimpleITK.GetArrayFromImage``
  returns them.
* The world frame is **LPS** in millimetres (ITK/DICOM). World points are
  arrays of shape ``(N, 3)`` with columns ``(x, y, z)`` = (L, P, S).
* A continuous voxel *index* is ``(i, j, k)`` = (x, y, z) index order, like
  ITK: ``world = origin + direction @ (spacing * ijk)``.
* A displacement field is an array ``(Z, Y, X, 3)`` sampled on the *fixed*
  grid, in mm along the world (LPS) axes, in the resampling direction:
  ``x_moving = x_fixed + u(x_fixed)``.
* RAS appears only in :func:`lps_to_ras` / :func:`ras_to_lps`, used by the
  code that talks to Slicer/MRML and by markup readers.

Frames, and where each is converted (:mod:`DeepLungRegLib.transforms.frames`
unless said otherwise):

* **world**: LPS mm, the frame of every field, landmark and file.
* **index**: ``(i, j, k)`` of a :class:`Geometry`, ``world = origin +
  scaled_direction @ ijk``.
* **working frame**: the LPS-axis-aligned grids the methods work on,
  :func:`~DeepLungRegLib.transforms.frames.to_working_frame`.
* **network voxels**: displacements ``(N, 3, Z, Y, X)`` in voxels of a network
  grid, channels in array order ``(z, y, x)``;
  :func:`~DeepLungRegLib.transforms.frames.voxel_to_world` and
  :func:`~DeepLungRegLib.transforms.frames.world_to_voxel`.
* **normalised**: ``grid_sample``'s ``[-1, 1]`` coordinates, only inside
  :mod:`DeepLungRegLib.transforms.warp`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..errors import DeepLungRegError

#: The single LPS <-> RAS flip (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Convert world points ``(N, 3)`` (or vectors) from LPS to RAS."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """Convert world points ``(N, 3)`` (or vectors) from RAS to LPS."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


@dataclass(frozen=True)
class Geometry:
    """Sampling grid of a 3D image in the LPS world frame.

    Attributes:
        size: number of voxels along ``(x, y, z)`` (ITK order).
        spacing: voxel size in mm along ``(x, y, z)``.
        origin: LPS position in mm of voxel ``(0, 0, 0)``.
        direction: 3x3 matrix whose columns are the LPS directions of the
            ``i``, ``j``, ``k`` index axes.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(s) for s in self.origin)
        direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).reshape(-1))
        if len(size) != 3 or len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
            raise DeepLungRegError(
                f"Geometry: need 3 sizes, 3 spacings, 3 origin values and a 3x3 direction, got "
                f"{len(size)}, {len(spacing)}, {len(origin)}, {len(direction)}"
            )
        if min(size) < 1:
            raise DeepLungRegError(f"Geometry: every size must be >= 1, got {size}")
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise DeepLungRegError(f"Geometry: spacing must be finite and > 0, got {spacing}")
        if not all(np.isfinite(origin)):
            raise DeepLungRegError(f"Geometry: origin must be finite, got {origin}")
        d = np.asarray(direction).reshape(3, 3)
        if not np.all(np.isfinite(d)) or abs(np.linalg.det(d)) < 1e-6:
            raise DeepLungRegError("Geometry: direction matrix is singular or not finite")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(Z, Y, X)``."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction as a 3x3 array (columns = index axes in LPS)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def scaled_direction(self) -> np.ndarray:
        """``direction @ diag(spacing)``: the 3x3 matrix mapping an index step ``(di, dj, dk)`` to LPS mm."""
        return self.direction_matrix @ np.diag(self.spacing)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size along the array axes ``(z, y, x)`` (the index axes ``k, j, i``)."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping ``(i, j, k, 1)`` to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.scaled_direction
        m[:3, 3] = self.origin
        return m

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing) * abs(np.linalg.det(self.direction_matrix)) / 1000.0)

    # ------------------------------------------------------------ conversions
    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(N, 3)`` in ``(i, j, k)`` order to LPS mm ``(N, 3)``."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.scaled_direction.T + np.asarray(self.origin)

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map LPS mm points ``(N, 3)`` to continuous indices ``(N, 3)`` in ``(i, j, k)`` order."""
        points = np.asarray(points, dtype=float)
        inv = np.linalg.inv(self.scaled_direction)
        return (points - np.asarray(self.origin)) @ inv.T

    def world_coordinates(self) -> np.ndarray:
        """LPS coordinates of every voxel centre, shape ``(Z, Y, X, 3)``."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in self.shape), indexing="ij")
        ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
        return self.index_to_world(ijk).reshape(*self.shape, 3)

    def bounds_world(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box ``(min, max)`` of the voxel centres."""
        corners = np.array([[a, b, c] for a in (0, self.size[0] - 1) for b in (0, self.size[1] - 1) for c in (0, self.size[2] - 1)], dtype=float)
        w = self.index_to_world(corners)
        return w.min(axis=0), w.max(axis=0)

    def nearest_axes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """The LPS world axis each index axis ``(i, j, k)`` runs along, and its sign.

        For an oblique grid, the assignment of world axes to index axes that
        maximises the summed ``|cos|`` of their angles (a permutation, so every
        world axis is taken once). Returns ``(world_axis, sign)``, one entry per
        index axis; e.g. a RAS-stored image gives ``((0, 1, 2), (-1, -1, 1))``.
        """
        d = np.abs(self.direction_matrix)
        best = max(itertools.permutations(range(3)), key=lambda p: sum(d[p[a], a] for a in range(3)))
        signs = tuple(1 if self.direction_matrix[best[a], a] >= 0 else -1 for a in range(3))
        return tuple(int(w) for w in best), signs

    def is_axis_aligned(self, tol: float = 1e-6) -> bool:
        """True when every index axis runs along an LPS axis (a signed permutation of the identity)."""
        axes, signs = self.nearest_axes()
        perm = np.zeros((3, 3))
        for a in range(3):
            perm[axes[a], a] = signs[a]
        return bool(np.allclose(self.direction_matrix, perm, atol=tol))

    def spacing_along_world(self) -> tuple[float, float, float]:
        """Voxel size along the LPS axes ``(x, y, z)``: the spacing of the index axis nearest to each."""
        axes, _ = self.nearest_axes()
        out = [0.0, 0.0, 0.0]
        for a in range(3):
            out[axes[a]] = self.spacing[a]
        return tuple(out)

    # ------------------------------------------------------------- new grids
    def axis_aligned(self, spacing: float | tuple[float, float, float] | None = None) -> "Geometry":
        """The grid along the LPS axes (identity direction) that covers this grid's voxel centres.

        The working frame of every method: grids of the same physical region come
        out the same however the image was stored (axis order, flips, obliquity).

        Args:
            spacing: mm along ``(x, y, z)``, or one number; default
                :meth:`spacing_along_world`. For an identity-direction grid and the
                same spacing this is :meth:`with_spacing`.
        """
        sp = np.broadcast_to(np.asarray(self.spacing_along_world() if spacing is None else spacing, dtype=float), (3,))
        if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
            raise DeepLungRegError(f"Geometry.axis_aligned: spacing must be > 0, got {tuple(sp)}")
        lo, hi = self.bounds_world()
        size = np.maximum(1, np.round((hi - lo) / sp).astype(int) + 1)
        return Geometry(tuple(size), tuple(sp), tuple(lo))

    def with_spacing(self, spacing: float | tuple[float, float, float]) -> "Geometry":
        """Same physical extent and direction, resampled to ``spacing`` mm.

        The new grid's first voxel centre coincides with the old one's and the
        size is chosen so that the extent is covered.
        """
        sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
        if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
            raise DeepLungRegError(f"Geometry.with_spacing: spacing must be > 0, got {tuple(sp)}")
        extent = (np.asarray(self.size) - 1) * np.asarray(self.spacing)
        size = np.maximum(1, np.round(extent / sp).astype(int) + 1)
        return Geometry(tuple(size), tuple(sp), self.origin, self.direction)

    def crop(self, start_ijk: tuple[int, int, int], size: tuple[int, int, int]) -> "Geometry":
        """Sub-grid starting at index ``start_ijk`` (``(i, j, k)``) with ``size`` voxels."""
        origin = self.index_to_world(np.asarray(start_ijk, dtype=float)[None])[0]
        return Geometry(tuple(int(s) for s in size), self.spacing, tuple(origin), self.direction)

    def same_as(self, other: "Geometry", tol: float = 1e-4) -> bool:
        """True when both grids sample the same points (within ``tol`` mm / relative)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=tol, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    # ---------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))
