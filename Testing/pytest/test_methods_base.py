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


# ------------------------------------------------------------- a start field (initial_field)
def _recording_method(monkeypatch, v_mm):
    """A method, registered for one test, that returns the constant field ``v_mm`` and keeps what it was given."""
    from DeepLungRegLib.methods import base

    seen = {}

    def run(wf, wm, wfm, wmm, config, ctx):
        seen.update(fixed=wf, moving=wm, moving_mask=wmm)
        return np.broadcast_to(np.asarray(v_mm, np.float32), (*wf.geometry.shape, 3)).copy(), {}

    monkeypatch.setitem(base._REGISTRY, "constant-test", base.MethodSpec("constant-test", "test only", base.MethodConfig, run))
    return seen


def _ramp_pair():
    g = Geometry((20, 18, 16), (2.0, 2.0, 2.5), (-10.0, 5.0, 3.0))
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in g.shape], indexing="ij")
    fixed = Image(np.sin(x / 3.0) + np.cos(y / 4.0) + z / 10.0, g)
    moving = Image(np.cos(x / 5.0) * np.sin(z / 3.0) + y / 7.0, g)
    return fixed, moving


def test_a_start_field_is_composed_with_the_methods_field(monkeypatch):
    """u(x) = v(x) + u0(x + v(x)): with v constant and u0 linear in x, the composite is known in closed form, and the
    method is given the moving image already warped with u0 (its mask too)."""
    from DeepLungRegLib.methods import register
    from DeepLungRegLib.transforms.warp import warp_image

    fixed, moving = _ramp_pair()
    g = fixed.geometry
    v = np.array([1.5, -0.5, 0.75])
    seen = _recording_method(monkeypatch, v)
    world = g.index_to_world(np.stack(np.meshgrid(*[np.arange(n) for n in g.size], indexing="ij"), -1).reshape(-1, 3))
    world = world.reshape(*g.size, 3).transpose(2, 1, 0, 3)  # (z, y, x, 3) LPS
    a = np.array([[0.02, 0.0, 0.01], [0.0, -0.03, 0.0], [0.01, 0.0, 0.02]])
    b = np.array([2.0, -1.0, 0.5])
    u0 = (world @ a.T + b).astype(np.float32)
    mask = Image((moving.array > 0.5).astype(np.uint8), g)
    result = register(fixed, moving, "constant-test", moving_mask=mask, device="cpu", initial_field=(u0, g))
    expected = v + (world + v) @ a.T + b
    inner = (slice(2, -2),) * 3  # u0 is linear, so even its border-extended samples are exact away from the edge
    np.testing.assert_allclose(result.field[inner], expected[inner], atol=1e-3)
    np.testing.assert_allclose(seen["moving"].array, warp_image(moving, u0, g).array, atol=1e-5)
    np.testing.assert_array_equal(seen["moving_mask"].array, warp_image(mask, u0, g, mode="nearest").array)


def test_a_start_field_on_another_grid_is_resampled_and_a_bad_one_is_refused(monkeypatch):
    from DeepLungRegLib.methods import register

    fixed, moving = _ramp_pair()
    _recording_method(monkeypatch, [0.0, 0.0, 0.0])
    coarse = Geometry((10, 9, 8), (4.0, 4.0, 5.0), (-10.0, 5.0, 3.0))
    u0 = np.zeros((*coarse.shape, 3), np.float32) + np.array([3.0, -2.0, 1.0], np.float32)
    result = register(fixed, moving, "constant-test", device="cpu", initial_field=(u0, coarse))
    np.testing.assert_allclose(result.field, np.broadcast_to([3.0, -2.0, 1.0], result.field.shape), atol=1e-5)
    with pytest.raises(DeepLungRegError, match="initial_field"):
        register(fixed, moving, "constant-test", device="cpu", initial_field=(u0[..., :2], coarse))
    bad = u0.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DeepLungRegError, match="NaN"):
        register(fixed, moving, "constant-test", device="cpu", initial_field=(bad, coarse))
