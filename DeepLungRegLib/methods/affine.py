"""Method ``affine``: robust affine pre-alignment.

Twelve parameters ``x' = c + (I + B)(x - c) + t`` (``c`` the fixed lung or
body centroid) are optimised with Adam on MIND-SSC features over a coarse
pyramid, weighted by the dilated fixed lung mask. The translation starts at
the difference of the mask (or body) centroids, which gives a capture range
of several centimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..io.images import Image
from ..losses import masked_mse
from ..ops.optim import Adam
from ..transforms.warp import world_grid_tensor
from ..options import Options, option, redefault
from .base import AffineField, MethodConfig, RunContext, register_method
from .common import MindOptions, RegionOptions, AlignedFeatures, aligned_features, make_level, region_geometry


@dataclass(frozen=True)
class AffineConfig(MindOptions, RegionOptions, MethodConfig):
    """Options of ``affine`` (MIND-SSC and working region: :class:`~.common.MindOptions`, :class:`~.common.RegionOptions`)."""

    levels_mm: tuple[float, ...] = option((8.0, 5.0), 0.5, 32.0, "pyramid spacings, coarse to fine.")
    iterations: tuple[int, ...] = option((80, 50), 0, 5000, "Adam iterations per level.")
    learning_rate: float = option(1.0, 1e-4, 20.0, "step size (translation in mm; the matrix moves 1/100 of it).")
    margin_mm: float = redefault(RegionOptions, "margin_mm", 25.0)

    EQUAL_LENGTH: ClassVar[tuple] = (("levels_mm", "iterations"),)
    NONEMPTY: ClassVar[tuple] = ("levels_mm",)


@dataclass(frozen=True)
class AlignedStartOptions(Options):
    """The discrete methods' start (:func:`affine_aligned_start`) and their refinement: how the moving image is
    extended where the affine, or the field, maps a fixed voxel outside its working region (its field of view, or the
    lung's box plus the margin)."""

    outside_moving: str = option("border", help="how the moving image continues outside its working region, for the "
                                 "aligned start's features and the refinement's samples: \"border\" repeats its edge (no edge "
                                 "of its own where the field of view cuts the lung); \"air\" fills the start with air and the "
                                 "refinement's features with zeros, as before (an edge there).",
                                 choices=("border", "air"))

    @property
    def moving_fill(self) -> float | None:
        """The fill of the start's normalised moving image and of the refinement's moving features outside the
        moving region: None (the border repeated) or 0.0 (air; zero features)."""
        return None if self.outside_moving == "border" else 0.0


def _centroid(img: Image, mask: Image | None) -> np.ndarray:
    m = mask.array if mask is not None else img.array > -500
    if not m.any():
        m = np.ones(img.array.shape, bool)
    kk, jj, ii = np.nonzero(m)
    return img.geometry.index_to_world(np.stack([ii, jj, kk], 1).mean(0, keepdims=True))[0]


def estimate_affine(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None, config: AffineConfig, ctx: RunContext, progress_span=(0.0, 1.0)) -> tuple[np.ndarray, dict]:
    """Estimate a 4x4 LPS matrix mapping fixed points to moving points."""
    c = _centroid(fixed, fixed_mask)
    t0 = _centroid(moving, moving_mask) - c
    fr = region_geometry(fixed, fixed_mask, config.margin_mm)
    mr = region_geometry(moving, moving_mask, config.margin_mm)
    dev, dt = ctx.device, ctx.dtype
    b = torch.zeros(3, 3, device=dev, dtype=dt, requires_grad=True)
    t = torch.tensor(t0, device=dev, dtype=dt, requires_grad=True)
    losses = []
    n_levels = len(config.levels_mm)
    for li, (sp, iters) in enumerate(zip(config.levels_mm, config.iterations)):
        with ctx.stage(f"affine_features_{sp:g}mm"):
            lv = make_level(fixed, moving, fr, mr, fixed_mask, sp, config.mind_radius, config.mind_dilation, config.mask_dilation_mm, dev, dt)
            # only the voxels the (binary) weight counts: the same loss, without sampling the rest of the region
            index = torch.nonzero(lv.weight.reshape(-1) > 0).reshape(-1)
            xc = world_grid_tensor(lv.fixed_geom, dev, dt).reshape(-1, 3)[index] - torch.as_tensor(c, device=dev, dtype=dt)
            fixed_pts = lv.fixed_feat.reshape(1, lv.fixed_feat.shape[1], -1)[:, :, index]  # (1, C, M)
            weight_pts = lv.weight.reshape(1, 1, -1)[:, :, index]
        opt = Adam([([t], config.learning_rate), ([b], config.learning_rate / 100.0)])
        with ctx.stage(f"affine_optimise_{sp:g}mm"):
            for it in range(int(iters)):
                ctx.check_cancel()
                opt.zero_grad()
                moved = lv.sampler.sample_points(lv.moving_feat, index, (xc @ b.T + t)[None])  # (1, C, M)
                loss = masked_mse(fixed_pts, moved, weight_pts)
                loss.backward()
                opt.step()
                if it % 10 == 0:
                    frac = progress_span[0] + (progress_span[1] - progress_span[0]) * (li + it / max(iters, 1)) / n_levels
                    ctx.progress(f"affine {sp:g} mm", frac)
            losses.append(float(loss.detach()))
    a = np.eye(3) + b.detach().cpu().double().numpy()
    mat = np.eye(4)
    mat[:3, :3] = a
    mat[:3, 3] = c + t.detach().cpu().double().numpy() - a @ c
    return mat, {"affine_matrix": mat.tolist(), "affine_final_loss": losses[-1] if losses else None, "affine_det": float(np.linalg.det(a))}


def affine_aligned_start(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None, config,
                         ctx: RunContext, progress_span=(0.0, 0.15), descriptor=None):
    """The common start of the discrete methods: working regions, the affine pre-alignment
    (stage "affine") and MIND-SSC features of the fixed and affinely aligned moving image
    (stage "features").

    Args:
        config: supplies ``margin_mm``, ``precision``, ``feature_spacing_mm``, ``mind_radius``,
            ``mind_dilation`` and ``outside_moving`` (:class:`AlignedStartOptions`).
        descriptor: features to use instead of MIND-SSC (see :func:`~.common.aligned_features`).

    Returns:
        ``(fixed region, moving region, 4x4 affine (fixed -> moving world), AlignedFeatures,
        the affine's diagnostics)``.
    """
    fr = region_geometry(fixed, fixed_mask, config.margin_mm)
    mr = region_geometry(moving, moving_mask, config.margin_mm)
    with ctx.stage("affine"):
        mat, adiag = estimate_affine(fixed, moving, fixed_mask, moving_mask, AffineConfig(precision=config.precision), ctx,
                                     progress_span)
    with ctx.stage("features"):
        af: AlignedFeatures = aligned_features(fixed, moving, fr, mr, fixed_mask, mat, config.feature_spacing_mm,
                                               config.mind_radius, config.mind_dilation, ctx.device, ctx.dtype, descriptor,
                                               moving_fill=config.moving_fill)
    return fr, mr, mat, af, adiag


@register_method("affine", "Robust affine pre-alignment (MIND-SSC, Adam, lung-mask weighted)", AffineConfig)
def run_affine(fixed, moving, fixed_mask, moving_mask, config: AffineConfig, ctx: RunContext):
    mat, diag = estimate_affine(fixed, moving, fixed_mask, moving_mask, config, ctx)
    return AffineField(mat), diag
