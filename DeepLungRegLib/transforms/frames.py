"""The working frame: one way of storing both images before any feature is computed.

Users bring images stored in many ways: int16, uint16 or float voxels, axes in
LPS or RAS order or permuted, flipped, oblique direction matrices, different
spacings and fields of view for inhale and exhale. A registration's result in
world coordinates must not depend on any of that. :func:`to_working_frame`
puts an image on an LPS-axis-aligned grid (identity direction) as float32,
with voxels of about 1 mm or more:

* when the image is already stored along the LPS axes (in any order, with
  any flips), this is a lossless transpose and flip of the array
  (:func:`reorient`), and voxels finer than 0.9 mm are averaged in whole
  blocks (a slab at a time: a 512x512x600 CT needs no full-size float copy);
  so all those storages give identical working images;
* an oblique image is resampled once, anti-aliased, onto the axis-aligned
  grid over its bounding box.

Every method then sees both images on axis-aligned grids, and the field it
returns is resampled once onto the fixed image's own grid
(:func:`~DeepLungRegLib.transforms.fields.field_to_grid`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import Geometry
from ..io.images import Image
from .resample import block_reduce, resample_to_geometry

#: About the finest working voxel size (mm): every method's finest level is coarser (2-4 mm),
#: and a 512x512x600 CT at 0.7 mm becomes ~40 M voxels instead of 157 M.
WORKING_SPACING_MM = 1.0
#: Voxels at least this fraction of :data:`WORKING_SPACING_MM` are kept as they are (a 0.98 mm CT is
#: not resampled to 1 mm); finer ones are averaged in blocks of whole voxels.
COARSEST_FRACTION = 0.9


def reorient_array(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """:func:`reorient` for an array ``(Z, Y, X, ...)`` on ``geometry`` (trailing axes, e.g. a field's
    vector components, are kept as they are): returns the view and its new geometry."""
    g = geometry
    axes, signs = g.nearest_axes()
    # new index axis w (world axis w) is old index axis a with axes[a] == w
    old_of_new = [axes.index(w) for w in range(3)]
    # array axes are (k, j, i): index axis a is array axis 2 - a
    order = [2 - old_of_new[2 - n] for n in range(3)] + list(range(3, np.ndim(array)))
    arr = np.transpose(array, order)
    flip = tuple(n for n in range(3) if signs[old_of_new[2 - n]] < 0)
    if flip:
        arr = np.flip(arr, axis=flip)
    start = np.array([0.0 if signs[a] > 0 else g.size[a] - 1 for a in range(3)])
    origin = g.index_to_world(start[None])[0]
    d = g.direction_matrix
    direction = np.stack([d[:, old_of_new[w]] * signs[old_of_new[w]] for w in range(3)], axis=1)
    size = tuple(g.size[old_of_new[w]] for w in range(3))
    spacing = tuple(g.spacing[old_of_new[w]] for w in range(3))
    return arr, Geometry(size, spacing, tuple(origin), tuple(direction.ravel()))


def reorient(image: Image) -> Image:
    """The same image stored with its index axes along L, P, S in that order and increasing.

    Lossless (a transpose and flips of the array, returned as a view): the
    voxels keep their world positions. An oblique grid gets the storage whose
    direction is closest to the identity.
    """
    return Image(*reorient_array(image.array, image.geometry))


def _block_factors(geometry: Geometry, min_spacing_mm: float) -> tuple[int, int, int]:
    """Per index axis of the reoriented grid: the smallest whole number of voxels that spans at least
    :data:`COARSEST_FRACTION` of ``min_spacing_mm`` (1 for voxels that are already that large)."""
    return tuple(max(1, int(np.ceil(COARSEST_FRACTION * min_spacing_mm / s - 1e-9))) for s in geometry.spacing)


def working_geometry(geometry: Geometry, min_spacing_mm: float = WORKING_SPACING_MM) -> Geometry:
    """The working grid of an image on ``geometry``: along the LPS axes, each voxel a whole block of the
    image's own voxels at least about ``min_spacing_mm`` wide.

    For a grid stored along the axes (in any order, with any flips) this is the
    grid of block means of its voxels (the grid itself where the voxels are
    large enough); an oblique grid gets the axis-aligned grid over its bounding
    box at those block sizes.
    """
    r = reorient_array(np.broadcast_to(np.zeros((), np.uint8), geometry.shape), geometry)[1]
    f = _block_factors(r, min_spacing_mm)
    spacing = tuple(r.spacing[a] * f[a] for a in range(3))
    if r.is_axis_aligned():
        size = tuple(max(1, r.size[a] // f[a]) for a in range(3))
        origin = np.asarray(r.origin) + (np.asarray(r.spacing) * (np.asarray(f) - 1) / 2.0)
        return Geometry(size, spacing, tuple(origin))
    return geometry.axis_aligned(spacing)


def to_working_frame(image: Image, *, min_spacing_mm: float = WORKING_SPACING_MM, label: bool = False) -> Image:
    """``image`` on its :func:`working_geometry`: float32 values, or bool for a ``label`` (mask) image.

    An image stored along the axes needs no interpolation: its voxels are
    reordered (losslessly) and, where finer than the working grid, averaged in
    whole blocks a slab at a time. An oblique image is resampled once,
    anti-aliased; outside its field of view (the corners of its bounding box)
    an intensity image repeats its nearest border value (filling them with air
    would join lungs that touch the border to the air around the body), a label
    image is False.
    """
    target = working_geometry(image.geometry, min_spacing_mm)
    r = reorient(image)
    src = r.with_array(np.asarray(r.array) > 0) if label else r
    if r.geometry.is_axis_aligned():
        f = _block_factors(r.geometry, min_spacing_mm)
        if max(f) > 1:
            src = block_reduce(src, f)
        arr = np.asarray(src.array) > 0.5 if label else np.ascontiguousarray(src.array, dtype=np.float32)
        return Image(arr, target)
    if label:
        src = src.with_array(np.asarray(src.array, dtype=np.float32))
        return Image(resample_to_geometry(src, target, smooth=True).array > 0.5, target)
    return resample_to_geometry(src, target, smooth=True, fill=None, float_output=True)


def world_to_voxel(field: np.ndarray, grid: Geometry) -> torch.Tensor:
    """A world field ``(Z, Y, X, 3)`` mm (LPS) on ``grid`` -> network voxels ``(1, 3, Z, Y, X)``, channels
    ``(z, y, x)``; the inverse of :func:`voxel_to_world`."""
    ijk = np.asarray(field, np.float64) @ np.linalg.inv(grid.scaled_direction).T
    return torch.as_tensor(np.stack([ijk[..., 2], ijk[..., 1], ijk[..., 0]])[None], dtype=torch.float32)


def voxel_to_world(displacement: torch.Tensor | np.ndarray, grid: Geometry) -> np.ndarray:
    """Network voxels ``(1, 3, Z, Y, X)`` (channels ``(z, y, x)``) on ``grid`` -> a world field ``(Z, Y, X, 3)`` mm (LPS)."""
    d = displacement[0]
    d = d.detach().to("cpu", torch.float64).numpy() if isinstance(d, torch.Tensor) else np.asarray(d, np.float64)
    ijk = np.stack([d[2], d[1], d[0]], -1)  # (Z, Y, X, 3) in i, j, k
    return (ijk @ grid.scaled_direction.T).astype(np.float32)
