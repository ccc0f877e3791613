"""Shared steps of the intensity-based methods: working grids, feature
pyramids and moving fields between grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage as ndi

from ..features import mind_ssc
from ..features.intensity import normalise_ct
from ..ops.filters import box_mean3d
from ..geometry import Geometry
from ..io.images import Image
from ..transforms.fields import affine_to_field, resample_field  # noqa: F401 (the methods' field resampler)
from ..transforms.resample import resample_to_geometry
from ..options import Options, option
from ..transforms.warp import GridSampler, warp_image


# ------------------------------------------------------------------ option groups shared by the methods
@dataclass(frozen=True)
class MindOptions(Options):
    """The MIND-SSC descriptor of the intensity-based methods."""

    mind_radius: int = option(1, 0, 4, "MIND-SSC patch radius (voxels).")
    mind_dilation: int = option(2, 1, 6, "MIND-SSC neighbour distance (voxels).")


@dataclass(frozen=True)
class RegionOptions(Options):
    """Where a method works: the masks' bounding boxes plus a margin, weighted by the dilated fixed lung."""

    mask_dilation_mm: float = option(10.0, 0.0, 100.0, "dilation of the fixed lung mask that weights the similarity.")
    margin_mm: float = option(20.0, 0.0, 200.0, "margin of the working region around the masks.")


def region_geometry(image: Image, mask: Image | None, margin_mm: float) -> Geometry:
    """The image grid cropped to the mask's bounding box plus ``margin_mm`` (whole grid without a mask)."""
    g = image.geometry
    if mask is None:
        return g
    kk, jj, ii = np.nonzero(mask.array)
    lo = np.array([ii.min(), jj.min(), kk.min()], float)
    hi = np.array([ii.max(), jj.max(), kk.max()], float)
    m = np.ceil(margin_mm / np.asarray(g.spacing))
    lo = np.maximum(lo - m, 0).astype(int)
    hi = np.minimum(hi + m, np.asarray(g.size) - 1).astype(int)
    return g.crop(tuple(lo), tuple(hi - lo + 1))


def level_geometry(region: Geometry, spacing_mm: float) -> Geometry:
    """The LPS-axis-aligned grid over ``region`` at about ``spacing_mm`` (never finer than the region's own
    spacing along each axis): fixed and moving features are computed on grids of the same orientation."""
    return region.axis_aligned(tuple(max(spacing_mm, s) for s in region.spacing_along_world()))


@dataclass
class LevelData:
    """Tensors of one pyramid level."""

    fixed_geom: Geometry
    moving_geom: Geometry
    fixed_feat: torch.Tensor  # (1, C, Z, Y, X)
    moving_feat: torch.Tensor  # (1, C, Zm, Ym, Xm), channels last in memory (torch.channels_last_3d)
    weight: torch.Tensor  # (1, 1, Z, Y, X)
    sampler: GridSampler


def make_level(
    fixed: Image, moving: Image, fixed_region: Geometry, moving_region: Geometry, fixed_mask: Image | None, spacing_mm: float,
    mind_radius: int, mind_dilation: int, mask_dilation_mm: float, device: torch.device, dtype: torch.dtype,
) -> LevelData:
    """Resample both images to ``spacing_mm`` on their regions and compute MIND-SSC features."""
    fg = level_geometry(fixed_region, spacing_mm)
    mg = level_geometry(moving_region, spacing_mm)
    f = resample_to_geometry(fixed.with_array(normalise_ct(fixed.array)), fg, smooth=True)
    m = resample_to_geometry(moving.with_array(normalise_ct(moving.array)), mg, smooth=True)
    ft = torch.as_tensor(f.array, device=device, dtype=dtype)[None, None]
    mt = torch.as_tensor(m.array, device=device, dtype=dtype)[None, None]
    with torch.no_grad():
        ff = mind_ssc(ft, mind_radius, mind_dilation)
        # channels last: grid_sample reads the C values of a corner together (same values, about half the time of
        # a sample and its gradient on the CPU, where the optimisations spend most of theirs)
        mf = mind_ssc(mt, mind_radius, mind_dilation).contiguous(memory_format=torch.channels_last_3d)
    if fixed_mask is not None:
        w = resample_to_geometry(fixed_mask.with_array(fixed_mask.array.astype(np.float32)), fg).array > 0.5
        it = int(round(mask_dilation_mm / min(fg.spacing)))
        if it > 0:
            w = ndi.binary_dilation(w, iterations=it)
        weight = torch.as_tensor(w.astype(np.float32), device=device, dtype=dtype)[None, None]
    else:
        weight = torch.ones_like(ft)
    return LevelData(fg, mg, ff, mf, weight, GridSampler(fg, mg, device, dtype))


def smooth3(t: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Repeated 3x3x3 box smoothing of ``(N, C, Z, Y, X)`` with replicate padding.

    Each pass is the separable product of three 1D 3-point means (the same as a
    replicate-padded 3x3x3 average pool, several times faster on the CPU, also
    under autograd)."""
    for _ in range(passes):
        t = box_mean3d(t, 1)
    return t


@dataclass
class AlignedFeatures:
    """MIND-SSC features of the fixed image and of the affinely pre-aligned moving image on one grid."""

    geometry: Geometry  # the fixed feature grid
    fixed_image: Image  # normalised fixed intensities on ``geometry``
    fixed_feat: torch.Tensor  # (1, C, Z, Y, X)
    moving_feat: torch.Tensor  # (1, C, Z, Y, X): moving(A x) features
    lung: np.ndarray | None  # (Z, Y, X) bool fixed lung on ``geometry``


def aligned_features(
    fixed: Image, moving: Image, fixed_region: Geometry, moving_region: Geometry, fixed_mask: Image | None,
    affine: np.ndarray, spacing_mm: float, mind_radius: int, mind_dilation: int, device: torch.device, dtype: torch.dtype,
    descriptor: Callable[[torch.Tensor], torch.Tensor] | None = None, moving_fill: float | None = 0.0,
) -> AlignedFeatures:
    """Resample the fixed image and the moving image through ``affine`` (4x4, fixed -> moving world)
    onto the fixed region at ``spacing_mm`` and compute MIND-SSC features of both (or those of
    ``descriptor``, ``(1, 1, Z, Y, X) -> (1, C, Z, Y, X)``, e.g. embed's feature CNN).

    ``moving_fill``: the normalised intensity where ``affine`` maps outside the moving region (0: air), or
    ``None`` to repeat the region's border (no artificial edge where the field of view cuts the lung)."""
    fg = level_geometry(fixed_region, spacing_mm)
    f_img = resample_to_geometry(fixed.with_array(normalise_ct(fixed.array)), fg, smooth=True)
    m_lv = resample_to_geometry(moving.with_array(normalise_ct(moving.array)), level_geometry(moving_region, spacing_mm), smooth=True)
    m_img = warp_image(m_lv, affine_to_field(affine, fg), fg, fill=moving_fill)
    ft = torch.as_tensor(f_img.array, device=device, dtype=dtype)[None, None]
    mt = torch.as_tensor(m_img.array, device=device, dtype=dtype)[None, None]
    describe = descriptor or (lambda t: mind_ssc(t, mind_radius, mind_dilation))
    with torch.no_grad():
        ff = describe(ft)
        mf = describe(mt)
    lung = None
    if fixed_mask is not None:
        lung = resample_to_geometry(fixed_mask.with_array(fixed_mask.array.astype(np.float32)), fg).array > 0.5
    return AlignedFeatures(fg, f_img, ff, mf, lung)


def masked_smooth(u: torch.Tensor, weight: torch.Tensor, passes: int) -> torch.Tensor:
    """:func:`smooth3` of ``u (1, C, Z, Y, X)`` over the points where ``weight (1, 1, Z, Y, X)`` is 1 only (a normalised
    convolution); points that no weighted point reaches take the plain smoothing of the field extended from those
    that it reaches."""
    num, den = smooth3(u * weight, passes), smooth3(weight, passes)
    reached = den > 1e-3
    inside = num / den.clamp_min(1e-3)
    return torch.where(reached, inside, smooth3(torch.where(reached, inside, u), passes))


def cost_moments(costs: torch.Tensor, offsets_mm: torch.Tensor, temperature: float, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """What each point's matching costs say about its displacement: the mean (mm) and covariance (mm²) under a
    softmax of the costs.

    Each row's costs are taken relative to its minimum, on one scale for all rows (the mean over the rows of
    their spread, mean minus minimum): ``p(d) ∝ exp(-(cost(d) - min) / (temperature * scale))``. A cost
    that is flat along one axis (a vessel along it) spreads ``p`` along that axis; a row that is flat
    everywhere (homogeneous parenchyma, no features) spreads it in all directions; a sharp minimum
    concentrates it.

    Args:
        costs: ``(N, D)`` matching costs of ``N`` points over ``D`` displacements.
        offsets_mm: ``(D, 3)`` the displacements in mm (world axes).

    Returns:
        ``(mean, covariance)``: ``(N, 3)`` and ``(N, 3, 3)`` float32.
    """
    off = offsets_mm.to(costs.device, torch.float32)
    mean = torch.empty((costs.shape[0], 3), device=costs.device, dtype=torch.float32)
    cov = torch.empty((costs.shape[0], 3, 3), device=costs.device, dtype=torch.float32)
    scale = (costs.mean(1) - costs.min(1).values).mean().clamp_min(1e-8)
    for s in range(0, costs.shape[0], rows):
        c = costs[s:s + rows].float()
        lo = c.min(1, keepdim=True).values
        p = torch.softmax(-(c - lo) / (temperature * scale), dim=1)  # (n, D)
        m = p @ off  # (n, 3)
        mean[s:s + rows] = m
        cov[s:s + rows] = torch.einsum("nd,di,dj->nij", p, off, off) - m[:, :, None] * m[:, None, :]
    return mean, cov


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points ``(..., 3)`` by a 4x4 homogeneous matrix."""
    return points @ matrix[:3, :3].T + matrix[:3, 3]
