"""How sure the matching costs are of a displacement field: the cost-spread uncertainty map (issue 31).

Given fixed features and moving features already warped by a field (both on the fixed feature grid), the matching
costs are searched again, locally, around that field at points every few mm in the fixed lung, featureless
parenchyma included. Each point's value is ``sqrt(trace C + |m|^2)`` (mm): ``m`` and ``C`` the mean and covariance of
the displacement under a softmax of its costs (:func:`~.common.cost_moments`), around the field, whose own
displacement there is 0. The trace is large where the images do not determine the match (a cost flat along a
vessel, or everywhere in homogeneous parenchyma); ``|m|`` where the costs would move the field (sliding, motion
the field missed). ``embed`` applies it to its densified keypoint field (:func:`cost_spread`); ``convex`` and, through
:func:`~.base.register`, every other method to its final field (:func:`field_cost_spread`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import Geometry
from ..io.images import Image
from .common import cost_moments, make_level, masked_smooth, resample_field
from .costs import keypoint_costs, search_offsets

#: At most about this many points carry the costs (150 000 x 343 displacements: 200 MB).
UNCERTAINTY_POINTS = 150_000
#: The softmax temperature of a method without its own ``uncertainty_temperature`` (convex's default).
UNCERTAINTY_TEMPERATURE = 0.02


def subsampled(g: Geometry, stride: int) -> Geometry:
    """``g`` with every ``stride``-th voxel: the same origin (voxel 0's centre) and direction, ``stride`` times the spacing."""
    size = tuple(len(range(0, n, stride)) for n in g.size)
    return Geometry(size=size, spacing=tuple(s * stride for s in g.spacing), origin=tuple(g.origin), direction=g.direction)


def cost_spread(ff: torch.Tensor, mw: torch.Tensor, lung: np.ndarray | None, fg: Geometry, *, range_mm: float, step_mm: float,
                spacing_mm: float, temperature: float, patch_radius: int, chunk: int, ctx: "RunContext",
                span: tuple[float, float]) -> tuple[np.ndarray, Geometry]:
    """The cost-spread map of the field that warped ``mw`` (module docstring).

    Args:
        ff, mw: ``(1, C, Z, Y, X)`` fixed features and moving features warped by the field, both on ``fg``.
        lung: ``(Z, Y, X)`` bool fixed lung on ``fg``, or ``None`` (the whole grid).
        range_mm, step_mm: the local search (full width, step).
        spacing_mm: points every this many mm (farther apart where there would be more than :data:`UNCERTAINTY_POINTS`).
        temperature: of the softmax, relative to the points' mean cost spread.
        span: the progress fractions the search reports between.

    Returns:
        ``(values, geometry)``: ``(Zp, Yp, Xp)`` float32 mm on the points' grid (``fg`` subsampled), extended outside the
        lung by normalised convolution.
    """
    radius, step, _, offsets_mm = search_offsets(fg, range_mm, step_mm)
    stride = max(1, int(round(spacing_mm / max(fg.spacing))))
    region = int(np.count_nonzero(lung)) if lung is not None else int(np.prod(fg.shape))
    stride = max(stride, int(np.ceil((region / UNCERTAINTY_POINTS) ** (1 / 3))))  # the costs: points x D float32
    lo, hi = span
    with torch.no_grad():
        sel = np.zeros(fg.shape, bool)
        sel[::stride, ::stride, ::stride] = True
        if lung is not None:
            sel &= lung
        pts = np.argwhere(sel)
        if len(pts) == 0:
            pts = np.argwhere(np.ones(fg.shape, bool)[::stride, ::stride, ::stride]) * stride
        costs = keypoint_costs(ff, mw, pts, radius, step, patch_radius, chunk,
                               lambda f: (ctx.check_cancel(), ctx.progress("uncertainty", lo + (hi - lo) * f)))
        mean, cov = cost_moments(costs, torch.as_tensor(offsets_mm), temperature)
        value = (torch.diagonal(cov, dim1=1, dim2=2).sum(1) + (mean ** 2).sum(1)).clamp_min(0.0).sqrt()
        del costs
        pg = subsampled(fg, stride)  # the points' own grid: point i * stride of fg is its voxel i
        grid = torch.zeros((1, 1, *pg.shape), dtype=torch.float32)
        weight = torch.zeros_like(grid)
        q = torch.as_tensor(pts // stride, dtype=torch.long)
        grid[0, 0, q[:, 0], q[:, 1], q[:, 2]] = value.cpu().float()
        weight[0, 0, q[:, 0], q[:, 1], q[:, 2]] = 1.0
        out = masked_smooth(grid, weight, 2)[0, 0].numpy()
    return out.astype(np.float32), pg


def field_cost_spread(fixed: Image, moving: Image, fixed_mask: Image | None, fr: Geometry, mr: Geometry, field_on,
                      ctx: "RunContext", span: tuple[float, float], *, spacing_mm: float = 2.0, mind_radius: int = 1,
                      mind_dilation: int = 2, temperature: float = UNCERTAINTY_TEMPERATURE) -> tuple[np.ndarray, Geometry]:
    """The cost-spread map of a method's final field, whatever the method: MIND-SSC features of both images on their
    regions at ``spacing_mm``, the moving ones warped by the field onto the fixed feature grid, searched ±6 mm in
    2 mm steps at points every 4 mm in the fixed lung (:func:`cost_spread`).

    Args:
        fixed, moving, fixed_mask: the working-frame images and fixed mask the method registered.
        fr, mr: their regions.
        field_on: ``field_on(geometry)`` gives the field on ``geometry``: ``(1, Z, Y, X, 3)`` tensor or ``(Z, Y, X, 3)``
            array, world mm (resampling direction, fixed -> moving world).
        ctx: the method's :class:`~.base.RunContext` (device, dtype, progress, cancel).

    Returns:
        ``(values, geometry)`` as :func:`cost_spread`'s.
    """
    dev, dt = ctx.device, ctx.dtype
    with torch.no_grad():
        level = make_level(fixed, moving, fr, mr, fixed_mask, spacing_mm, mind_radius, mind_dilation, 0.0, dev, dt)
        u = torch.as_tensor(field_on(level.fixed_geom)).to(dev, dt)
        u = u[None] if u.ndim == 4 else u
        mw = level.sampler(level.moving_feat, u, fill=None)
        del u
        lung = level.weight[0, 0].cpu().numpy() > 0.5 if fixed_mask is not None else None
        values, g = cost_spread(level.fixed_feat, mw, lung, level.fixed_geom, range_mm=12.0, step_mm=2.0, spacing_mm=4.0,
                                temperature=temperature, patch_radius=1, chunk=128, ctx=ctx, span=span)
    return values, g
