"""Tests of DeepLungRegLib/slicer_bridge/grid.py on slicer-core: the deformation grid's spacing and the views' geometry."""

from __future__ import annotations

import itertools

import numpy as np

from DeepLungRegLib import Geometry, Image
from DeepLungRegLib.geometry import lps_to_ras

from helpers_slicer import bridge, hs


def test_the_grid_spacing_is_a_fifteenth_of_the_smallest_extent_and_5_mm_at_least(slicer_core):
    from DeepLungRegLib.slicer_bridge.grid import grid_spacing_mm

    assert grid_spacing_mm(Geometry((100, 200, 150), (3.0, 1.5, 2.0))) == 20.0  # extents 300, 300, 300 mm
    assert grid_spacing_mm(Geometry((10, 10, 10), (2.0, 2.0, 2.0))) == 5.0  # 20 mm across: the 5 mm floor


def test_volume_corners_are_the_volumes_box_in_ras(bridge, hs):
    """Slicer's RAS bounds: the box of the voxel edges, half a voxel beyond the corner voxels' centres."""
    from DeepLungRegLib.slicer_bridge.grid import volume_corners_ras

    g = Geometry((6, 5, 4), (2.0, 3.0, 4.0), (-10.0, 20.0, 30.0))  # axis-aligned: the RAS box is the edge corners' box
    node = bridge.volume_node_from_image(hs.scene, Image(np.zeros(g.shape, np.int16), g), "box")
    corners_lps = g.index_to_world(np.array(list(itertools.product((-0.5, 5.5), (-0.5, 4.5), (-0.5, 3.5))), float))
    ras = lps_to_ras(corners_lps)
    got = volume_corners_ras(node)
    assert got.shape == (8, 3)
    assert np.allclose(np.sort(got, axis=0), np.sort(ras, axis=0), atol=1e-6)
