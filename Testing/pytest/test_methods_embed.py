"""Method ``embed``: its pieces on analytic cases, and an end-to-end run on a small simulated pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError, Geometry, read_image
from DeepLungRegLib.device import precision_scope
from DeepLungRegLib.methods import register
from DeepLungRegLib.methods.costs import displacement_offsets, keypoint_costs
from DeepLungRegLib.methods.embed import (
    EmbedConfig, densify_gaussian, densify_tps, graph_diffuse, graph_laplacian, reject_outliers, soft_argmin,
)
from DeepLungRegLib.metrics import tre
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.transforms import resample_to_spacing


def test_displacement_offsets_order_and_count():
    off = displacement_offsets(2, 3)
    assert off.shape == (125, 3)
    assert off[0].tolist() == [-6, -6, -6] and off[-1].tolist() == [6, 6, 6]
    assert off[1].tolist() == [-6, -6, -3]  # x fastest, z slowest
    assert off[62].tolist() == [0, 0, 0]


@pytest.mark.parametrize("step, shift", [(1, (2, -1, 3)), (2, (2, -4, 6))])
def test_keypoint_costs_find_a_known_shift(step, shift, device):
    """Moving features = fixed features shifted by s voxels: the cost minimum sits at displacement s."""
    rng = np.random.default_rng(0)
    f = torch.as_tensor(rng.normal(size=(1, 4, 30, 28, 26)), dtype=torch.float32, device=device)
    shift = np.array(shift)
    m = torch.roll(f, shifts=tuple(int(s) for s in shift), dims=(2, 3, 4))  # m(x + s) = f(x)
    kp = np.array([[12, 14, 11], [15, 12, 13], [14, 13, 12]])
    with precision_scope("float32", torch.device(device)):  # as register() runs it: strict float32 (no TF32 convolutions on CUDA)
        costs = keypoint_costs(f, m, kp, radius=3, step=step, patch_radius=1, chunk=2)
    off = displacement_offsets(3, step)
    assert costs.shape == (3, 7 ** 3)
    for row in costs:
        assert off[int(row.argmin())].tolist() == shift.tolist()
        assert float(row.min()) == pytest.approx(0.0, abs=1e-5)


def test_graph_laplacian_and_diffusion():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 50, size=(200, 3))
    lap = graph_laplacian(pts, 8)
    dense = lap.toarray()
    assert np.allclose(dense, dense.T) and np.allclose(dense.sum(1), 0, atol=1e-9)
    const = np.full((200, 2), 3.0)
    assert np.allclose(graph_diffuse(const, lap, 5.0), 3.0, atol=1e-5)  # constants are kept
    noisy = const + rng.normal(size=const.shape)
    assert graph_diffuse(noisy, lap, 5.0).std() < 0.6 * noisy.std()  # noise is smoothed
    assert graph_diffuse(noisy, lap, 0.0) is noisy


def test_soft_argmin_is_subvoxel():
    off = displacement_offsets(2, 1).astype(np.float32)
    target = np.array([0.3, -0.4, 1.2], np.float32)
    costs = torch.as_tensor(((off - target) ** 2).sum(1))[None]  # a parabola around a sub-voxel minimum
    d = soft_argmin(costs, torch.as_tensor(off), 0.05, 5)[0].numpy()
    assert np.linalg.norm(d - target) < 0.35
    assert np.linalg.norm(off[int(costs.argmin())] - target) > np.linalg.norm(d - target)


def test_outliers_are_replaced_by_the_neighbour_median():
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 40, size=(100, 3))
    disp = np.tile([1.0, 2.0, 3.0], (100, 1))
    disp[7] = [20.0, 0.0, 0.0]
    out, n = reject_outliers(pts, disp, 8, 5.0)
    assert n == 1 and np.allclose(out[7], [1, 2, 3]) and np.allclose(out[np.arange(100) != 7], disp[np.arange(100) != 7])


@pytest.mark.parametrize("how", ["tps", "gaussian"])
def test_densify_reproduces_smooth_displacements(oblique, how):
    rng = np.random.default_rng(3)
    g = oblique
    pts = g.index_to_world(rng.uniform(2, np.array(g.size) - 3, size=(300, 3)))
    a = np.array([[0.02, 0.0, 0.01], [0.0, -0.03, 0.0], [0.01, 0.0, 0.02]])
    vals = pts @ a.T + np.array([1.0, -2.0, 0.5])  # an affine field
    dense = densify_tps(pts, vals, g, 0.0) if how == "tps" else densify_gaussian(pts, vals, g, 6.0)
    truth = (g.world_coordinates().reshape(-1, 3) @ a.T + np.array([1.0, -2.0, 0.5])).reshape(dense.shape)
    inner = (slice(3, -3),) * 3
    tol = 1e-3 if how == "tps" else 0.5  # TPS is exact on affine data; Gaussian averaging blurs
    assert np.abs(dense[inner] - truth[inner]).max() < tol


@pytest.mark.parametrize("kwargs, match", [
    ({"embedding": "svd"}, "embedding must be"),
    ({"second_pass_range_mm": 40.0, "second_pass_step_mm": 0.5}, "too many"),
    ({"densify": "nearest"}, "densify must be"),
    ({"search_range_mm": 100.0, "search_step_mm": 1.0}, "too many"),
    ({"keypoints": 1}, "keypoints"),
    ({"densify_spacing_mm": 0.1}, "densify_spacing_mm"),
    ({"refine_levels_mm": [4.0], "refine_iterations": [1, 2]}, "equal length"),
])
def test_embed_config_rejects_absurd_values(kwargs, match):
    with pytest.raises(DeepLungRegError, match=match):
        EmbedConfig.from_dict(kwargs)


@pytest.fixture(scope="module")
def small_pair(sample_path):
    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="large", seed=5)


@pytest.mark.slow
def test_embed_recovers_large_motion_on_a_small_pair(small_pair, device):
    p = small_pair
    cfg = {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "keypoints": 800, "refine_levels_mm": [4.0], "refine_iterations": [30],
           "refine_learning_rates": [0.3]}
    res = register(p.fixed, p.moving, "embed", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config=cfg, device=device)
    before = tre(p.fixed_landmarks, p.moving_landmarks).mean()
    after = tre(p.fixed_landmarks, p.moving_landmarks, res.field, res.geometry).mean()
    assert before > 10 and after < 0.3 * before
    d = res.diagnostics
    assert d["keypoints"] >= 100 and d["displacements"] == 11 ** 3 and "cost_volume" in res.timings
    # the second pass: 12 mm wide on 4 mm features, i.e. +-2 voxels
    assert d["second_pass_displacements"] == 5 ** 3 and "second_pass_cost_volume" in res.timings
    assert d["densify_spacing_mm"] == 8.0
    assert [(lv["stage"], lv["level_mm"]) for lv in d["levels"]] == [("refine", 4.0)]
    from DeepLungRegLib.metrics import jacobian_determinant, jacobian_stats

    assert jacobian_stats(jacobian_determinant(res.field, res.geometry), p.fixed_mask.array)["folding_percent"] < 0.1


def test_torch_jacobian_of_an_affine_field_is_its_determinant(oblique, device):
    """The differentiable Jacobian (used by the folding penalty) on an oblique, anisotropic grid."""
    from DeepLungRegLib.losses import folding_penalty, jacobian_determinant_torch

    a = np.array([[1.1, 0.05, 0.0], [0.02, 0.9, 0.03], [0.0, -0.04, 1.2]])
    x = oblique.world_coordinates()
    u = torch.as_tensor((x @ a.T - x)[None], dtype=torch.float64, device=device)
    m = torch.as_tensor(oblique.index_to_world_matrix[:3, :3], device=device)
    j = jacobian_determinant_torch(u, m)
    assert torch.allclose(j, torch.full_like(j, np.linalg.det(a)), atol=1e-9)
    assert float(folding_penalty(u, m)) == 0.0
    flip = torch.as_tensor((x @ np.diag([-1.0, 1.0, 1.0]).T - x)[None], dtype=torch.float64, device=device)  # a mirror folds everywhere
    assert float(folding_penalty(flip, m)) == pytest.approx(1.1 ** 2)


@pytest.mark.slow
def test_a_saved_pca_basis_reloads_and_reproduces_the_fit(small_pair, tmp_path, device):
    """A basis fitted on a pair and written with pca_basis_out, then loaded for the same pair,
    gives the same field; bad basis files are refused with their name."""
    p = small_pair
    cfg = {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "keypoints": 300, "refine": False, "embedding": "pca", "components": 32}
    out = tmp_path / "basis.npz"
    a = register(p.fixed, p.moving, "embed", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask,
                 config={**cfg, "pca_basis_out": str(out)}, device=device)
    assert out.is_file() and a.diagnostics["pca_basis"] == "fitted on this pair"
    b = register(p.fixed, p.moving, "embed", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask,
                 config={**cfg, "pca_basis": str(out)}, device=device)
    assert b.diagnostics["pca_basis"] == "loaded" and b.diagnostics["second_pass_pca_basis"] == "loaded"
    assert b.diagnostics["pca_variance_explained"] == pytest.approx(a.diagnostics["pca_variance_explained"], abs=1e-3)
    assert np.abs(a.field - b.field).max() < 1e-3
    with pytest.raises(DeepLungRegError, match="exists"):
        register(p.fixed, p.moving, "embed", config={**cfg, "pca_basis_out": str(out)}, device="cpu")
    with pytest.raises(DeepLungRegError, match="does not exist"):
        register(p.fixed, p.moving, "embed", config={**cfg, "pca_basis": str(tmp_path / "none.npz")}, device="cpu")
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(DeepLungRegError, match="holds no PCA basis"):
        register(p.fixed, p.moving, "embed", config={**cfg, "pca_basis": str(bad)}, device="cpu")
    with pytest.raises(DeepLungRegError, match="need embedding='pca'"):
        EmbedConfig.from_dict({"pca_basis": str(out)})


@pytest.mark.slow
def test_embeds_uncertainty_is_higher_where_the_lung_is_made_featureless(small_pair):
    """Issue 31 for ``embed``: its keypoints' matching costs give the map (mm on the fixed grid), higher in a block of
    the lung made featureless in both images than in the rest of the lung."""
    from helpers_convex import assert_less_sure_in_the_block, featureless_block

    fixed, moving, block = featureless_block(small_pair)
    cfg = {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "keypoints": 800, "refine_levels_mm": [4.0], "refine_iterations": [20],
           "refine_learning_rates": [0.3], "uncertainty": True}
    r = register(fixed, moving, "embed", fixed_mask=small_pair.fixed_mask, moving_mask=small_pair.moving_mask, config=cfg, device="cpu")
    assert r.diagnostics["uncertainty_estimate"] == "matching costs"
    assert_less_sure_in_the_block(r.maps["uncertainty"], small_pair, block)


def test_embeds_uncertainty_points_lie_on_their_grid_and_are_capped(monkeypatch):
    """The map's points are every stride-th feature voxel, its grid puts each value at that voxel's centre, and the
    stride grows where there would be more than ``UNCERTAINTY_POINTS`` (the costs are points x displacements)."""
    from DeepLungRegLib.methods import uncertainty
    from DeepLungRegLib.methods.base import RunContext
    from DeepLungRegLib.methods.embed import EmbedConfig, dense_uncertainty

    fg = Geometry(size=(20, 18, 16), spacing=(2.0, 2.0, 2.5), origin=(-10.0, 5.0, 30.0),
                  direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    gen = torch.Generator().manual_seed(0)
    ff = torch.nn.functional.avg_pool3d(torch.rand((1, 4, *fg.shape), generator=gen), 3, 1, 1)
    ctx = RunContext(torch.device("cpu"), torch.float32, lambda s, f: None, lambda: False)
    cfg = EmbedConfig.from_dict({"keypoint_distance_mm": 4.0, "uncertainty": True})
    zero = torch.zeros((1, *fg.shape, 3))
    values, g = dense_uncertainty(ff, ff, zero, None, fg, cfg, ctx)
    assert values.shape == g.shape == tuple(len(range(0, n, 2)) for n in fg.shape) and np.isfinite(values).all()
    assert np.allclose(g.index_to_world(np.array([[3.0, 2.0, 1.0]])), fg.index_to_world(np.array([[6.0, 4.0, 2.0]])))
    monkeypatch.setattr(uncertainty, "UNCERTAINTY_POINTS", 100)
    capped, gc = dense_uncertainty(ff, ff, zero, None, fg, cfg, ctx)
    assert capped.size <= 2 * 100 and gc.spacing[0] > g.spacing[0]


def test_embeds_reverse_registration_writes_no_pca_basis():
    """The inverse-consistency uncertainty registers the pair the other way round: that run must not write (and so
    refuse) the PCA basis file the forward run has just written."""
    back = EmbedConfig.from_dict({"embedding": "pca", "pca_basis_out": "bases.npz", "uncertainty": True}).reverse_config()
    assert back.pca_basis_out == "" and back.uncertainty is False and back.embedding == "pca"
