import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_image
from DeepLungRegLib.metrics import dice
from DeepLungRegLib.segmentation import lung_mask, split_lungs


def phantom(geom: Geometry):
    """A soft-tissue ellipse body in air with two air 'lungs' (x = left)."""
    w = geom.world_coordinates()
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    body = (x / 140) ** 2 + (y / 100) ** 2 <= 1
    right = ((x + 60) / 45) ** 2 + (y / 60) ** 2 + (z / 70) ** 2 <= 1
    left = ((x - 60) / 45) ** 2 + (y / 60) ** 2 + (z / 70) ** 2 <= 1
    arr = np.full(geom.shape, -1000.0, np.float32)
    arr[body] = 40.0
    arr[right | left] = -850.0
    arr += np.random.default_rng(0).normal(0, 15, geom.shape)
    return Image(arr, geom), right, left


def test_phantom_lungs_are_found_and_split(oblique):
    g = Geometry((100, 80, 60), (3.2, 3.0, 3.5), (-160.0, -120.0, -100.0), oblique.direction)
    img, right, left = phantom(g)
    mask = lung_mask(img)
    assert dice(mask.array.astype(np.uint8), (right | left).astype(np.uint8))[1] > 0.9
    lab = split_lungs(mask)
    assert dice((lab == 1).astype(np.uint8), right.astype(np.uint8))[1] > 0.9
    assert dice((lab == 2).astype(np.uint8), left.astype(np.uint8))[1] > 0.9


def test_refuses_image_without_air():
    g = Geometry((20, 20, 20), (2.0, 2.0, 2.0))
    with pytest.raises(DeepLungRegError, match="no air|almost no air"):
        lung_mask(Image(np.full(g.shape, 40.0, np.float32), g))


@pytest.mark.parametrize("rel, lo_ml, hi_ml", [
    ("popi/popi00.nrrd", 4500, 6500),
    ("pyradiomics/lung1_image.nrrd", 2000, 3800),
    ("elastix-lung/3DCT_lung_baseline_small.mha", 1500, 4500),
])
@pytest.mark.slow
def test_real_ct_masks(shared_data, rel, lo_ml, hi_ml):
    ct = read_image(shared_data / rel)
    mask = lung_mask(ct)
    vol = mask.array.sum() * ct.geometry.voxel_volume_ml
    assert lo_ml < vol < hi_ml
    # lung voxels are mostly aerated tissue; vessels inside are filled in but few
    assert np.median(ct.array[mask.array]) < -700
    assert np.mean(ct.array[mask.array] < -500) > 0.8
    # the mask does not touch the air that surrounds the body
    assert not mask.array[:, 0, 0].any() and not mask.array[:, -1, -1].any()
