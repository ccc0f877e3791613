import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepLungRegLib import DeepLungRegError, Geometry, Image
from DeepLungRegLib.io.images import image_to_sitk
from conftest import rotation
from DeepLungRegLib.transforms import (
    affine_to_field, compose_fields, field_to_grid, invert_field, resample_field, resample_to_spacing, sample_field_at_points, warp_image,
    warp_tensor,
)


def smooth_field(geom, amp, seed=0, sigma=4):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return np.stack([gaussian_filter(rng.standard_normal(geom.shape), sigma) for _ in range(3)], -1).astype(np.float32) * amp


def test_identity_field_changes_nothing(oblique, device):
    img = Image(np.random.default_rng(0).random(oblique.shape).astype(np.float32), oblique)
    out = warp_image(img, np.zeros((*oblique.shape, 3), np.float32), oblique, device=device)
    assert np.allclose(out.array, img.array, atol=1e-5)


def test_known_translation_shifts_by_whole_voxels(oblique, device):
    """u = 2 voxels along the oblique i axis in mm gives out[k, j, i] = in[k, j, i + 2]."""
    img = Image(np.random.default_rng(1).random(oblique.shape).astype(np.float32), oblique)
    shift = oblique.direction_matrix[:, 0] * oblique.spacing[0] * 2
    field = np.broadcast_to(shift, (*oblique.shape, 3)).astype(np.float32)
    out = warp_image(img, field, oblique, fill=-7.0, device=device).array
    assert np.allclose(out[:, :, :-2], img.array[:, :, 2:], atol=1e-5)
    assert np.allclose(out[:, :, -2:], -7.0)


def test_nearest_keeps_labels(oblique, device):
    lab = np.random.default_rng(2).integers(0, 4, oblique.shape).astype(np.uint8)
    out = warp_image(Image(lab, oblique), smooth_field(oblique, 3.0), oblique, mode="nearest", device=device).array
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2, 3}


def test_warp_matches_simpleitk_between_different_grids(oblique, device):
    moving_geom = Geometry((30, 26, 20), (1.2, 1.7, 2.2), (-40.0, 5.0, 100.0), np.eye(3).ravel())
    mov = Image(np.random.default_rng(3).random(moving_geom.shape).astype(np.float32), moving_geom)
    field = smooth_field(oblique, 8.0)
    ours = warp_image(mov, field, oblique, fill=-3.0, device=device).array
    tx = sitk.DisplacementFieldTransform(image_to_sitk(field.astype(np.float64), oblique))
    ref = sitk.GetArrayFromImage(sitk.Resample(image_to_sitk(mov), image_to_sitk(np.zeros(oblique.shape, np.float32), oblique), tx, sitk.sitkLinear, -3.0))
    idx = moving_geom.world_to_index((oblique.world_coordinates() + field).reshape(-1, 3)).reshape(*oblique.shape, 3)
    inside = np.all((idx >= 0) & (idx <= np.array(moving_geom.size) - 1), -1)
    assert inside.sum() > 100
    assert np.allclose(ours[inside], ref[inside], atol=1e-4)


def test_affine_field_and_points(oblique):
    m = np.eye(4)
    m[:3, :3] = [[1.05, 0.02, 0], [0.01, 0.97, 0.03], [0, -0.02, 1.1]]
    m[:3, 3] = [4.0, -2.0, 7.0]
    field = affine_to_field(m, oblique)
    pts = oblique.index_to_world(np.array([[3.3, 4.1, 5.7], [10.0, 2.0, 1.0]]))
    moved = pts + sample_field_at_points(field, oblique, pts)
    assert np.allclose(moved, pts @ m[:3, :3].T + m[:3, 3], atol=1e-4)


def test_invert_and_compose(oblique, device):
    field = smooth_field(oblique, 10.0, seed=4)
    inv, residual = invert_field(field, oblique, iterations=100, device=device)
    assert residual < 0.01
    comp = compose_fields(field, oblique, inv, oblique)
    inner = np.abs(comp[3:-3, 3:-3, 3:-3])
    assert inner.max() < 0.05


def test_inverse_of_translation_is_negative(oblique, device):
    field = np.broadcast_to(np.array([1.5, -2.0, 0.5], np.float32), (*oblique.shape, 3)).copy()
    inv, _ = invert_field(field, oblique, device=device)
    assert np.allclose(inv, -field, atol=1e-4)


def test_compose_translations_adds():
    g = Geometry((10, 10, 10), (1, 1, 1))
    a = np.broadcast_to(np.array([1.0, 0, 0], np.float32), (*g.shape, 3))
    b = np.broadcast_to(np.array([0, 2.0, 0], np.float32), (*g.shape, 3))
    assert np.allclose(compose_fields(a, g, b, g), [1.0, 2.0, 0.0])


def test_composition_order_matters_on_affines():
    g = Geometry((12, 12, 12), (2.0, 2.0, 2.0), (-11.0, -11.0, -11.0))
    s = np.diag([2.0, 2.0, 2.0, 1.0])
    t = np.eye(4)
    t[:3, 3] = [3.0, 0, 0]
    st = compose_fields(affine_to_field(s, g), g, affine_to_field(t, g), g)  # first s then t
    x = g.index_to_world(np.array([[6.0, 6.0, 6.0]]))[0]
    assert np.allclose(x + st[6, 6, 6], 2 * x + [3, 0, 0], atol=1e-4)


def test_resample_to_spacing_keeps_world_position():
    g = Geometry((40, 40, 20), (1.0, 1.0, 2.0), (5.0, -3.0, 8.0))
    arr = np.zeros(g.shape, np.float32)
    arr[8:12, 18:22, 28:32] = 100.0
    out = resample_to_spacing(Image(arr, g), 2.0)
    kk, jj, ii = np.nonzero(out.array > 20)
    c = out.geometry.index_to_world(np.stack([ii, jj, kk], 1).mean(0, keepdims=True))
    c0 = g.index_to_world(np.array([[29.5, 19.5, 9.5]]))
    assert np.allclose(c, c0, atol=1.0)


def test_warp_gradcheck_float64():
    g = Geometry((5, 4, 3), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0))
    vol = torch.rand(1, 1, *g.shape, dtype=torch.float64)
    field = (torch.rand(1, *g.shape, 3, dtype=torch.float64) * 0.6 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: warp_tensor(vol, g, f, g), (field,), eps=1e-6, atol=1e-4)


def test_warp_rejects_bad_field(oblique):
    img = Image(np.zeros(oblique.shape, np.float32), oblique)
    with pytest.raises(DeepLungRegError, match="does not match"):
        warp_image(img, np.zeros((3, 3, 3, 3), np.float32), oblique)
    with pytest.raises(DeepLungRegError, match="interpolation"):
        warp_image(img, None, oblique, mode="cubic")


def test_slab_sampling_matches_one_pass_on_oblique_grids(oblique, device):
    """sample_on_grid works a slab at a time; the slabs must join to the one-pass result."""
    from DeepLungRegLib.transforms import sample_on_grid

    rng = np.random.default_rng(0)
    src = Geometry((20, 18, 12), (2.0, 1.5, 3.0), (-40.0, 5.0, 95.0), rotation(0.1, 0.3, -0.2).ravel())
    vol = rng.normal(0, 1, (2, *src.shape)).astype(np.float32)
    field = rng.normal(0, 2, (*oblique.shape, 3)).astype(np.float32)
    ref = warp_tensor(torch.as_tensor(vol)[None], src, torch.as_tensor(field)[None], oblique, fill=-3.0)[0].numpy()
    for slab in (1, 7 * oblique.shape[1] * oblique.shape[2], 10**9):
        out = sample_on_grid(vol, src, oblique, field, fill=-3.0, slab_voxels=slab)
        assert np.allclose(out, ref, atol=1e-5)
        # a tensor volume is sampled on its own device
        out = sample_on_grid(torch.as_tensor(vol, device=device), src, oblique, field, fill=-3.0, slab_voxels=slab)
        assert np.allclose(out, ref, atol=1e-5)
    last = sample_on_grid(vol, src, oblique, None, fill=None, channels_last=True, slab_voxels=50)
    assert last.shape == (*oblique.shape, 2)


def test_field_to_grid_and_point_sampling_agree(oblique, device):
    from DeepLungRegLib.transforms import field_to_grid

    rng = np.random.default_rng(1)
    field = rng.normal(0, 3, (*oblique.shape, 3)).astype(np.float32)
    other = Geometry((9, 11, 7), (3.0, 2.5, 4.0), (-30.0, 20.0, 100.0))
    on_other = field_to_grid(field, oblique, other)
    pts = other.world_coordinates().reshape(-1, 3)
    assert np.allclose(on_other.reshape(-1, 3), sample_field_at_points(field, oblique, pts), atol=1e-4)
    # the identity resampling gives the field back
    assert np.allclose(field_to_grid(field, oblique, oblique), field, atol=1e-5)
    # a (1, Z, Y, X, 3) tensor on the device, as the methods return it
    on_dev = field_to_grid(torch.as_tensor(field, device=device)[None], oblique, other)
    assert np.allclose(on_dev, on_other, atol=1e-4)


def test_a_slab_field_reads_as_the_whole_field_it_stands_for(oblique, device, tmp_path):
    """A SlabField (the fixed-grid field of run_registration, never whole) gives every slab, component and
    voxel the value of the whole array, and the warp, the Jacobian, the TRE sampling and the field file made
    from it equal those made from the array."""
    import gzip

    from DeepLungRegLib.io.fields import write_field
    from DeepLungRegLib.metrics import jacobian_determinant
    from DeepLungRegLib.transforms import SlabField, sample_on_grid

    rng = np.random.default_rng(5)
    src = Geometry((9, 8, 7), (4.0, 3.5, 5.0), (-38.0, 8.0, 98.0), rotation(0.1, 0.2, -0.1).ravel())
    coarse = rng.normal(0, 3, (*src.shape, 3)).astype(np.float32)
    matrix = np.eye(4)
    matrix[:3, :3] += rng.normal(0, 0.03, (3, 3))
    matrix[:3, 3] = (2.0, -1.0, 3.0)
    cases = [(SlabField.resampled(torch.as_tensor(coarse, device=device)[None], src, oblique, slab_voxels=700),
              field_to_grid(coarse, src, oblique)),
             (SlabField.affine(matrix, oblique), affine_to_field(matrix, oblique))]
    moving = Image(rng.normal(-500, 300, src.shape).astype(np.int16), src)
    k, j, i = (rng.integers(0, n, 40) for n in oblique.shape)
    points = oblique.index_to_world(rng.uniform(-2, 20, (30, 3)))
    for lazy, whole in cases:
        assert lazy.shape == whole.shape and lazy.dtype == np.float32
        assert np.array_equal(lazy.full(), whole)
        assert np.array_equal(lazy[3:11], whole[3:11]) and np.array_equal(lazy[5], whole[5])
        assert np.array_equal(lazy[2:9, :, :, 1], whole[2:9, :, :, 1])
        assert np.allclose(lazy[k, j, i], whole[k, j, i], rtol=0, atol=1e-5)
        assert np.allclose(sample_field_at_points(lazy, oblique, points), sample_field_at_points(whole, oblique, points), rtol=0, atol=1e-5)
        assert np.array_equal(warp_image(moving, lazy, oblique, fill=-1024.0, dtype=np.int16).array,
                              warp_image(moving, whole, oblique, fill=-1024.0, dtype=np.int16).array)
        assert np.array_equal(jacobian_determinant(lazy, oblique, slab_voxels=900), jacobian_determinant(whole, oblique, slab_voxels=900))
        for suffix in (".nii.gz", ".mha"):
            a, b = write_field(lazy, oblique, tmp_path / f"lazy{suffix}"), write_field(whole, oblique, tmp_path / f"whole{suffix}")
            read = gzip.open if suffix == ".nii.gz" else open  # (a gzip header holds the time it was written)
            assert read(a, "rb").read() == read(b, "rb").read()
    with pytest.raises(DeepLungRegError, match="SlabField: reads slices"):
        cases[0][0][:, 3]
    # sample_on_grid's z_range gives the slices of the whole grid
    vol = rng.normal(0, 1, src.shape).astype(np.float32)
    whole = sample_on_grid(vol, src, oblique, None, fill=-2.0, slab_voxels=500)
    assert np.array_equal(sample_on_grid(vol, src, oblique, None, fill=-2.0, slab_voxels=500, z_range=(4, 13)), whole[4:13])


def test_slab_jacobian_matches_the_full_gradient(oblique):
    from DeepLungRegLib.metrics import jacobian_determinant
    from DeepLungRegLib.metrics.jacobian import spatial_gradient

    field = np.random.default_rng(2).normal(0, 0.5, (*oblique.shape, 3)).astype(np.float32)
    ref = np.linalg.det(np.eye(3) + spatial_gradient(field, oblique))
    for slab in (1, 1000, 10**9):
        assert np.allclose(jacobian_determinant(field, oblique, slab_voxels=slab), ref, atol=1e-5)


def test_sample_field_at_points_is_trilinear_on_an_oblique_grid(oblique):
    """An affine field is reproduced exactly between the nodes of an oblique, anisotropic, off-origin grid."""
    g = oblique
    a = np.array([[0.02, 0.0, 0.01], [0.0, -0.03, 0.0], [0.01, 0.0, 0.02]])
    field = (g.world_coordinates().reshape(-1, 3) @ a.T + np.array([1.0, -2.0, 0.5])).reshape(*g.shape, 3)
    rng = np.random.default_rng(4)
    pts = g.index_to_world(rng.uniform(0, np.array(g.size) - 1, size=(50, 3)))
    assert np.allclose(sample_field_at_points(field, g, pts), pts @ a.T + np.array([1.0, -2.0, 0.5]), atol=1e-6)
    # outside the grid the border value is kept (as the warp does)
    far = g.index_to_world(np.array([[-5.0, 0.0, 0.0]]))
    assert np.allclose(sample_field_at_points(field, g, far), field[0, 0, 0], atol=1e-6)


def test_resample_field_reproduces_an_affine_field_between_oblique_grids(oblique):
    """The methods' differentiable field resampler is exact for an affine field inside its source grid."""
    a = np.array([[0.02, 0.0, 0.01], [0.0, -0.03, 0.0], [0.01, 0.0, 0.02]])
    t = np.array([1.0, -2.0, 0.5])
    src = oblique
    field = (src.world_coordinates().reshape(-1, 3) @ a.T + t).reshape(*src.shape, 3)
    centre = src.index_to_world((np.array(src.size) - 1) / 2.0)
    dst = Geometry((9, 8, 7), (2.0, 2.0, 2.0), tuple(centre - 6.0), np.eye(3).ravel())
    tensor = torch.tensor(field[None], dtype=torch.float64, requires_grad=True)
    out = resample_field(tensor, src, dst)
    assert out.shape == (1, *dst.shape, 3)
    expect = (dst.world_coordinates().reshape(-1, 3) @ a.T + t).reshape(*dst.shape, 3)
    assert np.allclose(out[0].detach().numpy(), expect, atol=1e-6)
    assert np.allclose(out[0].detach().numpy(), field_to_grid(field, src, dst), atol=1e-4)
    out.sum().backward()  # differentiable: the refinement resamples fields under autograd
    assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
