import dataclasses

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, read_image
from DeepLungRegLib.metrics import jacobian_determinant
from DeepLungRegLib.simulation import amplitude_parameters, read_pair, simulate_breathing, write_pair
from DeepLungRegLib.transforms import sample_field_at_points, warp_image


@pytest.fixture(scope="module")
def sample_ct(sample_path):
    return read_image(sample_path)


@pytest.mark.slow
@pytest.mark.parametrize("amplitude, lo, hi, max_lo, max_hi", [("small", 7.0, 9.0, 14.0, 28.0), ("large", 18.0, 23.0, 30.0, 55.0)])
def test_amplitude_presets_and_invertibility(sample_ct, amplitude, lo, hi, max_lo, max_hi):
    pair = simulate_breathing(sample_ct, amplitude=amplitude, seed=4)
    info = pair.info
    assert lo - 0.3 <= info["mean_lung_displacement_mm"] <= hi + 0.3
    assert max_lo <= info["max_lung_displacement_mm"] <= max_hi
    jac = jacobian_determinant(pair.field, pair.fixed.geometry)
    assert jac.min() > 0
    lung = pair.fixed_mask.array
    assert jac[lung].mean() < 1.0  # exhale compresses the lung
    assert info["inverse_residual_mm"] < 0.05


@pytest.mark.slow
def test_a_numeric_amplitude_sets_the_mean_lung_displacement(sample_ct):
    pair = simulate_breathing(sample_ct, amplitude=12.5, seed=4)
    assert pair.info["amplitude"] == 12.5
    assert abs(pair.info["mean_lung_displacement_mm"] - 12.5) < 0.5
    assert jacobian_determinant(pair.field, pair.fixed.geometry).min() > 0
    # the exponent lies between the presets' and a preset name keeps its own range
    assert amplitude_parameters(12.5)[0] == (12.5, 12.5)
    assert 0.8 < amplitude_parameters(12.5)[1] < 1.5
    assert amplitude_parameters("large") == ((18.0, 23.0), 0.8)
    assert amplitude_parameters("3") == ((3.0, 3.0), 1.5)


@pytest.mark.parametrize("amplitude", [0.2, float("nan"), 80, "-3"])
def test_an_absurd_numeric_amplitude_is_refused(sample_ct, amplitude):
    with pytest.raises(DeepLungRegError, match=r"mean lung displacement in mm and must lie in \[1, 40\]"):
        simulate_breathing(sample_ct, amplitude=amplitude)


@pytest.mark.slow
def test_the_reversed_pair_swaps_the_images_and_inverts_the_field(sample_ct):
    pair = simulate_breathing(sample_ct, amplitude="small", seed=7, noise_hu=0.0)
    rev = pair.reversed()
    assert rev.fixed is pair.moving and rev.moving is pair.fixed and rev.fixed_mask is pair.moving_mask
    assert np.array_equal(rev.fixed_landmarks, pair.moving_landmarks) and rev.info["reversed"]
    g = pair.fixed.geometry
    # the reversed ground truth maps the exhale landmarks onto the inhale ones
    # (to interpolation error: the inverse is computed on the 4 mm working grid, sliding boundaries are sharp)
    err = np.linalg.norm(rev.fixed_landmarks + sample_field_at_points(rev.field, g, rev.fixed_landmarks) - rev.moving_landmarks, axis=1)
    assert err.mean() < 0.1 and err.max() < 1.0
    assert rev.reversed().field is pair.field and not rev.reversed().info["reversed"]
    with pytest.raises(DeepLungRegError, match="no inverse field"):
        dataclasses.replace(pair, inverse_field=None).reversed()


@pytest.mark.slow
def test_motion_is_realistic(sample_ct):
    pair = simulate_breathing(sample_ct, amplitude="small", seed=5)
    g, u, lung = pair.fixed.geometry, pair.field, pair.fixed_mask.array
    z = g.world_coordinates()[..., 2]
    zl = z[lung]
    top, base = lung & (z > np.percentile(zl, 80)), lung & (z < np.percentile(zl, 20))
    # cranio-caudal motion grows towards the base and is superior (+z in LPS) on exhale
    assert u[base][:, 2].mean() > 3 * abs(u[top][:, 2].mean())
    assert u[base][:, 2].mean() > 0
    # cranio-caudal dominates the lateral and AP components in the lung
    assert np.abs(u[lung][:, 2]).mean() > np.abs(u[lung][:, 0]).mean()
    assert np.abs(u[lung][:, 2]).mean() > np.abs(u[lung][:, 1]).mean()
    # the chest wall far from the lung hardly moves
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(lung, iterations=10) & (pair.fixed.array > 200) & (z > np.percentile(zl, 50))
    assert np.linalg.norm(u[far], axis=-1).mean() < 0.25 * np.linalg.norm(u[lung], axis=-1).mean()


@pytest.mark.slow
def test_ground_truth_maps_moving_back_to_fixed(sample_ct):
    pair = simulate_breathing(sample_ct, amplitude="small", seed=6, noise_hu=0.0)
    warped = warp_image(pair.moving.with_array(pair.moving.array.astype(np.float32)), pair.field, pair.fixed.geometry, fill=-1024).array
    lung = pair.fixed_mask.array
    diff_gt = np.abs(warped - pair.fixed.array)[lung].mean()
    diff_none = np.abs(pair.moving.array.astype(np.float32) - pair.fixed.array)[lung].mean()
    assert diff_gt < 0.5 * diff_none
    # landmarks: inside the lung, and moving = p + u(p)
    p, q = pair.fixed_landmarks, pair.moving_landmarks
    assert 250 <= len(p) <= 300
    idx = np.round(pair.fixed.geometry.world_to_index(p)).astype(int)
    assert lung[idx[:, 2], idx[:, 1], idx[:, 0]].all()
    assert np.allclose(q, p + sample_field_at_points(pair.field, pair.fixed.geometry, p), atol=1e-4)


@pytest.mark.slow
def test_same_seed_same_pair_and_round_trip(sample_ct, tmp_path):
    a = simulate_breathing(sample_ct, amplitude="small", seed=7)
    b = simulate_breathing(sample_ct, amplitude="small", seed=7)
    assert np.array_equal(a.moving.array, b.moving.array)
    write_pair(a, tmp_path / "pair")
    with pytest.raises(DeepLungRegError, match="already holds"):
        write_pair(a, tmp_path / "pair")
    back = read_pair(tmp_path / "pair")
    assert np.allclose(back.field, a.field)
    assert np.allclose(back.fixed_landmarks, a.fixed_landmarks, atol=1e-3)
    assert np.array_equal(back.moving.array, a.moving.array)


def test_bad_simulation_input(sample_ct, tmp_path):
    with pytest.raises(DeepLungRegError, match="unknown amplitude"):
        simulate_breathing(sample_ct, amplitude="huge")
    with pytest.raises(DeepLungRegError, match="noise_hu"):
        simulate_breathing(sample_ct, noise_hu=-1)
    with pytest.raises(DeepLungRegError, match="not a simulated pair"):
        read_pair(tmp_path)


@pytest.mark.slow
def test_anatomy_brought_in_from_outside_the_ct_repeats_the_border(sample_ct):
    # exhale samples the inhale below the lowest slice; that region repeats the border, not a slab of air
    pair = simulate_breathing(sample_ct, amplitude="large", seed=3, noise_hu=0.0)
    g = pair.fixed.geometry
    pos = g.world_to_index((g.world_coordinates() + pair.inverse_field).reshape(-1, 3)).reshape(*g.shape, 3)
    outside = (pos < -0.5).any(-1) | (pos > np.array(g.shape[::-1]) - 0.5).any(-1)
    assert outside.sum() > 1000, "the large motion should reach beyond the CT somewhere"
    moving = pair.moving.array.astype(np.float32)
    air = lambda a: float((a < -950).mean())  # noqa: E731
    # as much air there as on the CT's own faces, not all air
    faces = np.concatenate([pair.fixed.array[i].ravel() for i in (0, -1)] + [pair.fixed.array[:, i].ravel() for i in (0, -1)]
                           + [pair.fixed.array[:, :, i].ravel() for i in (0, -1)])
    assert air(moving[outside]) < air(faces) + 0.2
    assert np.isfinite(moving).all()
