"""Ways users store the same physical image, for storage-invariance tests and benchmarks.

Each function returns the image (and, with ``label=True``, a mask) re-stored
another way: another voxel type, axis order, flips, an oblique or anisotropic
grid, a cropped or extended field of view. Axis-aligned re-storages are exact
(nearest-neighbour sampling at coinciding voxel centres); oblique and
anisotropic ones resample, as a scanner or a conversion tool would.
"""

from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from ..io.images import Image
from ..transforms.resample import resample_to_geometry
from ..transforms.warp import sample_on_grid


def signed_permutation(geometry: Geometry, axes: tuple[int, int, int], signs: tuple[int, int, int]) -> Geometry:
    """The grid with the same voxel centres as the axis-aligned ``geometry``, its index axis ``a``
    running along world axis ``axes[a]`` in direction ``signs[a]`` (e.g. RAS: (0, 1, 2), (-1, -1, 1))."""
    lo, hi = geometry.bounds_world()
    sw = geometry.spacing_along_world()
    nw = {w: geometry.size[geometry.nearest_axes()[0].index(w)] for w in range(3)}
    direction = np.zeros((3, 3))
    origin = np.zeros(3)
    for a in range(3):
        direction[axes[a], a] = signs[a]
        origin[axes[a]] = lo[axes[a]] if signs[a] > 0 else hi[axes[a]]
    return Geometry(tuple(nw[axes[a]] for a in range(3)), tuple(sw[axes[a]] for a in range(3)), tuple(origin), tuple(direction.ravel()))


def rotated(geometry: Geometry, rotation: np.ndarray, spacing: tuple[float, float, float]) -> Geometry:
    """A grid with direction ``rotation`` and ``spacing`` that covers all of ``geometry``."""
    lo, hi = geometry.bounds_world()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    local = corners @ rotation  # coordinates along the rotated axes
    mn, mx = local.min(0), local.max(0)
    size = tuple(int(np.ceil((mx[a] - mn[a]) / spacing[a])) + 1 for a in range(3))
    return Geometry(size, spacing, tuple(rotation @ mn), tuple(np.asarray(rotation).ravel()))


def restore(image: Image, target: Geometry, *, label: bool = False, exact: bool = True) -> Image:
    """``image`` sampled on ``target``: nearest neighbour for exact re-storages and labels, linear otherwise
    (anti-aliased when coarser; the border repeated outside the original field of view)."""
    if label:
        out = sample_on_grid(np.asarray(image.array, np.float32), image.geometry, target, mode="nearest", fill=0.0)
        return Image(out > 0.5, target)
    if exact:
        out = sample_on_grid(np.asarray(image.array, np.float32), image.geometry, target, mode="nearest", fill=None)
        return Image(out.astype(image.array.dtype), target)
    return resample_to_geometry(image, target, smooth=True, fill=None, float_output=True)


def cropped(geometry: Geometry, lo_vox: tuple[int, int, int], hi_vox: tuple[int, int, int]) -> Geometry:
    """``geometry`` without ``lo_vox`` voxels at the start and ``hi_vox`` at the end of each index axis."""
    size = tuple(geometry.size[a] - lo_vox[a] - hi_vox[a] for a in range(3))
    return geometry.crop(lo_vox, size)


def extended(geometry: Geometry, vox: tuple[int, int, int]) -> Geometry:
    """``geometry`` with ``vox`` more voxels before and after along each index axis."""
    origin = geometry.index_to_world(-np.asarray(vox, float)[None])[0]
    size = tuple(geometry.size[a] + 2 * vox[a] for a in range(3))
    return Geometry(size, geometry.spacing, tuple(origin), geometry.direction)


def padded(image: Image, target: Geometry, value: float) -> Image:
    """``image`` on a larger grid ``target`` (same voxel centres), ``value`` around it."""
    out = sample_on_grid(np.asarray(image.array, np.float32), image.geometry, target, mode="nearest", fill=value)
    return Image(out.astype(image.array.dtype), target)


def write_uint16_nifti(image: Image, path, offset: float = 1024.0) -> None:
    """Write a CT (HU) as unsigned 16-bit voxels ``HU + offset`` with the NIfTI rescale intercept ``-offset``,
    as many scanners' exports do; readers that honour the intercept get the HU back."""
    import struct
    from pathlib import Path

    from ..io.images import write_image

    path = Path(path)
    if not path.name.endswith(".nii"):
        raise ValueError("write_uint16_nifti: write an uncompressed .nii")
    values = np.clip(np.round(np.asarray(image.array, float) + offset), 0, 65535).astype(np.uint16)
    write_image(image.with_array(values), path, compress=False)
    data = bytearray(path.read_bytes())
    struct.pack_into("<2f", data, 112, 1.0, -offset)  # scl_slope, scl_inter
    path.write_bytes(bytes(data))


#: The storages of the invariance matrix: name -> kind ("exact": the same voxel values on the same voxel
#: centres; "resampled": interpolated onto other centres, or another field of view).
STORAGES = {
    "float32": "exact", "float64": "exact", "uint16 file, intercept -1024": "exact", "RAS": "exact", "permuted axes": "exact",
    "oblique 2 mm": "resampled", "anisotropic 2x2x4 mm": "resampled", "cropped 2 cm": "resampled", "extended 3 cm": "resampled",
}


def stored_as(image: Image, mask: Image, name: str, workdir, spacing: float = 4.0) -> tuple[Image, Image]:
    """``image`` (a CT on an axis-aligned grid of ``spacing`` mm) and its ``mask`` stored as ``name`` of
    :data:`STORAGES`: the same physical image. The uint16 storage goes through a file in ``workdir``."""
    from pathlib import Path

    g = image.geometry
    if name in ("float32", "float64"):
        return image.with_array(image.array.astype(name)), mask
    if name.startswith("uint16"):
        from ..io.images import read_image

        path = Path(workdir) / "uint16.nii"
        write_uint16_nifti(image, path)
        return read_image(path), mask
    if name in ("RAS", "permuted axes"):
        t = signed_permutation(g, (0, 1, 2), (-1, -1, 1)) if name == "RAS" else signed_permutation(g, (1, 2, 0), (1, -1, 1))
        return restore(image, t), restore(mask, t, label=True)
    if name.startswith("cropped"):
        t = cropped(g, (5, 3, 0), (5, 3, 0))  # 5 voxels left and right, 3 front and back
        return restore(image, t), restore(mask, t, label=True)
    if name.startswith("extended"):
        t = extended(g, (8, 8, 0))  # 8 voxels more air on each side
        return padded(image, t, -1024.0), restore(mask, t, label=True)
    if name.startswith("oblique"):
        c, s_ = np.cos, np.sin
        ax, ay, az = 0.35, 0.2, -0.3
        rx = np.array([[1, 0, 0], [0, c(ax), -s_(ax)], [0, s_(ax), c(ax)]])
        ry = np.array([[c(ay), 0, s_(ay)], [0, 1, 0], [-s_(ay), 0, c(ay)]])
        rz = np.array([[c(az), -s_(az), 0], [s_(az), c(az), 0], [0, 0, 1]])
        t = rotated(g, rz @ ry @ rx, (spacing / 2,) * 3)
    elif name.startswith("anisotropic"):
        t = rotated(g, np.eye(3), (spacing / 2, spacing / 2, spacing))
    else:
        raise ValueError(f"stored_as: unknown storage {name!r}")
    return restore(image, t, exact=False), restore(mask, t, label=True)
