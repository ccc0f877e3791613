"""Automatic lung mask for CT in Hounsfield units (CPU, seconds).

Steps, on a copy resampled to about 3 mm:

1. air = voxels below ``threshold_hu`` (default -400 HU), opened by one
   voxel to cut thin bridges to the outside air;
2. air outside the body = the 3D air regions that reach a corner of an
   axial slice;
3. the lungs = the largest remaining 3D air components (small bowel gas and
   noise are dropped by a volume threshold);
4. vessels and airway walls are closed in by a morphological closing and hole
   filling; the mask is resampled back to the image grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..errors import DeepLungRegError
from ..io.images import Image
from ..transforms.frames import reorient
from ..transforms.resample import block_reduce, resample_to_geometry
from ..transforms.warp import warp_image


def _ball(r: int) -> np.ndarray:
    z, y, x = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (x * x + y * y + z * z) <= r * r


def _corner_air(air: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Label 3D air regions; return labels, count and the ids that reach a corner
    of an axial slice (the air around the body)."""
    lab, n = ndi.label(air)
    ny, nx = air.shape[1:]
    edges = np.concatenate([lab[:, y, x] for y in (0, min(2, ny - 1), -1, -min(3, ny)) for x in (0, min(2, nx - 1), -1, -min(3, nx))])
    return lab, n, np.unique(edges[edges > 0])


def lung_mask(ct: Image, *, threshold_hu: float = -400.0, working_spacing_mm: float = 3.0, min_volume_ml: float = 30.0) -> Image:
    """Segment the lungs of a CT image (HU).

    Args:
        ct: CT image in Hounsfield units.
        threshold_hu: air/tissue threshold.
        working_spacing_mm: spacing of the internal working copy.
        min_volume_ml: air components smaller than this are dropped.

    Returns:
        A boolean image on the CT's grid (``True`` = lung).
    """
    arr = ct.array
    if arr.size == 0:
        raise DeepLungRegError("lung_mask: the image is empty")
    if min(ct.geometry.size) < 4:
        raise DeepLungRegError(f"lung_mask: the image is too small for a lung mask ({ct.geometry.size} voxels)")
    # the working copy is stored along L, P, S (axial slices along the array's first axis) however the CT
    # is stored; an oblique grid keeps its own field of view (its slice corners are the scan's corners)
    stored = reorient(ct)
    own = stored.geometry
    target = own.with_spacing(tuple(max(s, working_spacing_mm) for s in own.spacing))
    # fine voxels are first averaged in whole blocks (a slab at a time: a 512x512x600 CT needs no full float copy)
    factors = tuple(max(1, int(np.floor(target.spacing[a] / own.spacing[a] + 1e-6))) for a in range(3))
    src = block_reduce(stored, factors) if max(factors) > 1 else ct
    work = resample_to_geometry(src, target, smooth=True, fill=None, float_output=True)
    a = work.array
    if min(a.shape) < 3:
        raise DeepLungRegError(f"lung_mask: the image is too small for a lung mask ({ct.geometry.size} voxels, "
                               f"{tuple(round(s, 1) for s in ct.geometry.spacing)} mm)")
    if float(np.percentile(a, 1)) > -300:
        raise DeepLungRegError("lung_mask: the image holds almost no air; is it a CT in Hounsfield units?")
    vox_ml = work.geometry.voxel_volume_ml
    # an opening cuts thin air bridges between the lungs and the outside air
    air = ndi.binary_opening(a < threshold_hu, structure=_ball(1))
    lab, n, outside_ids = _corner_air(air)
    if n == 0:
        raise DeepLungRegError("lung_mask: no air found below the threshold; cannot find the lungs")
    sizes = ndi.sum(air, lab, index=np.arange(1, n + 1)) * vox_ml
    sizes[outside_ids - 1] = 0.0
    order = np.argsort(sizes)[::-1] + 1
    if sizes[order[0] - 1] < min_volume_ml:
        raise DeepLungRegError("lung_mask: found no air region inside the body large enough to be a lung")
    biggest = sizes[order[0] - 1]
    keep_ids = [int(i) for i in order[:3] if sizes[i - 1] >= max(min_volume_ml, 0.08 * biggest)]
    candidates = lab
    mask = np.isin(candidates, keep_ids)
    r = max(1, int(round(6.0 / min(work.geometry.spacing))))
    mask = ndi.binary_closing(np.pad(mask, r), structure=_ball(r))[r:-r, r:-r, r:-r]
    mask = ndi.binary_fill_holes(mask)
    for k in range(mask.shape[0]):
        mask[k] = ndi.binary_fill_holes(mask[k])
    # back to the CT's grid a slab at a time (linear, then > 0.5: np.round sends 0.5 to 0)
    out = warp_image(work.with_array(mask.astype(np.float32)), None, ct.geometry, fill=0.0, dtype=np.uint8)
    return ct.with_array(out.array > 0)


def split_lungs(mask: Image) -> np.ndarray:
    """Label a lung mask into right (1) and left (2) lung, shape ``(Z, Y, X)`` uint8.

    The two largest connected components are used when the lungs are
    separate; otherwise the mask is cut at the median LPS x of its voxels.
    Left is the side with larger LPS x.
    """
    m = np.asarray(mask.array, dtype=bool)
    if not m.any():
        raise DeepLungRegError("split_lungs: the lung mask is empty")
    g = mask.geometry
    # world x of voxel (k, j, i) = ox + a i + b j + c k: evaluated a slice at a time (no full coordinate array)
    a, b, c = g.scaled_direction[0]
    row = g.origin[0] + a * np.arange(m.shape[2])[None, :] + b * np.arange(m.shape[1])[:, None]  # (Y, X)

    def world_x(k: int) -> np.ndarray:
        return row + c * k

    lab, n = ndi.label(m)
    out = np.zeros(m.shape, np.uint8)
    if n >= 2:
        # a slice at a time: ndi.sum and a whole-volume bincount make 8-byte copies of the labels
        sizes = sum(np.bincount(lab[k].reshape(-1), minlength=n + 1) for k in range(lab.shape[0]))[1:]
        ca, cb = np.argsort(sizes)[::-1][:2] + 1
        if sizes[cb - 1] >= 0.2 * sizes[ca - 1]:
            # world x is affine in the index: the mean world x of a component is the world x of its mean
            # index, summed a slice at a time
            acc = {ca: np.zeros(4), cb: np.zeros(4)}  # count, sum k, sum j, sum i
            jj, ii = np.arange(m.shape[1]), np.arange(m.shape[2])
            for k in range(m.shape[0]):
                for lab_id in (ca, cb):
                    sel = lab[k] == lab_id
                    cnt = int(sel.sum())
                    if cnt:
                        acc[lab_id] += (cnt, k * cnt, float(sel.sum(axis=1) @ jj), float(sel.sum(axis=0) @ ii))
            (na, za, ya, xa_), (nb, zb, yb, xb_) = acc[ca], acc[cb]
            xa = g.origin[0] + (a * xa_ + b * ya + c * za) / na
            xb = g.origin[0] + (a * xb_ + b * yb + c * zb) / nb
            right, left = (ca, cb) if xa < xb else (cb, ca)
            cut = 0.5 * (xa + xb)
            for k in range(m.shape[0]):
                if not m[k].any():
                    continue
                lk = lab[k]
                ok = out[k]
                ok[lk == right] = 1
                ok[lk == left] = 2
                # smaller pieces join the side they lie on
                rest = m[k] & (ok == 0)
                wx = world_x(k)
                ok[rest & (wx < cut)] = 1
                ok[rest & (wx >= cut)] = 2
            return out
    del lab
    cut = float(np.median(np.concatenate([world_x(k)[m[k]] for k in range(m.shape[0]) if m[k].any()])))
    for k in range(m.shape[0]):
        wx = world_x(k)
        out[k][m[k] & (wx < cut)] = 1
        out[k][m[k] & (wx >= cut)] = 2
    return out
