"""Tests of DeepLungRegLib/keypoints/foerstner.py."""

import numpy as np

from DeepLungRegLib import Geometry, Image
from DeepLungRegLib.keypoints import foerstner_keypoints


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
