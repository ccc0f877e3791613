"""Tests of DeepLungRegLib/slicer_bridge/nodes.py and scene.py on slicer-core: nodes, scenes and transforms round trip."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image
from DeepLungRegLib.geometry.grid import lps_to_ras, ras_to_lps
from DeepLungRegLib.transforms import sample_field_at_points, warp_image

from helpers_slicer import bridge, hs, small_pair


def smooth_field(geometry: Geometry, amplitude: float = 3.0) -> np.ndarray:
    """A smooth, invertible displacement (mm, LPS) on ``geometry``."""
    x = geometry.world_coordinates()
    c = x.reshape(-1, 3).mean(0)
    r = (x - c) / 40.0
    u = np.stack([np.sin(r[..., 1]) * amplitude, np.cos(r[..., 2]) * amplitude * 0.5, r[..., 0] * amplitude * 0.4], -1)
    return u.astype(np.float32)


def test_scene_is_initialised_like_slicer(hs):
    scene = hs.scene
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 5  # default colour nodes
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 3
    assert scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is not None
    for name in ("volumes", "markups", "transforms", "tables", "subjecthierarchy"):
        assert name in hs.logics


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_volume_round_trip_oblique(bridge, hs, oblique, dtype):
    arr = (np.random.default_rng(0).normal(size=oblique.shape) * 100).astype(dtype)
    node = bridge.volume_node_from_image(hs.scene, Image(arr, oblique), "vol")
    back = bridge.image_from_volume_node(node)
    assert back.geometry.same_as(oblique, tol=1e-9)
    assert back.array.dtype == dtype and np.array_equal(back.array, arr)
    # Slicer's own IJK-to-RAS maps a voxel where the library's LPS geometry says, flipped to RAS.
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk = np.array([3.0, 7.0, 11.0])
    ras = np.array(m.MultiplyPoint([*ijk, 1.0])[:3])
    assert np.allclose(ras, lps_to_ras(oblique.index_to_world(ijk[None]))[0])
    assert np.allclose(ras_to_lps(ras[None])[0], oblique.index_to_world(ijk[None])[0])


def test_volume_under_linear_transform_is_in_world(bridge, hs, oblique):
    node = bridge.volume_node_from_image(hs.scene, Image(np.zeros(oblique.shape, np.float32), oblique), "vol")
    lin = hs.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    import slicer

    slicer.util.updateTransformMatrixFromArray(lin, np.array([[1, 0, 0, 5.0], [0, 1, 0, -2.0], [0, 0, 1, 7.0], [0, 0, 0, 1]]))
    node.SetAndObserveTransformNodeID(lin.GetID())
    g = bridge.geometry_from_volume_node(node)
    assert np.allclose(np.array(g.origin) - np.array(oblique.origin), ras_to_lps(np.array([[5.0, -2.0, 7.0]]))[0])
    grid = hs.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "nonlinear")
    bridge.grid_transform_node_from_field(hs.scene, smooth_field(oblique), oblique, "", node=grid)
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(DeepLungRegError, match="non-linear transform .* harden"):
        bridge.image_from_volume_node(node)


def test_bad_nodes_are_refused(bridge, hs):
    empty = hs.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(DeepLungRegError, match="no voxels"):
        bridge.image_from_volume_node(empty)
    with pytest.raises(DeepLungRegError, match="no volume node"):
        bridge.image_from_volume_node(None)
    pts = hs.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "none")
    with pytest.raises(DeepLungRegError, match="no control points"):
        bridge.landmarks_from_markups(pts)


def test_field_grid_transform_round_trip(bridge, hs, oblique):
    u = smooth_field(oblique)
    node = bridge.grid_transform_node_from_field(hs.scene, u, oblique, "T")
    back, g = bridge.field_from_grid_transform_node(node)
    assert g.same_as(oblique, tol=1e-6)
    assert np.abs(back - u).max() < 1e-5
    bad = u.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DeepLungRegError, match="NaN"):
        bridge.grid_transform_node_from_field(hs.scene, bad, oblique, "T2")


def test_grid_transform_moves_points_by_the_field(bridge, hs, oblique):
    """From parent (resampling direction): x -> x + u(x), at voxel centres and between them."""
    u = smooth_field(oblique)
    node = bridge.grid_transform_node_from_field(hs.scene, u, oblique, "T")
    tr = node.GetTransformFromParent()
    rng = np.random.default_rng(2)
    ijk = np.concatenate([np.array([[4, 5, 6], [10, 3, 8]], float), rng.uniform(2, 9, size=(5, 3))])
    pts = oblique.index_to_world(ijk)
    expect = pts + sample_field_at_points(u, oblique, pts)
    got = np.array([ras_to_lps(np.array(tr.TransformPoint(lps_to_ras(p[None])[0]))[None])[0] for p in pts])
    assert np.abs(got - expect).max() < 1e-4
    k, j, i = 6, 5, 4
    assert np.allclose(got[0] - pts[0], u[k, j, i], atol=1e-4)


def test_markup_under_transform_lands_where_the_field_says(bridge, hs, oblique):
    """A moving-space point under the transform is shown at the fixed point p with p + u(p) = q."""
    u = smooth_field(oblique, amplitude=2.0)
    node = bridge.grid_transform_node_from_field(hs.scene, u, oblique, "T")
    p = oblique.index_to_world(np.array([[8.0, 9.0, 7.0], [12.0, 6.0, 5.0]]))
    q = p + sample_field_at_points(u, oblique, p)
    m = bridge.markups_from_landmarks(hs.scene, q, "moving points", labels=["a", "b"])
    assert np.allclose(bridge.landmarks_from_markups(m), q)
    m.SetAndObserveTransformNodeID(node.GetID())
    shown = bridge.landmarks_from_markups(m, world=True)
    assert np.abs(shown - p).max() < 0.01  # Slicer inverts the grid transform iteratively
    assert bridge.markups_labels(m) == ["a", "b"]


def test_hardening_reproduces_the_library_warp(bridge, hs, oblique):
    rng = np.random.default_rng(4)
    from scipy.ndimage import gaussian_filter

    arr = gaussian_filter(rng.normal(size=oblique.shape), 1.5).astype(np.float32) * 100
    moving = Image(arr, oblique)
    u = smooth_field(oblique, amplitude=2.5)
    vol = bridge.volume_node_from_image(hs.scene, moving, "moving")
    node = bridge.grid_transform_node_from_field(hs.scene, u, oblique, "T")
    vol.SetAndObserveTransformNodeID(node.GetID())
    assert hs.logics["transforms"].hardenTransform(vol)
    hardened = bridge.image_from_volume_node(vol)
    # Slicer grows the grid to hold the warped extent (same spacing and axes, shifted
    # origin), so compare with the library's warp sampled on Slicer's grid.
    h = hardened.geometry
    assert np.allclose(h.spacing, oblique.spacing) and np.allclose(h.direction, oblique.direction)
    y = h.world_coordinates().reshape(-1, 3)
    u_h = sample_field_at_points(u, oblique, y)
    expected = warp_image(moving, u_h.reshape(*h.shape, 3).astype(np.float32), h).array
    in_field = np.all((oblique.world_to_index(y) > 0) & (oblique.world_to_index(y) < np.array(oblique.size) - 1), axis=1)
    idx = oblique.world_to_index(y + u_h)
    in_moving = np.all((idx > 0.5) & (idx < np.array(oblique.size) - 1.5), axis=1)
    inside = (in_field & in_moving).reshape(h.shape)
    assert inside.mean() > 0.4
    diff = np.abs(hardened.array.astype(np.float32) - expected)[inside]
    assert diff.max() < 1e-2 * np.abs(arr).max()


@pytest.mark.parametrize("suffix", [".mrb", ".mrml"])
def test_saved_scene_reloads_with_the_transform(bridge, hs, oblique, tmp_path, suffix):
    u = smooth_field(oblique)
    node = bridge.grid_transform_node_from_field(hs.scene, u, oblique, "registration")
    vol = bridge.volume_node_from_image(hs.scene, Image(np.ones(oblique.shape, np.int16), oblique), "moving")
    vol.SetAndObserveTransformNodeID(node.GetID())
    path = bridge.save_scene(hs, tmp_path / f"scene{suffix}")
    with pytest.raises(DeepLungRegError, match="exists"):
        bridge.save_scene(hs, path)
    other = bridge.new_scene()
    bridge.load_scene(other, path)
    t2 = other.scene.GetFirstNodeByName("registration")
    v2 = other.scene.GetFirstNodeByName("moving")
    back, g = bridge.field_from_grid_transform_node(t2)
    assert g.same_as(oblique, tol=1e-5) and np.abs(back - u).max() < 1e-4
    assert v2.GetTransformNodeID() == t2.GetID()
    v2.SetAndObserveTransformNodeID(None)
    assert bridge.image_from_volume_node(v2).geometry.same_as(oblique, tol=1e-5)


def test_table_round_trip(bridge, hs):
    node = bridge.table_node_from_columns(hs.scene, {"name": ["a", "b"], "value": [1.5, 2.0]}, "T")
    assert bridge.columns_from_table_node(node) == {"name": ["a", "b"], "value": [1.5, 2.0]}
    with pytest.raises(DeepLungRegError, match="differ in length"):
        bridge.table_node_from_columns(hs.scene, {"a": [1], "b": [1, 2]}, "bad")


@pytest.mark.slow
def test_lung_masks_from_a_segmentation_node_by_segment_name(small_pair, slicer_core):
    """A Segmentation node (as Lung CT Segmenter or TotalSegmentator make) gives the job its mask: the chosen
    segments, united, on the image's grid (here the segmentation's own grid is coarser and shifted)."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.slicer_bridge.workflow import job_from_nodes

    p = small_pair
    hs = b.new_scene()
    fixed = b.volume_node_from_image(hs.scene, p.fixed, "inhale")
    moving = b.volume_node_from_image(hs.scene, p.moving, "exhale")
    lung = p.fixed_mask.array.astype(bool)
    labels = np.zeros(lung.shape, np.uint8)
    half = lung.shape[2] // 2
    labels[:, :, :half][lung[:, :, :half]] = 1          # one lung
    labels[:, :, half:][lung[:, :, half:]] = 2          # the other
    body = (p.fixed.array > -500) & ~lung
    labels[body] = 3                                     # not lung
    labelmap = b.volume_node_from_image(hs.scene, Image(labels, p.fixed.geometry), "labels", labelmap=True)
    seg = hs.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lungs")
    assert slicer_core.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    for segment_id, name in zip(b.segment_names(seg), ("right lung", "left lung", "body")):  # in label order
        seg.GetSegmentation().GetSegment(segment_id).SetName(name)
    # by name (any case), by default (every segment named like a lung), and one segment alone
    both = b.mask_from_segmentation(seg, fixed, ["Right Lung", "left lung"])
    assert both.geometry.same_as(p.fixed.geometry, tol=1e-4) and np.array_equal(both.array, lung)
    assert np.array_equal(b.mask_from_segmentation(seg, fixed).array, lung)
    assert np.array_equal(b.mask_from_segmentation(seg, fixed, "body").array, body)
    with pytest.raises(DeepLungRegError, match="no segment 'heart'.*'right lung', 'left lung', 'body'"):
        b.mask_from_segmentation(seg, fixed, ["heart"])
    # the job takes it as any mask; on the moving image's grid the segmentation is resampled
    job = job_from_nodes(b.RegistrationNodes(fixed, moving, fixed_mask=seg, moving_mask=seg, moving_mask_segments=["right lung"]),
                         "affine")
    assert np.array_equal(job.fixed_mask.array, lung) and job.moving_mask.geometry.same_as(p.moving.geometry, tol=1e-4)
    assert 0 < job.moving_mask.array.sum() < lung.sum()
    assert hs.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 1  # no temporary node left behind
