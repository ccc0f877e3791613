"""Method ``adam``: dense instance optimisation (talk 003).

MIND-SSC features of both images are computed once per pyramid level. A
dense displacement grid (mm, world axes) on the fixed level grid is
optimised with Adam on the masked SSD of the features plus a diffusion
regulariser; the grid is box-smoothed inside the loss (as a B-spline-like
parametrisation). Levels run coarse to fine, each initialised with the
previous result; the first starts from the ``affine`` pre-alignment.
Everything runs inside the fixed lung's bounding box (plus a margin); the
final field is resampled to the full fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DeepLungRegError
from ..losses import diffusion, folding_penalty, jacobian_determinant_torch
from ..transforms.fields import affine_to_field
from .affine import AffineConfig, estimate_affine
from .base import GridField, MethodConfig, RunContext, check_range, register_method
from .common import make_level, region_geometry, resample_field, smooth3


@dataclass(frozen=True)
class AdamConfig(MethodConfig):
    """Options of ``adam``.

    Attributes:
        levels_mm: pyramid spacings, coarse to fine.
        iterations: Adam iterations per level.
        regularisation: weight of the diffusion term.
        learning_rates: Adam step (mm) per level.
        smoothing_passes: 3x3x3 box-filter passes applied to the grid in the loss.
        mind_radius, mind_dilation: MIND-SSC patch radius and neighbour distance (voxels).
        affine_init: start from the ``affine`` method's result.
        mask_dilation_mm: dilation of the fixed mask that weights the similarity.
        margin_mm: margin of the working region around the masks.
    """

    levels_mm: tuple[float, ...] = (6.0, 4.0, 2.5)
    iterations: tuple[int, ...] = (80, 60, 40)
    regularisation: float = 1.0
    learning_rates: tuple[float, ...] = (1.0, 0.6, 0.3)
    smoothing_passes: int = 2
    mind_radius: int = 1
    mind_dilation: int = 2
    affine_init: bool = True
    mask_dilation_mm: float = 10.0
    margin_mm: float = 20.0

    def validate(self) -> None:
        n = len(self.levels_mm)
        if n == 0 or len(self.iterations) != n or len(self.learning_rates) != n:
            raise DeepLungRegError("AdamConfig: levels_mm, iterations and learning_rates must be non-empty and of equal length")
        for s in self.levels_mm:
            check_range("AdamConfig", "levels_mm", s, 0.5, 32.0)
        for it in self.iterations:
            check_range("AdamConfig", "iterations", it, 0, 5000)
        for lr in self.learning_rates:
            check_range("AdamConfig", "learning_rates", lr, 1e-4, 20.0)
        check_range("AdamConfig", "regularisation", self.regularisation, 0.0, 1e4)
        check_range("AdamConfig", "smoothing_passes", self.smoothing_passes, 0, 10)
        check_range("AdamConfig", "mind_radius", self.mind_radius, 0, 4)
        check_range("AdamConfig", "mind_dilation", self.mind_dilation, 1, 6)
        check_range("AdamConfig", "mask_dilation_mm", self.mask_dilation_mm, 0.0, 100.0)
        check_range("AdamConfig", "margin_mm", self.margin_mm, 0.0, 200.0)


def instance_optimise(fixed, moving, fixed_mask, fr, mr, current: torch.Tensor, current_geom, levels_mm, iterations,
                      learning_rates, config, ctx: RunContext, progress_span=(0.2, 1.0), label: str = "adam",
                      residual: bool = False, folding_weight: float = 0.0):
    """Dense Adam optimisation of a displacement grid, coarse to fine, from an initial field.

    Args:
        fr, mr: fixed and moving working regions.
        current: ``(1, Z, Y, X, 3)`` initial field (mm, LPS) on ``current_geom``.
        levels_mm, iterations, learning_rates: one entry per level.
        config: supplies ``smoothing_passes``, ``regularisation``, ``mind_radius``,
            ``mind_dilation`` and ``mask_dilation_mm``.
        residual: optimise a smoothed update on top of the (unsmoothed) initial field and
            regularise only the update, so that sharp motion in the initial field (e.g.
            sliding from keypoint correspondences) survives; otherwise the whole grid is
            smoothed and regularised (adam's own formulation).
        folding_weight: weight of :func:`~DeepLungRegLib.losses.folding_penalty` on the whole field.

    Returns:
        ``(field (1, Z, Y, X, 3), its geometry, per-level losses)``.
    """
    dev, dt = ctx.device, ctx.dtype
    lo, hi = progress_span
    level_losses = []
    n = len(levels_mm)
    for li, (sp, iters, lr) in enumerate(zip(levels_mm, iterations, learning_rates)):
        with ctx.stage(f"features_{sp:g}mm"):
            lv = make_level(fixed, moving, fr, mr, fixed_mask, sp, config.mind_radius, config.mind_dilation, config.mask_dilation_mm, dev, dt)
            init = resample_field(current, current_geom, lv.fixed_geom)
        spacing_zyx = lv.fixed_geom.spacing[::-1]
        to_world = torch.as_tensor(lv.fixed_geom.index_to_world_matrix[:3, :3], device=dev, dtype=dt)
        # the similarity only needs the voxels where the (binary) weight is set
        index = torch.nonzero(lv.weight.reshape(-1) > 0.5)[:, 0]
        fixed_pts = lv.fixed_feat.reshape(*lv.fixed_feat.shape[:2], -1)[:, :, index]  # (1, C, M)
        base = init.permute(0, 4, 1, 2, 3)
        disp = (torch.zeros_like(base) if residual else base.clone()).requires_grad_(True)  # (1, 3, Z, Y, X)
        opt = torch.optim.Adam([disp], lr=lr)
        sim = reg = torch.zeros(())
        folding_active = False
        with ctx.stage(f"optimise_{sp:g}mm"):
            for it in range(int(iters)):
                ctx.check_cancel()
                opt.zero_grad()
                update = smooth3(disp, config.smoothing_passes).permute(0, 2, 3, 4, 1)
                field = init + update if residual else update
                sim = (fixed_pts - lv.sampler.sample_points(lv.moving_feat, index, field.reshape(1, -1, 3)[:, index])).pow(2).mean()
                reg = diffusion(update if residual else field, spacing_zyx)
                loss = sim + config.regularisation * reg
                if folding_weight > 0:
                    # The penalty is zero while every J > 0.1; it is only paid for once some J
                    # comes near (checked without gradients every few iterations).
                    if not folding_active and it % 5 == 0:
                        with torch.no_grad():
                            folding_active = bool(jacobian_determinant_torch(field.detach(), to_world).min() < 0.25)
                    if folding_active:
                        loss = loss + folding_weight * folding_penalty(field, to_world)
                loss.backward()
                opt.step()
                if it % 5 == 0:
                    ctx.progress(f"{label} {sp:g} mm", lo + (hi - lo) * (li + it / max(iters, 1)) / n)
        with torch.no_grad():
            current = smooth3(disp, config.smoothing_passes).permute(0, 2, 3, 4, 1).detach()
            if residual:
                current = init + current
        current_geom = lv.fixed_geom
        level_losses.append({"level_mm": sp, "grid": list(lv.fixed_geom.size), "similarity": float(sim.detach()),
                             "regulariser": float(reg.detach())})
    return current, current_geom, level_losses


@register_method("adam", "Dense Adam instance optimisation on MIND-SSC, coarse to fine, lung-mask aware (talk 003)", AdamConfig)
def run_adam(fixed, moving, fixed_mask, moving_mask, config: AdamConfig, ctx: RunContext):
    dev, dt = ctx.device, ctx.dtype
    diag: dict = {}
    fr = region_geometry(fixed, fixed_mask, config.margin_mm)
    mr = region_geometry(moving, moving_mask, config.margin_mm)
    if config.affine_init:
        with ctx.stage("affine"):
            mat, adiag = estimate_affine(fixed, moving, fixed_mask, moving_mask, AffineConfig(precision=config.precision), ctx, (0.0, 0.2))
        diag.update(adiag)
        current = torch.as_tensor(affine_to_field(mat, fr), device=dev, dtype=dt)[None]
    else:
        current = torch.zeros((1, *fr.shape, 3), device=dev, dtype=dt)
    current, current_geom, level_losses = instance_optimise(
        fixed, moving, fixed_mask, fr, mr, current, fr, config.levels_mm, config.iterations, config.learning_rates, config, ctx)
    diag["levels"] = level_losses
    diag["working_region"] = fr.to_dict()
    return GridField(current.detach().to("cpu", torch.float32), current_geom), diag
