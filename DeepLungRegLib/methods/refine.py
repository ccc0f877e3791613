"""Instance optimisation: the dense Adam refinement of a displacement grid (talk 003).

One typed component serves every method that refines a field: ``adam`` (its whole method),
``convex`` and ``embed`` (after their discrete stages) and the network methods (after the network).
Its options (:class:`RefineOptions`) are one group that each of those configs lists among its
bases, so they have the same names and ranges everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry import Geometry
from ..io.images import Image
from ..losses import diffusion, folding_penalty_where_low, jacobian_determinant_torch
from ..ops.optim import Adam
from ..options import Options, option
from .base import RunContext
from .common import make_level, resample_field, smooth3


#: iterations between two checks of whether the field's Jacobian comes near folding (until it does)
_FOLDING_CHECK_EVERY = 5


@dataclass(frozen=True)
class RefineOptions(Options):
    """The instance optimisation's options (one value per level for the three per-level options)."""

    refine_levels_mm: tuple[float, ...] = option((2.5,), 0.5, 32.0, "grid spacings of the instance optimisation, coarse to fine (none: no refinement).")
    refine_iterations: tuple[int, ...] = option((30,), 0, 5000, "Adam iterations of the instance optimisation, per level.")
    refine_learning_rates: tuple[float, ...] = option((0.25,), 1e-4, 20.0, "Adam step (mm) of the instance optimisation, per level.")
    regularisation: float = option(1.0, 0.0, 1e4, "diffusion weight of the instance optimisation.")
    folding_weight: float = option(10.0, 0.0, 1e6, "weight of the instance optimisation's penalty on Jacobians below 0.1.")
    refine_smoothing_passes: int = option(2, 0, 10, "3x3x3 box-filter passes applied to the optimised grid in the loss.")

    EQUAL_LENGTH: ClassVar[tuple] = (("refine_levels_mm", "refine_iterations", "refine_learning_rates"),)


@dataclass(frozen=True)
class Refinement:
    """Dense Adam optimisation of a displacement grid, coarse to fine, from an initial field.

    MIND-SSC features of both images are computed once per level; the grid (mm, world axes) on
    the fixed level grid is optimised on the masked SSD of the features plus a diffusion
    regulariser, box-smoothed inside the loss (a B-spline-like parametrisation).

    Attributes:
        refine_levels_mm, refine_iterations, refine_learning_rates: one entry per level.
        regularisation: diffusion weight.
        folding_weight: weight of :func:`~DeepLungRegLib.losses.folding_penalty` on the whole field (computed where it
            is not zero).
        refine_smoothing_passes: box passes of the grid.
        mind_radius, mind_dilation: MIND-SSC of the features.
        mask_dilation_mm: dilation of the fixed lung that weights the similarity.
        residual: optimise a smoothed update on top of the (unsmoothed) initial field and
            regularise only the update, so that sharp motion in the initial field (e.g. sliding
            from keypoint correspondences) survives; otherwise the whole grid is smoothed and
            regularised (``adam``'s own formulation).
        label: the progress label.
        moving_fill: the moving features where a displaced voxel leaves the moving level's grid: 0 (an
            artificial edge where the field of view cuts the lung), or None, their nearest border value
            (``outside_moving="border"`` of the discrete methods, :attr:`~.affine.AlignedStartOptions.moving_fill`).
    """

    refine_levels_mm: tuple[float, ...]
    refine_iterations: tuple[int, ...]
    refine_learning_rates: tuple[float, ...]
    regularisation: float = 1.0
    folding_weight: float = 0.0
    refine_smoothing_passes: int = 2
    mind_radius: int = 1
    mind_dilation: int = 2
    mask_dilation_mm: float = 10.0
    residual: bool = True
    label: str = "refine"
    moving_fill: float | None = 0.0

    @classmethod
    def of(cls, config, *, residual: bool = True, label: str = "refine", moving_fill: float | None = 0.0) -> "Refinement":
        """The refinement a method's config describes (a config with :class:`RefineOptions`,
        :class:`~.common.MindOptions` and :class:`~.common.RegionOptions` among its bases)."""
        return cls(config.refine_levels_mm, config.refine_iterations, config.refine_learning_rates, config.regularisation,
                   config.folding_weight, config.refine_smoothing_passes, config.mind_radius, config.mind_dilation,
                   config.mask_dilation_mm, residual, label, moving_fill)

    @property
    def enabled(self) -> bool:
        """True when there is a level with iterations to run."""
        return any(int(n) > 0 for n in self.refine_iterations[:len(self.refine_levels_mm)])

    def run(self, fixed: Image, moving: Image, fixed_mask: Image | None, fr: Geometry, mr: Geometry, current: torch.Tensor,
            current_geom: Geometry, ctx: RunContext, progress_span: tuple[float, float] = (0.2, 1.0)):
        """Refine ``current``.

        Args:
            fr, mr: fixed and moving working regions.
            current: ``(1, Z, Y, X, 3)`` initial field (mm, LPS) on ``current_geom``.

        Returns:
            ``(field (1, Z, Y, X, 3), its geometry, per-level records)``: each record
            ``{"stage": "refine", "level_mm", "grid", "similarity", "regulariser"}``, the entries a method
            adds to its diagnostics' one per-level list, ``"levels"``.
        """
        return _optimise(self, fixed, moving, fixed_mask, fr, mr, current, current_geom, ctx, progress_span)


def _optimise(r: Refinement, fixed, moving, fixed_mask, fr, mr, current, current_geom, ctx, progress_span):
    dev, dt = ctx.device, ctx.dtype
    lo, hi = progress_span
    level_losses = []
    n = len(r.refine_levels_mm)
    for li, (sp, iters, lr) in enumerate(zip(r.refine_levels_mm, r.refine_iterations, r.refine_learning_rates)):
        with ctx.stage(f"features_{sp:g}mm"):
            lv = make_level(fixed, moving, fr, mr, fixed_mask, sp, r.mind_radius, r.mind_dilation, r.mask_dilation_mm, dev, dt)
            init = resample_field(current, current_geom, lv.fixed_geom)
        spacing_zyx = lv.fixed_geom.spacing_zyx
        to_world = torch.as_tensor(lv.fixed_geom.scaled_direction, device=dev, dtype=dt)
        # the similarity only needs the voxels where the (binary) weight is set
        index = torch.nonzero(lv.weight.reshape(-1) > 0.5)[:, 0]
        fixed_pts = lv.fixed_feat.reshape(*lv.fixed_feat.shape[:2], -1)[:, :, index]  # (1, C, M)
        base = init.permute(0, 4, 1, 2, 3)
        disp = (torch.zeros_like(base) if r.residual else base.clone()).requires_grad_(True)  # (1, 3, Z, Y, X)
        opt = Adam([([disp], lr)])
        sim = reg = torch.zeros(())
        folding_active = False
        with ctx.stage(f"optimise_{sp:g}mm"):
            for it in range(int(iters)):
                ctx.check_cancel()
                opt.zero_grad()
                update = smooth3(disp, r.refine_smoothing_passes).permute(0, 2, 3, 4, 1)
                field = init + update if r.residual else update
                moved = lv.sampler.sample_points(lv.moving_feat, index, field.reshape(1, -1, 3)[:, index], fill=r.moving_fill)
                sim = (fixed_pts - moved).pow(2).mean()
                reg = diffusion(update if r.residual else field, spacing_zyx)
                loss = sim + r.regularisation * reg
                if r.folding_weight > 0:
                    # The penalty is zero while every J > 0.1; it is only paid for once some J comes near
                    # (J < 0.25, checked without gradients every few iterations). From then on J is computed
                    # without gradients every iteration, and the penalty with its gradient only in the box around
                    # the voxels where J < 0.1: the same value and gradient as on the whole field, which is zero
                    # wherever J >= 0.1, without the whole field's backward pass.
                    if folding_active or it % _FOLDING_CHECK_EVERY == 0:
                        with torch.no_grad():
                            jac = jacobian_determinant_torch(field.detach(), to_world)
                        folding_active = folding_active or bool(jac.min() < 0.25)
                        penalty = folding_penalty_where_low(field, to_world, jac) if folding_active else None
                        del jac
                        if penalty is not None:
                            loss = loss + r.folding_weight * penalty
                loss.backward()
                opt.step()
                if it % 5 == 0:
                    ctx.progress(f"{r.label} {sp:g} mm", lo + (hi - lo) * (li + it / max(iters, 1)) / n)
        with torch.no_grad():
            current = smooth3(disp, r.refine_smoothing_passes).permute(0, 2, 3, 4, 1).detach()
            if r.residual:
                current = init + current
        current_geom = lv.fixed_geom
        level_losses.append({"stage": "refine", "level_mm": sp, "grid": list(lv.fixed_geom.size),
                             "similarity": float(sim.detach()), "regulariser": float(reg.detach())})
    return current, current_geom, level_losses
