import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError, Geometry, Image
from DeepLungRegLib.features import mind_ssc
from DeepLungRegLib.ops.filters import box_mean3d
from DeepLungRegLib.keypoints import foerstner_keypoints


@pytest.mark.parametrize("before,after", [(1, 1), (2, 2), (0, 3), (0, 1), (0, 0)])
def test_box_mean_equals_replicate_padded_average_pool(before, after):
    x = torch.rand(2, 3, 7, 9, 11, dtype=torch.float64, requires_grad=True)
    k = before + after + 1
    ref = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(x, (before, after) * 3, mode="replicate"), k, stride=1)
    out = box_mean3d(x, before, after)
    assert out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-12)
    w = torch.rand_like(ref)
    g, = torch.autograd.grad((out * w).sum(), x)
    g_ref, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-12)
    # a constant stays constant, to the ends
    c = torch.full((1, 1, 4, 5, 6), 2.5)
    assert torch.allclose(box_mean3d(c, before, after), c)


def test_mind_shape_range_and_intensity_invariance(device):
    x = torch.rand(1, 1, 16, 18, 20, dtype=torch.float64, device=device)
    m = mind_ssc(x)
    assert m.shape == (1, 12, 16, 18, 20) and m.device == x.device
    assert float(m.min()) >= 0 and float(m.max()) <= 1 + 1e-9
    assert torch.allclose(mind_ssc(3.0 * x + 7.0), m, atol=1e-6)


def test_mind_follows_a_shift(device):
    x = torch.rand(1, 1, 20, 20, 20, device=device)
    shifted = torch.roll(x, 2, dims=4)
    a, b = mind_ssc(x), mind_ssc(shifted)
    assert torch.allclose(torch.roll(a, 2, dims=4)[..., 6:-6, 6:-6, 6:-6], b[..., 6:-6, 6:-6, 6:-6], atol=1e-5)


def test_mind_rejects_bad_input():
    with pytest.raises(DeepLungRegError, match="must be"):
        mind_ssc(torch.zeros(1, 2, 4, 4, 4))


def test_foerstner_finds_blob_centres_inside_mask(device):
    g = Geometry((40, 40, 40), (1.0, 1.0, 1.0), (10.0, 20.0, 30.0))
    zz, yy, xx = np.indices(g.shape)
    arr = np.zeros(g.shape, np.float32)
    centres = [(10, 10, 10), (30, 28, 12), (20, 12, 30)]
    for c in centres:
        arr += 100 * np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 8.0)
    mask = np.zeros(g.shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    pts = foerstner_keypoints(Image(arr, g), mask, count=10, min_distance_mm=5.0, device=device)
    d = np.linalg.norm(pts[:, None] - g.index_to_world(np.array([[c[2], c[1], c[0]] for c in centres], float))[None], axis=-1)
    assert (d.min(axis=0) < 3.0).all()  # every blob has a keypoint near it
    idx = np.round(g.world_to_index(pts)).astype(int)
    assert mask[idx[:, 2], idx[:, 1], idx[:, 0]].all()
    pair = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
    assert pair.min() >= 5.0
