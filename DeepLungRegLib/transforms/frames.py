"""The working frame: one way of storing both images before any feature is computed.

Users bring images stored in many ways: int16, uint16 or float voxels, axes in
LPS or RAS order or permuted, flipped, oblique direction matrices, different
spacings and fields of view for inhale and exhale. A registration's result in
world coordinates must not depend on any of that. :func:`to_working_frame`
puts an image on an LPS-axis-aligned grid (identity direction) as float32 at
no finer than ``min_spacing_mm``:

* when the image is already stored along the LPS axes (in any order, with
  any flips) and no finer than that, this is a lossless transpose and flip of
  the array (:func:`reorient`), so those storages give identical working
  images;
* otherwise (oblique grids, finer voxels) the image is resampled once,
  anti-aliased, onto :func:`working_geometry`.

Every method then sees both images on axis-aligned grids, and the field it
returns is resampled once onto the fixed image's own grid
(:func:`~DeepLungRegLib.transforms.fields.field_to_grid`).
"""

from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from ..io.images import Image
from .resample import resample_to_geometry

#: Finest working voxel size (mm): every method's finest level is coarser (2-4 mm),
#: and a 512x512x600 CT at 0.7 mm becomes ~40 M voxels instead of 157 M.
WORKING_SPACING_MM = 1.0


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


def working_geometry(geometry: Geometry, min_spacing_mm: float = WORKING_SPACING_MM) -> Geometry:
    """The axis-aligned grid covering ``geometry`` at its own spacing, but no finer than ``min_spacing_mm``."""
    return geometry.axis_aligned(tuple(max(s, min_spacing_mm) for s in geometry.spacing_along_world()))


def to_working_frame(image: Image, *, min_spacing_mm: float = WORKING_SPACING_MM, label: bool = False) -> Image:
    """``image`` on its :func:`working_geometry`: float32 values, or bool for a ``label`` (mask) image.

    Outside the original field of view (the corners of an oblique grid's
    bounding box) an intensity image repeats its nearest border value (filling
    them with air would join lungs that touch the border to the air around the
    body); a label image is False there.
    """
    target = working_geometry(image.geometry, min_spacing_mm)
    r = reorient(image)
    if r.geometry.same_as(target, tol=1e-5):
        arr = np.asarray(r.array) > 0 if label else np.ascontiguousarray(r.array, dtype=np.float32)
        return Image(arr, target)
    if label:
        src = r.with_array((np.asarray(r.array) > 0).astype(np.float32))
        return Image(resample_to_geometry(src, target, smooth=True).array > 0.5, target)
    return resample_to_geometry(image, target, smooth=True, fill=None, float_output=True)
