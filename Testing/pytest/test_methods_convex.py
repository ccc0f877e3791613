"""Method ``convex`` and ``deeplungreg tune``: the pieces on analytic cases, an end-to-end run
on a small simulated pair, and a tiny tuning run whose config ``register --config`` accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.methods import register
from DeepLungRegLib.methods.convex import (
    masked_smooth,
    ConvexConfig,
    cell_features,
    control_geometry,
    coupled_convex,
    dense_costs,
    make_inverse_consistent,
    sliding_cell_features,
)
from DeepLungRegLib.methods.common import smooth3
from DeepLungRegLib.methods.costs import displacement_offsets
from DeepLungRegLib.metrics import jacobian_determinant, jacobian_stats, tre

from helpers_convex import FAST, assert_less_sure_in_the_block, featureless_block, small_pair


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_control_cells_are_centred_on_their_voxels(oblique, stride):
    """On an oblique, anisotropic, off-origin grid, control point i sits at the mean of its cell's voxel centres
    and the cell mean of the world coordinates is that point (for full cells)."""
    cg = control_geometry(oblique, stride)
    assert cg.size == tuple(int(np.ceil(n / stride)) for n in oblique.size)
    assert np.allclose(cg.direction, oblique.direction) and np.allclose(cg.spacing, np.array(oblique.spacing) * stride)
    world = torch.as_tensor(oblique.world_coordinates()).permute(3, 0, 1, 2)[None]  # (1, 3, Z, Y, X)
    means = cell_features(world, stride)[0].permute(1, 2, 3, 0).numpy()
    full = tuple(slice(0, n // stride) for n in oblique.shape)
    assert np.allclose(means[full], cg.world_coordinates()[full], atol=1e-9)
    # the sliding cell starting at voxel stride * i is the same cell
    sliding = sliding_cell_features(world, stride)[0].permute(1, 2, 3, 0).numpy()
    assert np.allclose(sliding[(slice(0, None, stride),) * 3][full], means[full], atol=1e-9)


@pytest.mark.parametrize("stride, step, shift", [(2, 1, (2, -1, 3)), (3, 2, (2, -4, 6))])
def test_dense_costs_find_a_known_shift(stride, step, shift, device):
    """Moving features = fixed features shifted by s voxels: every interior control point's cost minimum is s."""
    rng = np.random.default_rng(0)
    f = torch.as_tensor(rng.normal(size=(1, 5, 30, 27, 24)), dtype=torch.float32, device=device)
    m = torch.roll(f, shifts=shift, dims=(2, 3, 4))  # m(x + s) = f(x)
    cells = cell_features(f, stride)
    pts = torch.nonzero(torch.ones(cells.shape[2:], dtype=torch.bool, device=device))
    inner = ((pts * stride >= 8) & (pts * stride + stride <= torch.tensor(f.shape[2:], device=device) - 8)).all(1)
    pts = pts[inner]
    off = displacement_offsets(3, step)
    costs = dense_costs(cells, sliding_cell_features(m, stride), pts, stride, off, max_chunk_elements=2 ** 16)
    assert costs.shape == (len(pts), 7 ** 3)
    assert costs.device.type == torch.device(device).type
    best = off[costs.argmin(1).cpu().numpy()]
    assert (best == np.array(shift)).all()
    assert float(costs.min(1).values.max()) == pytest.approx(0.0, abs=1e-5)
    # brute force for one point and one displacement
    p, k = pts[3], 100
    z, y, x = (p * stride).tolist()
    dz, dy, dx = off[k]
    a = f[0, :, z:z + stride, y:y + stride, x:x + stride].mean((1, 2, 3))
    b = m[0, :, z + dz:z + dz + stride, y + dy:y + dy + stride, x + dx:x + dx + stride].mean((1, 2, 3))
    assert float(costs[3, k]) == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-4)


def test_coupled_convex_recovers_a_smooth_field_and_overrules_outliers(device):
    """Costs = squared distance to a constant displacement, with a wrong minimum planted at 5 % of the points:
    the coupling pulls those points back; points without costs follow the smoothing."""
    rng = np.random.default_rng(1)
    n, step = 7, 2.0
    off_mm = torch.as_tensor(displacement_offsets(3, 1) * step, dtype=torch.float32)
    truth = torch.tensor([2.0, -4.0, 2.0])
    shape = (12, 12, 12)
    pts = torch.nonzero(torch.ones(shape, dtype=torch.bool))
    keep = torch.as_tensor(rng.random(len(pts)) < 0.7)  # 30 % of points carry no cost
    pts = pts[keep]
    costs = ((off_mm[None] - truth) ** 2).sum(-1).repeat(len(pts), 1)
    bad = torch.as_tensor(rng.random(len(pts)) < 0.05)
    costs[bad, 0] = -50.0  # a deep wrong minimum at (-6, -6, -6)
    costs, pts, off_mm, truth = costs.to(device), pts.to(device), off_mm.to(device), truth.to(device)
    u0 = coupled_convex(costs, pts, shape, off_mm, step, (0.0,), 0, 0.15, n)
    u = coupled_convex(costs, pts, shape, off_mm, step, (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0), 2, 0.15, n)
    err0 = (u0[0].permute(1, 2, 3, 0) - truth).norm(dim=-1)
    err = (u[0].permute(1, 2, 3, 0) - truth).norm(dim=-1)
    assert float(err.max()) < 0.5 and float(err0.max()) > 5.0
    assert u.shape == (1, 3, *shape)


def test_inverse_consistency_of_opposite_translations_is_kept_and_errors_shrink(oblique):
    t = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)
    shape = oblique.shape
    u = t.view(1, 3, 1, 1, 1).expand(1, 3, *shape).clone()
    w = -u
    u2, w2 = make_inverse_consistent(u, w, oblique, 5)
    assert torch.allclose(u2, u, atol=1e-9) and torch.allclose(w2, w, atol=1e-9)
    rng = np.random.default_rng(2)
    noise = torch.as_tensor(rng.normal(scale=0.5, size=w.shape))
    w_bad = w + noise

    def inconsistency(a, b):
        from DeepLungRegLib.transforms.warp import GridSampler

        s = GridSampler(oblique, oblique, "cpu", torch.float64)
        return float((a + s(b, a.permute(0, 2, 3, 4, 1), fill=None))[:, :, 3:-3, 3:-3, 3:-3].abs().mean())

    u3, w3 = make_inverse_consistent(u, w_bad, oblique, 10)
    assert inconsistency(u3, w3) < 0.5 * inconsistency(u, w_bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"grid_spacing_mm": [8.0, 4.0], "search_step_mm": [4.0]}, "equal length"),
    ({"grid_spacing_mm": [8.0, 4.0], "search_half_width_mm": [60.0, 6.0], "search_step_mm": [2.0, 2.0]}, "too many"),
    ({"coupling": []}, "at least one"),
    ({"grid_spacing_mm": [1.0, 4.0], "search_half_width_mm": [36.0, 6.0], "search_step_mm": [6.0, 2.0]}, "grid_spacing_mm must be between 2.0"),
    ({"refine_levels_mm": [3.0], "refine_iterations": [1, 2]}, "equal length"),
    ({"temperature": 0.0}, "temperature"),
])
def test_convex_config_rejects_absurd_values(kwargs, match):
    with pytest.raises(DeepLungRegError, match=match):
        ConvexConfig.from_dict(kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("inverse_consistent", [True, False])
def test_convex_recovers_large_motion_on_a_small_pair(small_pair, inverse_consistent, device):
    p = small_pair
    res = register(p.fixed, p.moving, "convex", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask,
                   config={**FAST, "inverse_consistent": inverse_consistent}, device=device)
    before = tre(p.fixed_landmarks, p.moving_landmarks).mean()
    after = tre(p.fixed_landmarks, p.moving_landmarks, res.field, res.geometry).mean()
    assert before > 10 and after < 0.3 * before
    assert res.field.shape == (*p.fixed.geometry.shape, 3)
    levels = res.diagnostics["levels"]  # one per-level list: the discrete levels, then the refinement's
    assert [lv["stage"] for lv in levels] == ["convex", "convex", "refine"]
    assert [lv["displacements"] for lv in levels[:2]] == [13 ** 3, 3 ** 3] and levels[0]["control_points"] > 50
    assert levels[2]["level_mm"] == 4.0 and np.isfinite(levels[2]["similarity"])
    assert {"cost_volume_8mm", "convex_8mm", "convex_4mm"} <= set(res.timings)
    assert jacobian_stats(jacobian_determinant(res.field, res.geometry), p.fixed_mask.array)["folding_percent"] < 0.1


@pytest.mark.parametrize("fill", [None, 0.0])
def test_the_aligned_start_repeats_the_moving_border_where_its_field_of_view_cuts_the_lung(small_pair, fill):
    """The moving image's field of view ends 8 slices (32 mm) into the lung, as where a CT of the upper thorax cuts
    the inhale lung. Beyond the cut, ``moving_fill=None`` (``outside_moving="border"``, convex's default) repeats the
    edge, so the moving features there carry the lung's structure and no edge of their own; ``0.0`` (``"air"``) fills
    it, so they are flat."""
    from DeepLungRegLib.io.images import Image
    from DeepLungRegLib.methods.common import aligned_features, region_geometry

    p = small_pair
    k0 = int(np.nonzero(p.moving_mask.array.any(axis=(1, 2)))[0].min()) + 8  # the first slice the moving image keeps
    mg = p.moving.geometry
    cut = Image(np.ascontiguousarray(p.moving.array[k0:]), mg.crop((0, 0, k0), (mg.size[0], mg.size[1], mg.size[2] - k0)))
    cut_mask = Image(np.ascontiguousarray(p.moving_mask.array[k0:]), cut.geometry)
    fr, mr = region_geometry(p.fixed, p.fixed_mask, 20.0), region_geometry(cut, cut_mask, 20.0)
    af = aligned_features(p.fixed, cut, fr, mr, p.fixed_mask, np.eye(4), 4.0, 1, 2, torch.device("cpu"), torch.float32,
                          moving_fill=fill)
    g = af.geometry  # the fixed region, axis-aligned like the moving grid: its slices lie at constant z
    z = g.index_to_world(np.stack([np.zeros(g.size[2]), np.zeros(g.size[2]), np.arange(g.size[2])], 1).astype(float))[:, 2]
    beyond = np.nonzero(cut.geometry.world_to_index(np.stack([np.zeros_like(z), np.zeros_like(z), z], 1))[:, 2] < -3)[0]
    assert len(beyond) >= 2, "the cut should leave fixed slices beyond the moving field of view"
    slab = af.moving_feat[0][:, beyond]  # (C, slices, Y, X)
    in_plane = float(slab.std(dim=(2, 3)).mean())
    if fill is None:
        assert in_plane > 0.02  # the edge's structure, repeated
        assert torch.allclose(slab[:, 1:], slab[:, :-1], atol=1e-4)  # and nothing changes along the cut's normal
    else:
        assert in_plane < 1e-4  # flat air
    assert ConvexConfig().outside_moving == "border"


def test_the_refinement_samples_the_moving_border_beyond_the_field_of_view_and_feels_no_edge_there(small_pair, monkeypatch):
    """Beyond the moving grid's last slice, ``border`` sampling (the refinement of ``outside_moving="border"``) repeats
    that slice's features, so a point there is pulled neither way along the cut's normal; zeros make an edge whose
    gradient pulls it. Convex's and embed's refinements sample the border (unless ``outside_moving="air"``); adam's
    (no aligned start, not measured) zeros."""
    from DeepLungRegLib.geometry import Geometry
    from DeepLungRegLib.methods.adam import AdamConfig
    from DeepLungRegLib.methods.embed import EmbedConfig
    from DeepLungRegLib.methods.refine import Refinement
    from DeepLungRegLib.transforms.warp import GridSampler

    g = Geometry(origin=(0.0, 0.0, 0.0), spacing=(2.0, 2.0, 2.0), direction=tuple(np.eye(3).ravel()), size=(6, 6, 8))
    torch.manual_seed(0)
    feat = torch.rand((1, 3, 8, 6, 6)) + 0.5  # (N, C, Z, Y, X), nothing near zero
    sampler = GridSampler(g, g)
    index = torch.tensor([int(np.ravel_multi_index((7, 3, 3), (8, 6, 6)))])  # the last slice's middle voxel
    for border in (True, False):
        fill = None if border else 0.0
        far = sampler.sample_points(feat, index, torch.tensor([[[0.0, 0.0, 3.0]]]), fill=fill)  # 1.5 slices out
        assert torch.allclose(far[0, :, 0], feat[0, :, 7, 3, 3] if border else torch.zeros(3), atol=1e-6)
        near = torch.tensor([[[0.0, 0.0, 1.0]]], requires_grad=True)  # half a slice out: zeros blend in
        moved = sampler.sample_points(feat, index, near, fill=fill)
        pull = float(torch.autograd.grad((2.0 - moved).pow(2).mean(), near)[0][0, 0, 2])
        assert (abs(pull) < 1e-6) if border else (abs(pull) > 1e-3)  # the edge of zeros pulls; the border does not
    seen = []  # which sampling each method's refinement uses
    monkeypatch.setattr(Refinement, "run", lambda self, *a, **k: seen.append(self.moving_fill) or (a[5], a[6], []))
    p = small_pair
    cheap_embed = {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "keypoints": 200}
    for method, config in (("convex", FAST), ("convex", dict(FAST, outside_moving="air")), ("embed", cheap_embed),
                           ("embed", dict(cheap_embed, outside_moving="air")), ("adam", None)):
        register(p.fixed, p.moving, method, fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config=config)
    assert seen == [None, 0.0, None, 0.0, 0.0]  # None: the border repeated
    assert EmbedConfig().outside_moving == "border" and not hasattr(AdamConfig(), "outside_moving")


def test_masked_smoothing_keeps_the_lungs_field_at_its_boundary_and_extends_it_outwards():
    """Sliding: a field of 30 mm inside the lung (the points with costs) and 0 outside. The plain smoothing pulls
    the boundary's points towards 0; the masked one keeps 30 there and extends it to the points it reaches."""
    u = torch.zeros((1, 3, 12, 12, 12))
    weight = torch.zeros((1, 1, 12, 12, 12))
    weight[..., :6, :, :] = 1.0  # the lung: the upper half
    u[:, 0] = 30.0 * weight[:, 0]
    plain, masked = smooth3(u, 2), masked_smooth(u, weight, 2)
    assert float(plain[0, 0, 5].mean()) < 25.0  # the boundary's points lose a fifth or more
    assert torch.allclose(masked[0, 0, :8], torch.full_like(masked[0, 0, :8], 30.0))  # kept, and extended 2 points out
    assert torch.allclose(masked[0, 1:], torch.zeros_like(masked[0, 1:]))
    assert torch.allclose(masked_smooth(u, torch.ones_like(weight), 2), plain)  # everywhere weighted: the plain smoothing


def test_the_cost_spread_points_along_the_axis_where_the_cost_is_flat():
    """Issue 31's analytic cases: a cost that does not change along x (a vessel along x) spreads the displacement along
    x; a sharp minimum does not; a flat cost (no features) spreads it most."""
    from DeepLungRegLib.methods.convex import cost_covariance

    offsets = displacement_offsets(3, 1)  # (343, 3) z, y, x voxels
    off_mm = torch.as_tensor(offsets[:, ::-1] * 2.0, dtype=torch.float32)  # world x, y, z in mm (2 mm steps)
    x, y, z = off_mm[:, 0], off_mm[:, 1], off_mm[:, 2]
    flat_x = (y ** 2 + z ** 2)[None]  # no change along x
    sharp = (x ** 2 + y ** 2 + z ** 2)[None]
    featureless = torch.full_like(sharp, 1.0) + 0.01 * sharp
    cov = cost_covariance(torch.cat([flat_x, sharp, featureless]), off_mm, temperature=0.1)
    evals, evecs = torch.linalg.eigh(cov[0])
    assert abs(float(evecs[0, -1])) > 0.99 and float(evals[-1]) > 4 * float(evals[-2])  # the principal axis is x
    spread = torch.diagonal(cov, dim1=1, dim2=2).sum(1).sqrt()
    assert float(spread[1]) < 0.5 * float(spread[0]) < float(spread[2])
    assert torch.allclose(cov, cov.transpose(1, 2), atol=1e-4)


@pytest.mark.parametrize("source", ["field", "level"])
def test_the_uncertainty_is_higher_where_the_lung_is_made_featureless(small_pair, source):
    """Issue 31: a block of the lung set to one value in both images is less sure than the rest of the lung, whether the
    costs are searched around the final field or are the finest level's own; the map is in mm on the fixed grid, and
    summarised per lung."""
    fixed, moving, block = featureless_block(small_pair)
    # a finest search of +-8 mm (5 steps a side at 4 mm): room for the level's costs to spread; the level's map with the
    # field smoothing it was validated with (two passes; docs/uncertainty.md)
    level = {"convex_smoothing_passes": 2} if source == "level" else {}
    r = register(fixed, moving, "convex", fixed_mask=small_pair.fixed_mask, moving_mask=small_pair.moving_mask,
                 config={**FAST, "search_half_width_mm": [24.0, 8.0], "uncertainty": True, "uncertainty_source": source, **level},
                 device="cpu")
    assert ("uncertainty" in r.timings) == (source == "field")
    assert r.diagnostics["uncertainty_estimate"] == "matching costs"
    assert_less_sure_in_the_block(r.maps["uncertainty"], small_pair, block)
