"""Fixtures and helpers shared by the slicer-core tests of slicer_bridge."""

from __future__ import annotations

import pytest

from DeepLungRegLib import read_image
from DeepLungRegLib.transforms import resample_to_spacing


@pytest.fixture
def bridge(slicer_core):
    from DeepLungRegLib import slicer_bridge

    return slicer_bridge


@pytest.fixture
def hs(bridge):
    return bridge.new_scene()


@pytest.fixture(scope="module")
def small_pair(sample_path):
    from DeepLungRegLib.simulation import simulate_breathing

    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="small", seed=3)
