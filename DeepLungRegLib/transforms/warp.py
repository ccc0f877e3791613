"""Warping images by displacement fields (torch, differentiable, CPU or CUDA).

This module is the only place where world coordinates become the normalised
``[-1, 1]`` coordinates of :func:`torch.nn.functional.grid_sample`
(``align_corners=True``: -1 and +1 are the centres of the first and last
voxels). Everything outside works in LPS millimetres.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image

_MODES = {"linear": "bilinear", "nearest": "nearest"}


def _world_to_normalised(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Affine ``(A, b)`` with ``n = x @ A.T + b`` mapping LPS mm to grid_sample coordinates."""
    inv = np.linalg.inv(geometry.direction_matrix @ np.diag(geometry.spacing))  # world -> ijk
    scale = 2.0 / np.maximum(np.asarray(geometry.size, dtype=float) - 1.0, 1.0)
    a = np.diag(scale) @ inv
    b = -a @ np.asarray(geometry.origin) - 1.0
    return a, b


def world_grid_tensor(geometry: Geometry, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LPS coordinates of every voxel of ``geometry``, shape ``(Z, Y, X, 3)``."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float64) for n in geometry.shape), indexing="ij")
    ijk = torch.stack([xx, yy, zz], dim=-1)
    m = torch.as_tensor(geometry.direction_matrix @ np.diag(geometry.spacing), device=device, dtype=torch.float64)
    o = torch.as_tensor(geometry.origin, device=device, dtype=torch.float64)
    return (ijk @ m.T + o).to(dtype)


class GridSampler:
    """Samples a volume on a moving grid at ``x_fixed + u(x_fixed)``.

    Precomputes the normalised coordinates of the fixed grid's voxels in the
    moving grid so that each call only adds ``u @ A.T``. Use one instance per
    (fixed grid, moving grid) pair inside optimisation loops.

    Args:
        fixed: grid on which the field is sampled and the output lives.
        moving: grid of the volume being sampled.
    """

    def __init__(self, fixed: Geometry, moving: Geometry, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.fixed, self.moving = fixed, moving
        a, b = _world_to_normalised(moving)
        world = world_grid_tensor(fixed, device, torch.float64)
        self._a = torch.as_tensor(a, device=device, dtype=dtype)
        self.base = (world @ torch.as_tensor(a, device=device, dtype=torch.float64).T + torch.as_tensor(b, device=device, dtype=torch.float64)).to(dtype)

    def grid(self, field: torch.Tensor | None) -> torch.Tensor:
        """Normalised sampling grid ``(N, Z, Y, X, 3)`` for a field ``(N, Z, Y, X, 3)`` in mm (or None)."""
        base = self.base.unsqueeze(0)
        if field is None:
            return base
        if field.shape[-4:-1] != self.base.shape[:3]:
            raise DeepLungRegError(f"GridSampler: field shape {tuple(field.shape)} does not match the fixed grid {self.fixed.shape}")
        return base + field @ self._a.T

    def __call__(self, volume: torch.Tensor, field: torch.Tensor | None, mode: str = "linear", fill: float | None = 0.0) -> torch.Tensor:
        """Warp ``volume (N, C, Zm, Ym, Xm)`` by ``field (N, Z, Y, X, 3)`` mm; returns ``(N, C, Z, Y, X)``.

        Points that fall outside the moving grid get ``fill``, or the nearest border
        value when ``fill`` is None (for fields and features).
        """
        if mode not in _MODES:
            raise DeepLungRegError(f"warp: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
        grid = self.grid(field).to(volume.dtype)
        if grid.shape[0] != volume.shape[0]:
            grid = grid.expand(volume.shape[0], -1, -1, -1, -1)
        if fill is None:
            return F.grid_sample(volume, grid, mode=_MODES[mode], padding_mode="border", align_corners=True)
        if fill == 0.0:
            return F.grid_sample(volume, grid, mode=_MODES[mode], padding_mode="zeros", align_corners=True)
        out = F.grid_sample(volume - fill, grid, mode=_MODES[mode], padding_mode="zeros", align_corners=True)
        return out + fill


    def sample_points(self, volume: torch.Tensor, index: torch.Tensor, displacement: torch.Tensor, mode: str = "linear") -> torch.Tensor:
        """Sample ``volume (N, C, Zm, Ym, Xm)`` at a subset of fixed voxels moved by their displacements.

        Args:
            index: ``(M,)`` flat (z, y, x raster) indices of fixed-grid voxels.
            displacement: ``(N, M, 3)`` mm at those voxels.

        Returns:
            ``(N, C, M)``; points outside the moving grid get 0. Cheaper than a full
            warp when only the voxels of a mask matter.
        """
        if mode not in _MODES:
            raise DeepLungRegError(f"warp: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
        base = self.base.reshape(-1, 3)[index]  # (M, 3)
        grid = (base + displacement @ self._a.T).to(volume.dtype)  # (N, M, 3)
        out = F.grid_sample(volume, grid[:, :, None, None, :], mode=_MODES[mode], padding_mode="zeros", align_corners=True)
        return out[:, :, :, 0, 0]


def sample_at_voxels(volume: torch.Tensor, positions: torch.Tensor, mode: str = "linear", padding: str = "border") -> torch.Tensor:
    """Sample ``volume`` at continuous voxel positions of its own grid (2D or 3D).

    For networks, which work in the index space of their input grid.

    Args:
        volume: ``(N, C, Z, Y, X)`` or ``(N, C, Y, X)``.
        positions: ``(N, D, *So)`` positions in voxels, channels in array-axis order
            (``(z, y, x)`` in 3D, ``(y, x)`` in 2D).
        padding: ``"border"`` (nearest border value) or ``"zeros"`` outside the volume.

    Returns:
        ``(N, C, *So)``.
    """
    if mode not in _MODES:
        raise DeepLungRegError(f"sample_at_voxels: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
    d = volume.ndim - 2
    if d not in (2, 3) or positions.ndim != d + 2 or positions.shape[1] != d:
        raise DeepLungRegError(f"sample_at_voxels: positions must be (N, {d}, ...) for a {d}D volume, got {tuple(positions.shape)}")
    size = torch.tensor(volume.shape[2:], device=positions.device, dtype=positions.dtype).view(1, d, *([1] * d))
    norm = 2.0 * positions / (size - 1).clamp_min(1) - 1.0
    grid = norm.flip(1).permute(0, *range(2, d + 2), 1)  # grid_sample wants (x, y[, z]) last
    return F.grid_sample(volume, grid.to(volume.dtype), mode=_MODES[mode], padding_mode=padding, align_corners=True)


def warp_tensor(
    volume: torch.Tensor, moving: Geometry, field: torch.Tensor | None, fixed: Geometry, mode: str = "linear", fill: float | None = 0.0
) -> torch.Tensor:
    """Differentiable warp of ``volume (N, C, Zm, Ym, Xm)`` on ``moving`` by ``field (N, Z, Y, X, 3)`` on ``fixed``."""
    return GridSampler(fixed, moving, volume.device, volume.dtype)(volume, field, mode, fill)


def warp_image(
    moving: Image,
    field: np.ndarray | None,
    fixed: Geometry,
    *,
    mode: str = "linear",
    fill: float | None = 0.0,
    device: torch.device | str = "cpu",
) -> Image:
    """Warp a moving image onto the fixed grid: ``out(x) = moving(x + u(x))``.

    Args:
        moving: the image to resample.
        field: ``(Z, Y, X, 3)`` mm on ``fixed`` (``None`` = identity, i.e. plain resampling).
        fixed: the output grid.
        mode: ``"linear"`` for intensities, ``"nearest"`` for labels.
        fill: value outside the moving image (use -1024 for CT); ``None`` repeats the nearest border value.
    """
    if field is not None:
        field = np.asarray(field)
        if field.shape != (*fixed.shape, 3):
            raise DeepLungRegError(f"warp_image: field shape {field.shape} does not match the fixed grid {(*fixed.shape, 3)}")
    src = np.asarray(moving.array)
    out_dtype = src.dtype
    vol = torch.as_tensor(src.astype(np.float32))[None, None].to(device)
    f = None if field is None else torch.as_tensor(np.asarray(field, dtype=np.float32))[None].to(device)
    with torch.no_grad():
        out = warp_tensor(vol, moving.geometry, f, fixed, mode=mode, fill=fill)[0, 0].cpu().numpy()
    if out_dtype.kind in "iub":
        out = np.round(out) if mode == "nearest" else out
        if mode == "nearest" or out_dtype.kind == "b":
            out = out.astype(out_dtype)
    return Image(out, fixed)


def sample_field_at_points(field: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Trilinearly interpolate a field ``(Z, Y, X, 3)`` at LPS points ``(N, 3)``; returns ``(N, 3)``.

    Points outside the grid take the value of the nearest border voxel.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    f = torch.as_tensor(np.asarray(field, dtype=np.float64)).permute(3, 0, 1, 2)[None]  # (1, 3, Z, Y, X)
    a, b = _world_to_normalised(geometry)
    n = torch.as_tensor(points @ a.T + b).view(1, -1, 1, 1, 3)
    out = F.grid_sample(f, n, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(3, -1).T.numpy()
