"""A pair on a network's grid: what every network reads, in training and at inference.

Both images (and lung masks) are resampled onto one grid of ``shape`` voxels at
``spacing_mm`` along the LPS axes, centred on the fixed lung, intensities
windowed to ``[0, 1]``. The network grid is a :class:`Geometry`, so a network's
voxel displacement becomes a world field at the boundary
(:func:`~DeepLungRegLib.transforms.frames.voxel_to_world`), never inside the network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..features.intensity import normalise_ct
from ..geometry import Geometry
from ..io.images import Image
from ..transforms.resample import resample_to_geometry


@dataclass
class NetworkPair:
    """One pair on the network grid.

    Attributes:
        geometry: the network grid (fixed image space).
        fixed, moving: ``(1, 1, Z, Y, X)`` intensities in ``[0, 1]``.
        fixed_mask, moving_mask: ``(1, 1, Z, Y, X)`` lung masks (0/1), or None.
        fixed_points, moving_points: landmarks ``(K, 3)`` LPS mm, or None.
        name: where it came from.
        true_displacement: ``(1, 3, Z, Y, X)`` the known displacement in network voxels ``(z, y, x)``
            (simulated pairs), or None (real pairs).
    """

    geometry: Geometry
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor | None = None
    moving_mask: torch.Tensor | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    name: str = ""
    true_displacement: torch.Tensor | None = None

    def to(self, device: torch.device) -> "NetworkPair":
        """The tensors on ``device`` (geometry, landmarks and name unchanged)."""
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(self, fixed=self.fixed.to(device), moving=self.moving.to(device), fixed_mask=mv(self.fixed_mask),
                                   moving_mask=mv(self.moving_mask), true_displacement=mv(self.true_displacement))


def network_grid(fixed: Image, fixed_mask: Image | None, spacing_mm: float, shape: tuple[int, int, int]) -> Geometry:
    """A grid of ``shape`` (z, y, x) voxels at ``spacing_mm`` along the LPS axes (the networks learnt
    anatomy in that orientation, whatever the storage of the image), centred on the fixed lung (or the image)."""
    g = fixed.geometry
    if fixed_mask is not None and np.any(fixed_mask.array):
        kk, jj, ii = np.nonzero(fixed_mask.array)
        lo = np.array([ii.min(), jj.min(), kk.min()], float)
        hi = np.array([ii.max(), jj.max(), kk.max()], float)
        centre_ijk = (lo + hi) / 2
    else:
        centre_ijk = (np.asarray(g.size, float) - 1) / 2
    centre = g.index_to_world(centre_ijk[None])[0]
    size = (shape[2], shape[1], shape[0])
    sp = (float(spacing_mm),) * 3
    half = (np.asarray(size, float) - 1) / 2 * spacing_mm
    origin = centre - half
    return Geometry(size, sp, tuple(origin))


def to_network_pair(fixed: Image, moving: Image, grid: Geometry, fixed_mask: Image | None = None, moving_mask: Image | None = None,
                    fixed_points: np.ndarray | None = None, moving_points: np.ndarray | None = None, name: str = "") -> NetworkPair:
    """Resample a pair (CT in HU) onto ``grid`` (the moving image through the identity in world space)."""
    def img(x: Image) -> torch.Tensor:
        a = resample_to_geometry(x.with_array(normalise_ct(x.array)), grid, smooth=True, fill=0.0).array
        return torch.as_tensor(a, dtype=torch.float32)[None, None]

    def msk(x: Image | None) -> torch.Tensor | None:
        if x is None:
            return None
        a = resample_to_geometry(x.with_array(np.asarray(x.array, np.float32)), grid, fill=0.0).array > 0.5
        return torch.as_tensor(a, dtype=torch.float32)[None, None]

    return NetworkPair(grid, img(fixed), img(moving), msk(fixed_mask), msk(moving_mask), fixed_points, moving_points, name)
