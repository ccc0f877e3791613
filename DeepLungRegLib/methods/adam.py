"""Method ``adam``: dense instance optimisation (talk 003).

The method is the instance optimisation of :mod:`.refine` on its own: MIND-SSC
features of both images are computed once per pyramid level, and a dense
displacement grid (mm, world axes) on the fixed level grid is optimised with
Adam on the masked SSD of the features plus a diffusion regulariser (the grid
is box-smoothed inside the loss, a B-spline-like parametrisation). Levels run
coarse to fine, each initialised with the previous result; the first starts
from the ``affine`` pre-alignment.
Everything runs inside the fixed lung's bounding box (plus a margin); the
final field is resampled to the full fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..options import redefault
from ..transforms.fields import affine_to_field
from .affine import AffineConfig, estimate_affine
from .base import GridField, MethodConfig, RunContext, register_method
from .common import MindOptions, RegionOptions, region_geometry
from .refine import RefineOptions, Refinement


@dataclass(frozen=True)
class AdamConfig(RefineOptions, MindOptions, RegionOptions, MethodConfig):
    """Options of ``adam``: the instance optimisation (:class:`~.refine.RefineOptions`) is the whole method.

    Attributes:
        refine_levels_mm: pyramid spacings, coarse to fine.
        refine_iterations: Adam iterations per level.
        refine_learning_rates: Adam step (mm) per level.
        regularisation: weight of the diffusion term (on the whole field).
        folding_weight: weight of the penalty on Jacobians below 0.1 (0: none, the default).
        affine_init: start from the ``affine`` method's result.
    """

    refine_levels_mm: tuple[float, ...] = redefault(RefineOptions, "refine_levels_mm", (6.0, 4.0, 2.5))
    refine_iterations: tuple[int, ...] = redefault(RefineOptions, "refine_iterations", (80, 60, 40))
    refine_learning_rates: tuple[float, ...] = redefault(RefineOptions, "refine_learning_rates", (1.0, 0.6, 0.3))
    folding_weight: float = redefault(RefineOptions, "folding_weight", 0.0)
    affine_init: bool = True

    #: the names of version 1, read only from what it saved (configs, metrics.json), with a DeprecationWarning
    ALIASES: ClassVar[dict] = {"levels_mm": "refine_levels_mm", "iterations": "refine_iterations",
                               "learning_rates": "refine_learning_rates", "smoothing_passes": "refine_smoothing_passes"}
    NONEMPTY: ClassVar[tuple] = ("refine_levels_mm",)


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
    refinement = Refinement.of(config, residual=False, label="adam")
    current, current_geom, level_losses = refinement.run(fixed, moving, fixed_mask, fr, mr, current, fr, ctx, (0.2, 1.0))
    diag["levels"] = level_losses  # the one per-level list of every method (records of stage "refine")
    diag["working_region"] = fr.to_dict()
    return GridField(current.detach().float(), current_geom), diag
