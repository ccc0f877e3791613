"""A tiny simulated 4D-CT for the sequence tests: 4 phases of the bundled sample at 8 mm (end-exhale phase 2),
written once per module, and a fast affine configuration."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import read_image
from DeepLungRegLib.simulation.cycle import simulate_cycle, write_cycle
from DeepLungRegLib.transforms import resample_to_spacing

#: a fast affine configuration for 8 mm phases (one level)
FAST_AFFINE = {"levels_mm": [8.0], "iterations": [40]}


@pytest.fixture(scope="module")
def cycle4(sample_path, tmp_path_factory):
    """``(folder, cycle)``: the written cycle (phases/, fields/, landmarks/, cycle.json) and the cycle in memory."""
    ct = resample_to_spacing(read_image(sample_path), 8.0, fill=-1024.0)
    cycle = simulate_cycle(ct, n_phases=4, amplitude="large", seed=2, n_landmarks=60)
    return write_cycle(cycle, tmp_path_factory.mktemp("cycle") / "cycle"), cycle


def tiny_phases(folder, n: int = 4):
    """``n`` tiny phase files (8 x 8 x 8 voxels of 8 mm, air and a block of tissue): enough to be read and
    checked, for the tests that stop before any lung mask or registration."""
    folder.mkdir(parents=True)
    for t in range(n):
        a = np.full((8, 8, 8), -1000, np.int16)
        a[2:6, 2:6, 2 + t % 2:6] = 40
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((8.0, 8.0, 8.0))
        sitk.WriteImage(img, str(folder / f"phase_{t:02d}.nrrd"))
    return folder
