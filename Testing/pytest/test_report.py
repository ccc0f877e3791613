"""Tests of DeepLungRegLib/report/report.py: the report's slices."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib.simulation import read_pair

from helpers_inputs import pair_dir


@pytest.mark.slow
def test_the_report_shows_the_same_slices_however_the_fixed_image_is_stored(pair_dir):
    """Axial slices stay axial (superior up, left on the right) for a fixed image stored RAS or with permuted axes."""
    from DeepLungRegLib.report import ReportSlices
    from DeepLungRegLib.simulation.storage import restore, signed_permutation

    pair = read_pair(pair_dir)
    ref = ReportSlices(pair.fixed.geometry, pair.fixed_mask.array)
    ref.add("fixed", pair.fixed.array)
    for axes, signs in (((0, 1, 2), (-1, -1, 1)), ((1, 2, 0), (1, -1, 1))):
        t = signed_permutation(pair.fixed.geometry, axes, signs)
        img, mask = restore(pair.fixed, t), restore(pair.fixed_mask, t, label=True)
        sl = ReportSlices(t, mask.array)
        sl.add("fixed", img.array)
        assert sl.centre == ref.centre and sl.geometry.same_as(ref.geometry, tol=1e-6)
        for view in ("axial", "coronal"):
            assert np.array_equal(sl.views["fixed"][view], ref.views["fixed"][view])
