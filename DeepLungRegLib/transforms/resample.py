"""Resampling onto new grids with SimpleITK (identity transform)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image, image_to_sitk
from .warp import sample_on_grid

_INTERP = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample_to_geometry(image: Image, geometry: Geometry, *, mode: str = "linear", fill: float | None = 0.0, smooth: bool = False,
                         float_output: bool = False) -> Image:
    """Resample ``image`` onto ``geometry`` (same world position, identity transform).

    With ``smooth=True`` and a coarser target grid, a Gaussian with sigma
    proportional to the spacing ratio is applied first to avoid aliasing.
    Outside the image, voxels get ``fill``, or the nearest border value when
    ``fill`` is None (then the result is float32). Otherwise the output keeps
    the input's voxel type unless ``float_output`` (float32) or smoothing made
    it float32.
    """
    if mode not in _INTERP:
        raise DeepLungRegError(f"resample: unknown interpolation {mode!r}; use {', '.join(_INTERP)}")
    src = image_to_sitk(image if image.array.dtype != bool else image.with_array(image.array.astype(np.uint8)))
    if float_output:
        src = sitk.Cast(src, sitk.sitkFloat32)
    if smooth and mode != "nearest":
        # the target's voxel size along each source index axis (whatever the two grids' axis orders)
        target = np.abs(image.geometry.direction_matrix).T @ np.asarray(geometry.spacing_along_world())
        ratio = target / np.asarray(image.geometry.spacing)
        sigma = [0.4 * s * max(r - 1.0, 0.0) for s, r in zip(image.geometry.spacing, ratio)]
        if max(sigma) > 0 and min(image.geometry.size) >= 4:
            if src.GetPixelID() != sitk.sitkFloat32:  # (a cast to the same type would be a full copy)
                src = sitk.Cast(src, sitk.sitkFloat32)
            src = sitk.SmoothingRecursiveGaussian(src, [max(s, 1e-3) for s in sigma])
        elif max(sigma) > 0:  # ITK's recursive filter needs 4 voxels per axis; tiny images take scipy's
            from scipy.ndimage import gaussian_filter

            arr = gaussian_filter(sitk.GetArrayFromImage(src).astype(np.float32), [s / sp for s, sp in zip(sigma[::-1], image.geometry.spacing_zyx)],
                                  mode="nearest")
            smoothed = sitk.GetImageFromArray(arr)
            smoothed.CopyInformation(src)
            src = smoothed
    if fill is None:
        if mode == "bspline":
            raise DeepLungRegError("resample: border repetition (fill=None) works with 'linear' or 'nearest' interpolation")
        vol = np.array(sitk.GetArrayViewFromImage(src), dtype=np.float32)  # a writable copy for torch
        out = sample_on_grid(torch.from_numpy(vol), image.geometry, geometry, mode=mode, fill=None)
        return Image(out > 0.5 if image.array.dtype == bool else out, geometry)
    ref = sitk.Image(list(geometry.size), sitk.sitkUInt8)
    ref.SetSpacing(geometry.spacing)
    ref.SetOrigin(geometry.origin)
    ref.SetDirection(geometry.direction)
    out = sitk.Resample(src, ref, sitk.Transform(), _INTERP[mode], float(fill), src.GetPixelID())
    arr = sitk.GetArrayFromImage(out)
    if image.array.dtype == bool:
        arr = arr.astype(bool)
    return Image(arr, geometry)


def resample_to_spacing(image: Image, spacing: float | tuple[float, float, float], *, mode: str = "linear", fill: float = 0.0) -> Image:
    """Resample ``image`` to a new voxel ``spacing`` (mm), anti-aliased when coarsening."""
    return resample_to_geometry(image, image.geometry.with_spacing(spacing), mode=mode, fill=fill, smooth=True)


def block_reduce(image: Image, factors: tuple[int, int, int], *, slab_voxels: int = 1 << 24) -> Image:
    """Mean over blocks of ``factors`` voxels (along the index axes ``i, j, k``), as float32.

    The cheap first step of a large downsampling: a 512x512x600 CT is reduced
    a slab at a time without any full-size float copy. The block grid covers the
    whole blocks (a remainder of fewer than ``factors`` voxels at the far end is
    dropped); each block's centre is where its voxels' centres average.
    """
    f = tuple(int(v) for v in factors)
    if any(v < 1 for v in f):
        raise DeepLungRegError(f"block_reduce: factors must be >= 1, got {factors}")
    g = image.geometry
    size = tuple(max(1, g.size[a] // f[a]) for a in range(3))
    f = tuple(min(f[a], g.size[a]) for a in range(3))
    origin = g.index_to_world(((np.asarray(f, float) - 1) / 2)[None])[0]
    out_geom = Geometry(size, tuple(g.spacing[a] * f[a] for a in range(3)), tuple(origin), g.direction)
    fi, fj, fk = f
    nz, ny, nx = size[2], size[1], size[0]
    arr = image.array
    out = np.empty((nz, ny, nx), np.float32)
    step = max(1, slab_voxels // max(1, fk * ny * fj * nx * fi))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        block = np.asarray(arr[z0 * fk:z1 * fk, :ny * fj, :nx * fi], dtype=np.float32)
        out[z0:z1] = block.reshape(z1 - z0, fk, ny, fj, nx, fi).mean(axis=(1, 3, 5))
    return Image(out, out_geom)
