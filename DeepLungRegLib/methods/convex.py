"""Method ``convex``: dense discrete cost volume, coupled convex optimisation and
Adam instance optimisation (the talk 003).

1. Affine pre-alignment (the ``affine`` method); the moving image is resampled
   through it onto the fixed feature grid, and MIND-SSC features are computed
   for both images.
2. For each level (coarse to fine), on a control grid of ``grid_spacing_mm``:

   - the fixed features are averaged over each control cell, the moving
     features (warped by the current field) over a sliding cell;
   - a dense SSD cost volume over ``{-r..r}^3`` displacements of
     ``search_step_mm`` is computed at every control point inside the
     (dilated) fixed lung; points outside carry no cost, so the chest wall does
     not pull on the lung and the motion there is filled in by the smoothing;
   - coupled convex optimisation alternates a discrete step, the argmin of
     ``cost(d) + theta * |d - v|^2`` (``v`` the smoothed field), with a
     smoothing step ``v = smooth(d)``, for a growing coupling ``theta``;
     a soft-argmin around the final minimum gives sub-step displacements;
   - optionally the problem is also solved from moving to fixed and both
     fields are made inverse-consistent (``u(x) = -w(x + u(x))``) by
     alternating averaging;
   - the level's field is composed with the current one.
3. Adam instance optimisation of the dense field on MIND-SSC features with a
   diffusion regulariser and a folding penalty (the ``adam`` machinery, on a
   residual update).

All displacements are in mm along the world (LPS) axes; integer voxel offsets
are only used to index the feature grid inside the cost-volume code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import DeepLungRegError
from ..ops.filters import box_mean3d
from ..geometry import Geometry
from ..transforms.warp import GridSampler
from .affine import AlignedStartOptions, affine_aligned_start
from ..options import check_range, option, redefault
from .base import GridField, GridMap, MethodConfig, RunContext, register_method
from .common import MindOptions, RegionOptions, apply_affine, cost_moments, masked_smooth, resample_field, smooth3
from .refine import RefineOptions, Refinement
from .costs import displacement_offsets
from .embed import soft_argmin
from .uncertainty import field_cost_spread


@dataclass(frozen=True)
class ConvexConfig(AlignedStartOptions, RefineOptions, MindOptions, RegionOptions, MethodConfig):
    """Options of ``convex``; the instance optimisation after the discrete stage is :class:`~.refine.RefineOptions`
    (no levels: none).

    Attributes:
        mask_dilation_mm: the cost volume is computed, and the refinement weighted, where the fixed lung,
            dilated by this, is.
        regularisation: diffusion weight of the instance optimisation (on the update).
    """

    feature_spacing_mm: float = option(2.0, 0.5, 16.0, "grid spacing of the MIND-SSC features of the discrete stage.")
    grid_spacing_mm: tuple[float, ...] = option((8.0, 8.0, 4.0), 0.5, 64.0,
                                                "control-grid spacing per discrete level, coarse to fine (at least the feature spacing).")
    # ±36 mm in 6 mm steps on the 8 mm grid (13³ displacements): large motion with the exhale image fixed needs the
    # reach (docs/benchmark.md, run 19); a second 8 mm level searches ±12 mm in 2 mm steps around the first (reach
    # 48 mm, finer where the first was coarse); the 4 mm level's 2 mm steps refine it. Chosen leave one CT out with
    # masked_smoothing (docs/benchmark.md, run 21).
    search_half_width_mm: tuple[float, ...] = option((36.0, 12.0, 6.0), 0.0, 80.0, "largest displacement searched per axis, per level.")
    search_step_mm: tuple[float, ...] = option((6.0, 2.0, 2.0), 0.25, 32.0, "displacement step per level (a multiple of the feature spacing).")
    coupling: tuple[float, ...] = option((0.003, 0.01, 0.03, 0.1, 0.3, 1.0), 0.0, 1e4,
                                         "the growing coupling weights theta of the coupled convex optimisation "
                                         "(relative to the typical cost spread, per squared search step).")
    # one pass: the field keeps the steep motion of the lowest lung (large motion, docs/benchmark.md run 23)
    convex_smoothing_passes: int = option(1, 0, 20, "3x3x3 box passes of the smoothing step on the control grid.")
    temperature: float = option(0.15, 1e-4, 10.0, "soft-argmin temperature relative to each cost map's spread.")
    uncertainty: bool = option(False, help="also write uncertainty.nii.gz: per voxel, how far (mm, root mean square) the "
                                           "displacements that the matching costs allow lie from the one the registration "
                                           "chose (the spread of the costs plus their disagreement with the field; see "
                                           "docs/uncertainty.md and uncertainty_source). A ranking of where the field is least "
                                           "sure, not a calibrated error.")
    uncertainty_source: str = option("field", help="\"field\": the costs searched again around the final field (±6 mm at points "
                                     "every 4 mm in the lung); \"level\": the finest discrete level's own costs around that "
                                     "level's field, at its control points.", choices=("field", "level"))
    UNCERTAINTY_ESTIMATE: ClassVar[str] = "matching costs"
    uncertainty_temperature: float = option(0.02, 1e-3, 100.0, "temperature of the uncertainty's softmax over the costs, "
                                                              "relative to the points' mean cost spread (chosen on design "
                                                              "pairs; docs/uncertainty.md).")
    masked_smoothing: bool = option(True, help="the smoothing step averages only control points that carry costs (the dilated "
                                                "lung), and extends their field outwards, so that the field outside the lung "
                                                "does not pull on the lung's boundary (sliding at the chest wall and diaphragm).")
    inverse_consistent: bool = option(True, help="also solve moving -> fixed and make both fields inverse-consistent.")
    consistency_iterations: int = option(10, 0, 100, "alternating averaging steps of the inverse consistency.")
    mask_dilation_mm: float = redefault(RegionOptions, "mask_dilation_mm", 4.0)
    max_chunk_elements: int = option(2 ** 26, 2 ** 16, 2 ** 32,
                                     "gathered feature values per chunk of the cost volume (memory vs speed; 2^26 floats = 256 MB).")

    #: the names of version 1, read only from what it saved (configs, metrics.json), with a DeprecationWarning
    ALIASES: ClassVar[dict] = {"adam_levels_mm": "refine_levels_mm", "adam_iterations": "refine_iterations",
                               "adam_learning_rates": "refine_learning_rates", "adam_smoothing_passes": "refine_smoothing_passes",
                               "smoothing_passes": "convex_smoothing_passes"}
    EQUAL_LENGTH: ClassVar[tuple] = (("grid_spacing_mm", "search_half_width_mm", "search_step_mm"),)
    NONEMPTY: ClassVar[tuple] = ("grid_spacing_mm", "coupling")

    #: the default search grid of ``deeplungreg tune --method convex``
    TUNE_GRID: ClassVar[dict] = {
        "convex_smoothing_passes": [1, 2],
        "regularisation": [0.5, 1.0, 2.0],
        "refine_levels_mm": [[3.0], [2.5]],
    }

    def validate(self) -> None:
        super().validate()
        c = "ConvexConfig"
        for g, h, s in zip(self.grid_spacing_mm, self.search_half_width_mm, self.search_step_mm):
            check_range(c, "grid_spacing_mm", g, self.feature_spacing_mm, 64.0)
            check_range(c, "search_step_mm", s, self.feature_spacing_mm * 0.5, 32.0)
            if h / s > 15:
                raise DeepLungRegError(f"{c}: search_half_width_mm / search_step_mm = {h / s:.0f} steps per side is too many (at most 15)")


# ------------------------------------------------------------------ pieces
def control_geometry(grid: Geometry, stride: int) -> Geometry:
    """The control grid of cells of ``stride^3`` voxels of ``grid``: cell ``i`` covers voxels
    ``stride * i .. stride * i + stride - 1`` and is centred on their mean position."""
    size = tuple(int(math.ceil(n / stride)) for n in grid.size)
    origin = grid.index_to_world(np.full((1, 3), (stride - 1) / 2.0))[0]
    return Geometry(size, tuple(s * stride for s in grid.spacing), tuple(origin), grid.direction)


def _pad_to_multiple(t: torch.Tensor, stride: int) -> torch.Tensor:
    """Replicate-pad ``(N, C, Z, Y, X)`` at the far end of each axis to a multiple of ``stride``."""
    pads = []
    for n in reversed(t.shape[2:]):
        pads += [0, (-n) % stride]
    return F.pad(t, pads, mode="replicate") if any(pads) else t


def cell_features(feat: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean features of each control cell: ``(1, C, Z, Y, X)`` -> ``(1, C, Zc, Yc, Xc)``."""
    return F.avg_pool3d(_pad_to_multiple(feat, stride), stride, stride=stride)


def sliding_cell_features(feat: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean features of the cell starting at every voxel: ``(1, C, Z, Y, X)`` -> same shape."""
    if stride == 1:
        return feat
    return box_mean3d(feat, 0, stride - 1)


def dense_costs(fixed_cells: torch.Tensor, moving_sliding: torch.Tensor, points_zyx: torch.Tensor, stride: int,
                offsets: np.ndarray, max_chunk_elements: int = 2 ** 26, progress=None) -> torch.Tensor:
    """SSD cost volume between control cells and displaced moving cells.

    Args:
        fixed_cells: ``(1, C, Zc, Yc, Xc)`` mean fixed features per control cell.
        moving_sliding: ``(1, C, Z, Y, X)`` mean moving features of the cell starting at each voxel.
        points_zyx: ``(N, 3)`` long control-cell indices at which to compute costs.
        stride: cell size in voxels.
        offsets: ``(D, 3)`` integer displacements in voxels ``(z, y, x)``.

    Returns:
        ``(N, D)`` mean squared feature differences (float32).
    """
    c = fixed_cells.shape[1]
    reach = int(np.abs(offsets).max()) if len(offsets) else 0
    mp = F.pad(moving_sliding, (reach,) * 6, mode="replicate")[0]  # (C, Zp, Yp, Xp)
    _, zp, yp, xp = mp.shape
    dev = mp.device
    # mean((f - m)^2) = mean(f^2) - 2 mean(f m) + mean(m^2): one row of [m_1..m_C, mean(m^2)]
    # per voxel, gathered once per (point, displacement) and reduced by one batched matmul
    # against [-2 f_1 / C .. -2 f_C / C, 1]
    view = mp.reshape(c, -1).T  # (Zp*Yp*Xp, C)
    squares = (view ** 2).mean(1, keepdim=True)
    rows = torch.empty((view.shape[0], c + 1), device=dev, dtype=torch.float32)  # (Zp*Yp*Xp, C + 1)
    rows[:, :c] = view
    rows[:, c:] = squares
    del view, squares, mp  # the padded features are in ``rows`` now: they need not be held twice while gathering
    base = points_zyx * stride + reach  # (N, 3) in padded voxels
    base_lin = (base[:, 0] * yp + base[:, 1]) * xp + base[:, 2]
    off = torch.as_tensor(offsets, device=dev, dtype=torch.long)
    off_lin = (off[:, 0] * yp + off[:, 1]) * xp + off[:, 2]
    fvec = fixed_cells[0][:, points_zyx[:, 0], points_zyx[:, 1], points_zyx[:, 2]].T.float()  # (N, C)
    weights = torch.cat([fvec * (-2.0 / c), torch.ones_like(fvec[:, :1])], 1)[:, :, None].contiguous()  # (N, C + 1, 1)
    n, d = len(points_zyx), len(offsets)
    out = torch.empty((n, d), device=dev, dtype=torch.float32)
    chunk = max(1, min(d, int(max_chunk_elements // max((c + 1) * n, 1))))
    # one set of buffers for every chunk: a fresh few hundred MB per chunk is memory the system must map and
    # zero each time (most of the discrete stage's system time on the CPU)
    idx_buf = torch.empty(n * chunk, device=dev, dtype=torch.long)
    gather_buf = torch.empty((n * chunk, c + 1), device=dev, dtype=torch.float32)
    prod_buf = torch.empty(n * chunk, device=dev, dtype=torch.float32)
    for s in range(0, d, chunk):
        dc = min(chunk, d - s)
        idx = torch.add(base_lin[:, None], off_lin[None, s:s + dc], out=idx_buf[:n * dc].view(n, dc)).view(-1)  # (N * Dc,)
        g = torch.index_select(rows, 0, idx, out=gather_buf[:n * dc]).view(n, dc, c + 1)  # (N, Dc, C + 1)
        out[:, s:s + dc] = torch.bmm(g, weights, out=prod_buf[:n * dc].view(n, dc, 1))[..., 0]
        if progress:
            progress(min(1.0, (s + chunk) / d))
    # rounding can leave tiny negative values where the features agree
    return out.add_((fvec ** 2).mean(1, keepdim=True)).clamp_min_(0.0)


def coupled_convex(costs: torch.Tensor, points_zyx: torch.Tensor, grid_shape: tuple[int, int, int], offsets_mm: torch.Tensor,
                   step_mm: float, coupling: tuple[float, ...], smoothing_passes: int, temperature: float, n: int,
                   cancel=None, masked: bool = False) -> torch.Tensor:
    """Coupled convex optimisation of a discrete displacement field.

    Alternates ``v = smooth(u)`` on the control grid with, at every point with
    costs, ``u = argmin_d cost(d) + theta |d - v|^2 / step^2`` for each
    ``theta`` in ``coupling`` (scaled by the mean cost spread). Points without
    costs take ``v``. The last discrete step is a soft-argmin. ``masked``: the smoothing averages the
    points with costs only (:func:`masked_smooth`).

    Args:
        costs: ``(N, D)`` cost volume at ``points_zyx`` (``(N, 3)`` control-grid indices).
        grid_shape: control grid ``(Zc, Yc, Xc)``.
        offsets_mm: ``(D, 3)`` displacements in world mm, :func:`~.costs.displacement_offsets` order.
        n: displacements per axis (``D = n^3``).

    Returns:
        ``(1, 3, Zc, Yc, Xc)`` smoothed displacement in world mm.
    """
    dev = costs.device
    row_spread = costs.mean(1, keepdim=True) - costs.min(1, keepdim=True).values  # (N, 1)
    scale = row_spread.mean().clamp_min(1e-8)
    costs, row_spread = costs / scale, row_spread / scale
    off = offsets_mm.to(dev, torch.float32)
    off_sq = (off ** 2).sum(1) / step_mm ** 2  # (D,)
    u = torch.zeros((1, 3, *grid_shape), device=dev, dtype=torch.float32)
    pz, py, px = points_zyx[:, 0], points_zyx[:, 1], points_zyx[:, 2]

    rows = max(1, 2 ** 24 // costs.shape[1])
    total_buf = torch.empty((min(rows, len(costs)), costs.shape[1]), device=dev, dtype=torch.float32)  # reused by every step

    def discrete(theta: float, v_pts: torch.Tensor, soft: bool) -> torch.Tensor:
        out = torch.empty_like(v_pts)
        for s in range(0, len(v_pts), rows):
            total = costs[s:s + rows]
            if theta > 0:
                # cost + theta |d - v|^2 / step^2, without the per-row constant theta |v|^2 / step^2
                # (it changes neither the argmin nor the softmax)
                total = torch.addmm(total, v_pts[s:s + rows], off.T, alpha=-2 * theta / step_mm ** 2,
                                    out=total_buf[:len(total)]).add_(theta * off_sq)
            if soft:
                out[s:s + rows] = soft_argmin(total, off, temperature, n, row_spread[s:s + rows])
            else:
                out[s:s + rows] = off[total.argmin(1)]
        return out

    if masked:
        weight = torch.zeros((1, 1, *grid_shape), device=dev, dtype=torch.float32)
        weight[0, 0, pz, py, px] = 1.0

        def smooth(t: torch.Tensor) -> torch.Tensor:
            return masked_smooth(t, weight, smoothing_passes)
    else:
        def smooth(t: torch.Tensor) -> torch.Tensor:
            return smooth3(t, smoothing_passes)

    zero = torch.zeros((len(points_zyx), 3), device=dev, dtype=torch.float32)
    u[0, :, pz, py, px] = discrete(0.0, zero, soft=False).T
    for i, theta in enumerate(coupling):
        if cancel:
            cancel()
        v = smooth(u)
        u = v.clone()
        u[0, :, pz, py, px] = discrete(float(theta), v[0, :, pz, py, px].T, soft=i == len(coupling) - 1).T
    return smooth(u)


def cost_covariance(costs: torch.Tensor, offsets_mm: torch.Tensor, temperature: float) -> torch.Tensor:
    """The covariance part of :func:`cost_moments`: ``(N, 3, 3)`` mm²."""
    return cost_moments(costs, offsets_mm, temperature)[1]


def uncertainty_map(moments: tuple[torch.Tensor, torch.Tensor], field: torch.Tensor, points_zyx: torch.Tensor,
                    grid_shape: tuple[int, int, int], passes: int) -> torch.Tensor:
    """``(Zc, Yc, Xc)`` expected distance (mm) between the displacement the costs allow and the one the level chose:
    ``sqrt(E_p |d - u|^2) = sqrt(trace(cov) + |mean - u|^2)`` at each control point with costs (``p`` of
    :func:`cost_moments`, ``u`` the level's regularised, inverse-consistent field there), extended to the other
    points by :func:`masked_smooth` (as the field is). The trace is large where the match is poorly determined
    (flat costs); the second term where the smooth field disagrees with what the images say (sliding, motion
    beyond the search range, a wrong minimum).

    Args:
        moments: ``(mean (N, 3), cov (N, 3, 3))`` of the points, from :func:`cost_moments`.
        field: ``(1, 3, Zc, Yc, Xc)`` the level's field (world mm, the same frame as the offsets).
        points_zyx: ``(N, 3)`` control-grid indices of the points.
    """
    mean, cov = moments
    pz, py, px = points_zyx[:, 0], points_zyx[:, 1], points_zyx[:, 2]
    u = field[0][:, pz, py, px].T.float()  # (N, 3)
    value = (torch.diagonal(cov, dim1=1, dim2=2).sum(1) + ((mean - u) ** 2).sum(1)).clamp_min(0.0).sqrt()
    out = torch.zeros((1, 1, *grid_shape), device=field.device, dtype=torch.float32)
    weight = torch.zeros_like(out)
    out[0, 0, pz, py, px] = value
    weight[0, 0, pz, py, px] = 1.0
    return masked_smooth(out, weight, passes)[0, 0]


def make_inverse_consistent(forward: torch.Tensor, backward: torch.Tensor, geometry: Geometry, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating averaging towards ``u(x) = -w(x + u(x))`` and ``w(y) = -u(y + w(y))``.

    Args:
        forward, backward: ``(1, 3, Z, Y, X)`` fields in world mm on ``geometry``
            (fixed -> moving and moving -> fixed, both on the same grid).

    Returns:
        The two fields after ``iterations`` steps.
    """
    if iterations <= 0:
        return forward, backward
    sampler = GridSampler(geometry, geometry, forward.device, forward.dtype)

    def along(field: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
        return sampler(field, by.permute(0, 2, 3, 4, 1), fill=None)

    u, w = forward, backward
    for _ in range(iterations):
        u, w = 0.5 * (u - along(w, u)), 0.5 * (w - along(u, w))
    return u, w


def _solve_level(fixed_cells, moving_sliding, points, stride, offsets, offsets_mm, step_mm, cg, config, ctx, progress,
                 moments: bool = False):
    """The level's smoothed field ``(1, 3, Zc, Yc, Xc)``, and with ``moments`` its costs' :func:`cost_moments`
    (else ``None``)."""
    with torch.no_grad():
        costs = dense_costs(fixed_cells, moving_sliding, points, stride, offsets, config.max_chunk_elements, progress)
        n = int(round(len(offsets) ** (1 / 3)))
        field = coupled_convex(costs, points, cg.shape, offsets_mm, step_mm, config.coupling, config.convex_smoothing_passes,
                               config.temperature, n, ctx.check_cancel, config.masked_smoothing)
        return field, (cost_moments(costs, offsets_mm, config.uncertainty_temperature) if moments else None)


# --------------------------------------------------------------------- method
@register_method("convex", "Dense discrete cost volume, coupled convex optimisation, inverse consistency, then Adam (talk 003)", ConvexConfig)
def run_convex(fixed, moving, fixed_mask, moving_mask, config: ConvexConfig, ctx: RunContext):
    dev, dt = ctx.device, ctx.dtype
    diag: dict = {"levels": []}
    fr, mr, mat, af, adiag = affine_aligned_start(fixed, moving, fixed_mask, moving_mask, config, ctx)
    diag.update(adiag)
    fg = af.geometry
    sampler = GridSampler(fg, fg, dev, dt)
    u = torch.zeros((1, *fg.shape, 3), device=dev, dtype=dt)  # world mm, w.r.t. the affinely aligned moving image
    n_levels = len(config.grid_spacing_mm)
    sp = max(fg.spacing)
    to_world = fg.scaled_direction
    lung = None  # the dilated fixed lung, where costs are computed (the same on every level)
    if af.lung is not None:
        it = int(round(config.mask_dilation_mm / sp))
        dilated = ndi.binary_dilation(af.lung, iterations=it) if it > 0 else af.lung
        lung = torch.as_tensor(dilated, device=dev)[None, None].to(dt)
    for li, (gmm, hmm, smm) in enumerate(zip(config.grid_spacing_mm, config.search_half_width_mm, config.search_step_mm)):
        ctx.check_cancel()
        stride = max(1, int(round(gmm / sp)))
        step = max(1, int(round(smm / sp)))
        radius = int(round(hmm / (step * sp)))
        offsets = displacement_offsets(radius, step)
        offsets_mm = torch.as_tensor((offsets[:, ::-1] * 1.0) @ to_world.T, device=dev, dtype=torch.float32)
        cg = control_geometry(fg, stride)
        lo, hi = 0.15 + 0.45 * li / n_levels, 0.15 + 0.45 * (li + 1) / n_levels
        with ctx.stage(f"cost_volume_{gmm:g}mm"), torch.no_grad():
            mw = sampler(af.moving_feat, u, fill=None) if li > 0 else af.moving_feat
            if lung is not None:
                cells = F.max_pool3d(_pad_to_multiple(lung, stride), stride, stride=stride)[0, 0] > 0
            else:
                cells = torch.ones(cg.shape, device=dev, dtype=torch.bool)
            points = torch.nonzero(cells)
            fc, ms = cell_features(af.fixed_feat, stride), sliding_cell_features(mw, stride)
            mc = cell_features(mw, stride) if config.inverse_consistent else None
            del mw  # (the warped moving features: only their cell means are needed any more)
        # the backward solve's sliding features are made when it starts, and each solve's are let go when it
        # ends (both at once would be two copies of the features at the feature grid's size)
        names = ("forward", "backward") if config.inverse_consistent else ("forward",)
        fields = []
        last = li == n_levels - 1
        moments = None  # the finest level's forward costs' moments, for the uncertainty map
        for k, name in enumerate(names):
            span = (lo + (hi - lo) * k / len(names), lo + (hi - lo) * (k + 1) / len(names))
            if name == "forward":
                a, b = fc, ms
                del fc, ms
            else:
                with ctx.stage(f"cost_volume_{gmm:g}mm"), torch.no_grad():
                    a, b = mc, sliding_cell_features(af.fixed_feat, stride)
                mc = None
            with ctx.stage(f"convex_{gmm:g}mm"):
                f, m = _solve_level(a, b, points, stride, offsets, offsets_mm, step * sp, cg, config, ctx,
                                    lambda f, s=span, nm=name: ctx.progress(f"convex {gmm:g} mm {nm}", s[0] + (s[1] - s[0]) * f),
                                    moments=config.own_uncertainty() and config.uncertainty_source == "level" and last and name == "forward")
                fields.append(f)
                moments = m if m is not None else moments
            del a, b
        with ctx.stage(f"convex_{gmm:g}mm"), torch.no_grad():
            d = fields[0]
            if config.inverse_consistent:
                d, _ = make_inverse_consistent(fields[0], fields[1], cg, config.consistency_iterations)
            if moments is not None:  # how far the costs would put each control point from where the level put it
                ctx.maps["uncertainty"] = GridMap(uncertainty_map(moments, d, points, cg.shape, config.convex_smoothing_passes), cg)
            d_fine = resample_field(d.permute(0, 2, 3, 4, 1).to(dt), cg, fg)  # (1, Z, Y, X, 3)
            # compose: the level matched fixed x to warped-moving x + d, i.e. to x + d + u(x + d)
            u = d_fine + (sampler(u.permute(0, 4, 1, 2, 3), d_fine, fill=None).permute(0, 2, 3, 4, 1) if li > 0 else 0)
        # (the length by square, sum and root: norm(dim=-1) of the permuted field is 30x slower on the CPU)
        diag["levels"].append({"stage": "convex", "grid_mm": gmm, "control_points": int(len(points)), "displacements": int(len(offsets)),
                               "half_width_mm": float(radius * step * sp), "step_mm": float(step * sp),
                               "mean_displacement_mm": round(float(d_fine.square().sum(-1).sqrt().mean()), 3)})
    with ctx.stage("compose_affine"), torch.no_grad():
        xw = fg.world_coordinates()
        total = apply_affine(mat, xw + u[0].to("cpu", torch.float32).numpy()) - xw
        current = torch.as_tensor(total, device=dev, dtype=dt)[None]
    # what the discrete stage held (its features, the last level's fields) is not needed by the refinement
    del xw, total, u, d, d_fine, fields, af, sampler, lung, cells, points
    ctx.progress("discrete stage done", 0.6)
    current_geom = fg
    refinement = Refinement.of(config, residual=True, label="adam", moving_fill=config.moving_fill)
    if refinement.enabled:
        current, current_geom, losses = refinement.run(fixed, moving, fixed_mask, fr, mr, current, fg, ctx,
                                                       (0.6, 0.97 if config.own_uncertainty() else 1.0))
        diag["levels"] += losses  # after the discrete levels, those of stage "refine"
    if config.own_uncertainty() and config.uncertainty_source == "field":
        with ctx.stage("uncertainty"):
            ctx.maps["uncertainty"] = GridMap(*field_cost_spread(
                fixed, moving, fixed_mask, fr, mr, lambda g: resample_field(current, current_geom, g), ctx, (0.97, 0.985),
                spacing_mm=max(2.0, config.feature_spacing_mm), mind_radius=config.mind_radius, mind_dilation=config.mind_dilation,
                temperature=config.uncertainty_temperature))
    diag["working_region"] = fr.to_dict()
    return GridField(current.detach().float(), current_geom), diag
