"""Helpers shared by the convex, embed and tuning tests."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib import read_image
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.transforms import resample_to_spacing


@pytest.fixture(scope="module")
def small_pair(sample_path):
    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="large", seed=5)


#: a fast configuration for 4 mm test pairs
FAST = {"feature_spacing_mm": 4.0, "grid_spacing_mm": [8.0, 4.0], "search_half_width_mm": [24.0, 4.0], "search_step_mm": [4.0, 4.0],
        "refine_levels_mm": [4.0], "refine_iterations": [20], "refine_learning_rates": [0.3]}


def featureless_block(p) -> tuple:
    """Issue 31's test pair: a block of the lung of the simulated pair ``p`` set to one value in both images (the
    fixed block, and where the true motion takes it in the moving image: nothing there to match).

    Returns ``(fixed, moving, block)``: the two images, and the block as a bool ``(Z, Y, X)`` array on the fixed grid.
    """
    from scipy import ndimage as ndi

    g = p.fixed.geometry
    lung = p.fixed_mask.array.astype(bool)
    zz, yy, xx = np.nonzero(lung)
    block = np.zeros_like(lung)
    cz, cy, cx = (int(np.median(a)) for a in (zz, yy, xx))
    block[cz - 8:cz + 8, cy - 10:cy + 10, cx - 10:cx + 10] = True
    block &= lung
    # where the block lies in the moving image: its voxels moved by the true field, closed into one region
    kji = np.argwhere(block)
    world = g.index_to_world(kji[:, ::-1].astype(float)) + p.field[block]
    ijk = np.rint(p.moving.geometry.world_to_index(world)).astype(int)
    moved = np.zeros(p.moving.geometry.shape, bool)
    moved[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = True
    moved = ndi.binary_closing(moved, iterations=2) | moved
    fixed = p.fixed.with_array(np.where(block, -850, p.fixed.array).astype(p.fixed.array.dtype))
    moving = p.moving.with_array(np.where(moved, -850, p.moving.array).astype(p.moving.array.dtype))
    return fixed, moving, block


def assert_less_sure_in_the_block(u: np.ndarray, p, block: np.ndarray) -> None:
    """The uncertainty map ``u`` of :func:`featureless_block`'s pair: mm on the fixed grid, higher in the block than in
    the rest of the lung, and summarised per lung."""
    from scipy import ndimage as ndi

    from DeepLungRegLib.evaluation.uncertainty import uncertainty_summary
    from DeepLungRegLib.segmentation import split_lungs

    lung = p.fixed_mask.array.astype(bool)
    assert u.shape == p.fixed.geometry.shape and u.dtype == np.float32 and np.isfinite(u).all() and (u >= 0).all()
    inner = ndi.binary_erosion(block, iterations=3)  # away from the block's edges (MIND's patches, the search window)
    rest = lung & ~ndi.binary_dilation(block, iterations=3)
    assert inner.sum() > 100
    assert float(np.median(u[inner])) > float(np.median(u[rest])) + 0.5
    # most of the featureless block is among the least sure quarter of the lung (a quarter of it by chance)
    assert float((u[inner] > np.percentile(u[lung], 75)).mean()) > 0.5
    s = uncertainty_summary(u, split_lungs(p.fixed_mask))
    assert s["both"]["n"] == int(lung.sum()) and 0 < s["both"]["median_mm"] <= s["both"]["p90_mm"]
    assert 0 <= s["both"]["percent_above_8mm"] <= s["both"]["percent_above_6mm"] <= s["both"]["percent_above_4mm"] <= 100
