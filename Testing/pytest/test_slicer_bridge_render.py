"""Tests of DeepLungRegLib/slicer_bridge/render.py on slicer-core: offscreen slice views, PNG pictures, montages."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image

from helpers_slicer import bridge, hs


def test_a_slice_view_of_a_volume_is_a_picture_of_it(bridge, hs, tmp_path):
    from DeepLungRegLib.slicer_bridge.render import render_slice_view

    z, y, x = np.mgrid[:16, :20, :24]
    volume = bridge.volume_node_from_image(hs.scene, Image(((x // 4 + y // 4) % 2 * 1000).astype(np.int16),
                                                           Geometry((24, 20, 16), (2.0, 2.0, 2.0))), "checker")
    for logic in hs.slice_logics.values():
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
    rgb = render_slice_view(hs, "Red", size=(64, 48), path=tmp_path / "red.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8 and rgb.std() > 10  # the checkerboard, not a blank view
    assert (tmp_path / "red.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DeepLungRegError, match="no slice view 'Blue'"):
        render_slice_view(hs, "Blue")


def test_montage_puts_pictures_side_by_side_with_a_gap(slicer_core):
    from DeepLungRegLib.slicer_bridge.render import montage

    a, b = np.zeros((5, 3, 3), np.uint8), np.full((5, 4, 3), 255, np.uint8)
    m = montage([a, b], gap=2)
    assert m.shape == (5, 3 + 2 + 4, 3) and (m[:, :3] == 0).all() and (m[:, 5:] == 255).all() and (m[:, 3:5] == 30).all()
    with pytest.raises(DeepLungRegError, match="differ in height"):
        montage([a, b[:4]])
    with pytest.raises(DeepLungRegError, match="no pictures"):
        montage([])
