import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image
from DeepLungRegLib.geometry import lps_to_ras, ras_to_lps


def test_index_world_round_trip(oblique):
    ijk = np.random.default_rng(0).uniform(0, 15, (50, 3))
    assert np.allclose(oblique.world_to_index(oblique.index_to_world(ijk)), ijk)


def test_index_to_world_uses_direction_spacing_origin(oblique):
    e = oblique.index_to_world(np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]))
    d = oblique.direction_matrix
    assert np.allclose(e[3], oblique.origin)
    for axis in range(3):
        assert np.allclose(e[axis] - e[3], d[:, axis] * oblique.spacing[axis])


def test_world_coordinates_match_index_to_world(oblique):
    w = oblique.world_coordinates()
    assert w.shape == (*oblique.shape, 3)
    k, j, i = 3, 5, 7
    assert np.allclose(w[k, j, i], oblique.index_to_world(np.array([[i, j, k]]))[0])


def test_crop_keeps_world_positions(oblique):
    c = oblique.crop((4, 3, 2), (10, 8, 6))
    assert np.allclose(c.index_to_world(np.array([[1.0, 2, 3]])), oblique.index_to_world(np.array([[5.0, 5, 5]])))


def test_with_spacing_keeps_extent_and_first_voxel(oblique):
    g = oblique.with_spacing(0.75)
    assert np.allclose(g.origin, oblique.origin)
    ext_old = (np.array(oblique.size) - 1) * np.array(oblique.spacing)
    ext_new = (np.array(g.size) - 1) * np.array(g.spacing)
    assert np.all(np.abs(ext_new - ext_old) <= 0.75)


def test_lps_ras_is_an_involution():
    p = np.array([[1.0, -2.0, 3.0]])
    assert np.allclose(lps_to_ras(p), [[-1.0, 2.0, 3.0]])
    assert np.allclose(ras_to_lps(lps_to_ras(p)), p)


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=(0, 2, 2), spacing=(1, 1, 1)), "size"),
    (dict(size=(2, 2, 2), spacing=(1, -1, 1)), "spacing"),
    (dict(size=(2, 2, 2), spacing=(1, 1, 1), direction=(0,) * 9), "singular"),
    (dict(size=(2, 2), spacing=(1, 1, 1)), "need 3"),
])
def test_bad_geometry(kwargs, match):
    with pytest.raises(DeepLungRegError, match=match):
        Geometry(**kwargs)


@pytest.mark.parametrize("axes, signs", [((0, 1, 2), (1, 1, 1)), ((0, 1, 2), (-1, -1, 1)), ((1, 2, 0), (1, -1, 1)), ((2, 0, 1), (-1, 1, -1))])
def test_reorient_is_lossless_and_keeps_world_positions(axes, signs):
    """Any signed-permutation storage comes back to the LPS-ordered one, voxel for voxel."""
    from DeepLungRegLib.simulation.storage import restore, signed_permutation
    from DeepLungRegLib.transforms.frames import reorient

    g = Geometry((7, 5, 4), (1.5, 2.0, 3.0), (-10.0, 4.0, 30.0))
    img = Image(np.arange(np.prod(g.shape), dtype=np.int16).reshape(g.shape), g)
    stored = restore(img, signed_permutation(g, axes, signs))
    assert stored.geometry.nearest_axes() == (axes, signs) and stored.geometry.is_axis_aligned()
    back = reorient(stored)
    assert back.geometry.same_as(g, tol=1e-9) and np.array_equal(back.array, img.array)
    # the same voxel centre holds the same value in both storages
    ijk = np.array([[2.0, 3.0, 1.0]])
    w = g.index_to_world(ijk)
    i2, j2, k2 = np.round(stored.geometry.world_to_index(w)[0]).astype(int)
    assert stored.array[k2, j2, i2] == img.array[1, 3, 2]


def test_axis_aligned_grid_covers_an_oblique_grid(oblique):
    a = oblique.axis_aligned()
    lo, hi = oblique.bounds_world()
    alo, ahi = a.bounds_world()
    assert np.allclose(a.direction_matrix, np.eye(3)) and np.all(alo <= lo + 1e-9) and np.all(ahi >= hi - a.spacing[0])
    assert not oblique.is_axis_aligned()
    assert sorted(oblique.spacing_along_world()) == sorted(oblique.spacing)
    # an identity-direction grid: axis_aligned is with_spacing
    g = Geometry((10, 8, 6), (1.0, 1.5, 2.5), (3.0, -2.0, 7.0))
    assert g.axis_aligned((2.0, 2.0, 2.0)) == g.with_spacing(2.0)
