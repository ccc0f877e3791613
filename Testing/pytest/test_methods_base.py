"""Tests of DeepLungRegLib/methods/base.py: register()'s input checks and warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image

from helpers_inputs import tiny


def register_until_cancelled(fixed, moving, **kw):
    """Run register()'s input checks only: the cancel flag stops it at the method's first check."""
    from DeepLungRegLib import RegistrationCancelled
    from DeepLungRegLib.methods import register

    with pytest.raises(RegistrationCancelled):
        register(fixed, moving, "adam", device="cpu", cancel=lambda: True, **kw)


def test_a_mask_labelled_minus_one_says_what_it_holds():
    """It was only 'empty'."""
    from DeepLungRegLib.methods import register

    fixed = tiny()
    mask = Image(np.where(np.arange(512).reshape(8, 8, 8) < 200, -1, 0).astype(np.int16), fixed.geometry)
    with pytest.raises(DeepLungRegError, match=r"fixed mask is empty: it holds only the value\(s\) -1, 0; a mask marks its region with values above 0"):
        register(fixed, tiny(seed=1), "adam", fixed_mask=mask, device="cpu")


@pytest.mark.parametrize("spacing", [(1e-6, 1e-6, 1e-6), (1e9, 2.0, 2.0), (0.05, 1.0, 1.0), (25.0, 1.0, 1.0)])
def test_an_implausible_spacing_is_warned_about(caplog, spacing):
    with caplog.at_level(logging.WARNING):
        register_until_cancelled(tiny(), tiny(spacing, seed=1))
    assert any("moving image's voxel spacing" in r.getMessage() and "outside 0.1-20 mm" in r.getMessage() for r in caplog.records)


def test_a_moving_image_covering_little_of_the_fixed_one_is_warned_about(caplog):
    """The overlap is measured on the world boxes, after each image's own direction."""
    with caplog.at_level(logging.WARNING):
        register_until_cancelled(tiny(), tiny(origin=(14.0, 14.0, 14.0), seed=1))  # 2 mm of 16 along each axis: 0.2 %
    assert any("covers 0.2 % of the fixed image's extent" in r.getMessage() for r in caplog.records)
    caplog.clear()
    flipped = Image(tiny(seed=1).array, Geometry((8, 8, 8), (2.0, 2.0, 2.0), (14.0, 14.0, 14.0), (-1, 0, 0, 0, -1, 0, 0, 0, -1)))
    with caplog.at_level(logging.WARNING):
        register_until_cancelled(tiny(), flipped)  # the same voxels stored the other way round: the whole box
    assert not any("covers" in r.getMessage() for r in caplog.records)
