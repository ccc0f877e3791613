"""Helpers shared by the convex and tuning tests."""

from __future__ import annotations

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
