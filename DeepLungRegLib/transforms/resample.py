"""Resampling onto new grids with SimpleITK (identity transform)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image, image_to_sitk

_INTERP = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample_to_geometry(image: Image, geometry: Geometry, *, mode: str = "linear", fill: float = 0.0, smooth: bool = False) -> Image:
    """Resample ``image`` onto ``geometry`` (same world position, identity transform).

    With ``smooth=True`` and a coarser target grid, a Gaussian with sigma
    proportional to the spacing ratio is applied first to avoid aliasing.
    """
    if mode not in _INTERP:
        raise DeepLungRegError(f"resample: unknown interpolation {mode!r}; use {', '.join(_INTERP)}")
    src = image_to_sitk(image if image.array.dtype != bool else image.with_array(image.array.astype(np.uint8)))
    if smooth and mode != "nearest":
        ratio = np.asarray(geometry.spacing) / np.asarray(image.geometry.spacing)
        sigma = [0.4 * s * max(r - 1.0, 0.0) for s, r in zip(image.geometry.spacing, ratio)]
        if max(sigma) > 0:
            src = sitk.SmoothingRecursiveGaussian(sitk.Cast(src, sitk.sitkFloat32), [max(s, 1e-3) for s in sigma])
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
