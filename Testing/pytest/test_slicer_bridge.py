"""The MRML bridge against the real slicer-core wheel, in a scene set up as Slicer does.

Geometry is oblique, anisotropic and off-origin throughout: most registration
bugs are axis, origin or direction bugs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_image
from DeepLungRegLib.geometry.grid import lps_to_ras, ras_to_lps
from DeepLungRegLib.transforms import resample_to_spacing, sample_field_at_points, warp_image

from conftest import pair_nodes, rotation


@pytest.fixture
def bridge(slicer_core):
    from DeepLungRegLib import slicer_bridge

    return slicer_bridge


@pytest.fixture
def hs(bridge):
    return bridge.new_scene()


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


# ------------------------------------------------------------- the workflow
FAST = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [50, 30], "refine_learning_rates": [1.0, 0.5]}


@pytest.fixture(scope="module")
def small_pair(sample_path):
    from DeepLungRegLib.simulation import simulate_breathing

    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="small", seed=3)


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


@pytest.fixture(scope="module")
def registered(small_pair, slicer_core):
    """The console API's work on a small simulated pair: inputs, results and the scene."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.slicer_bridge.workflow import register_nodes

    p = small_pair
    hs = b.new_scene()
    fixed = b.volume_node_from_image(hs.scene, p.fixed, "inhale")
    moving = b.volume_node_from_image(hs.scene, p.moving, "exhale")
    fmask = b.volume_node_from_image(hs.scene, p.fixed_mask, "inhale lungs", labelmap=True)
    n = 40
    fl = b.markups_from_landmarks(hs.scene, p.fixed_landmarks[:n], "F", labels=[f"L{i}" for i in range(n)])
    ml = b.markups_from_landmarks(hs.scene, p.moving_landmarks[:n], "M")
    before = b.image_from_volume_node(moving).array.copy()
    stages = []
    res = register_nodes(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask="auto", fixed_landmarks=fl,
                                                       moving_landmarks=ml), "adam", device="cpu", options=FAST,
                         progress=lambda s, f: stages.append(f))
    return dict(hs=hs, fixed=fixed, moving=moving, fmask=fmask, fl=fl, ml=ml, res=res, before=before, stages=stages, pair=p)


def test_register_nodes_lowers_tre_and_makes_every_output(registered, bridge):
    from DeepLungRegLib.slicer_bridge.workflow import METRICS_ATTRIBUTE, ROLE_ATTRIBUTE

    r, hs = registered["res"], registered["hs"]
    m = r.metrics
    assert m["tre_after"]["mean"] < 0.4 * m["tre_before"]["mean"]
    assert m["jacobian"]["folding_percent"] == 0.0
    assert "Folding 0.000 %" in r.summary and "WARNING" not in r.summary
    assert registered["stages"][-1] == 1.0
    for role, node in r.nodes().items():
        assert node.GetAttribute(ROLE_ATTRIBUTE) == role
        assert node.GetNodeReferenceID("DeepLungRegFixed") == registered["fixed"].GetID()
        assert hs.scene.GetNodeByID(node.GetID()) is node
    assert r.transform.IsA("vtkMRMLGridTransformNode") and r.transform.GetAttribute(METRICS_ATTRIBUTE)
    # The transform holds the library field; the warped volume is on the fixed grid.
    field, g = bridge.field_from_grid_transform_node(r.transform)
    assert g.same_as(registered["pair"].fixed.geometry, tol=1e-5)
    assert np.abs(field - r.outputs.result.field).max() < 1e-4
    assert bridge.geometry_from_volume_node(r.warped).same_as(g, tol=1e-6)
    # Display: warped overlay on the fixed volume, grid visible in slice views, diverging maps.
    comp = hs.composite_node("Red")
    assert comp.GetBackgroundVolumeID() == registered["fixed"].GetID() and comp.GetForegroundVolumeID() == r.warped.GetID()
    assert 0 < comp.GetForegroundOpacity() < 1
    # The deformation grid: a model per slice orientation, shown in that orientation's views only, inside the
    # fixed volume (Slicer's own grid of the transform, which covers each whole view, stays off).
    from DeepLungRegLib.slicer_bridge.grid import grid_models

    td = r.transform.GetDisplayNode()
    assert td.GetVisualizationMode() == td.VIS_MODE_GRID and td.GetGridSpacingMm() >= 5 and not td.GetVisibility()
    models = grid_models(hs.scene, r.transform)
    assert sorted(models) == ["Axial", "Coronal", "Sagittal"]
    bounds = [0.0] * 6
    registered["fixed"].GetRASBounds(bounds)
    for orientation, model in models.items():
        d = model.GetDisplayNode()
        assert d.GetVisibility() and d.GetVisibility2D() and not d.GetVisibility3D()
        assert [hs.scene.GetNodeByID(d.GetNthViewNodeID(k)).GetOrientation() for k in range(d.GetNumberOfViewNodeIDs())] == [orientation]
        grid_bounds = model.GetPolyData().GetBounds()
        assert model.GetPolyData().GetNumberOfCells() > 100
        for axis in range(3):
            assert bounds[2 * axis] - 1e-3 <= grid_bounds[2 * axis] and grid_bounds[2 * axis + 1] <= bounds[2 * axis + 1] + 1e-3
    jd = r.jacobian.GetDisplayNode()
    assert jd.GetLevel() == pytest.approx(1.0) and jd.GetColorNode().GetName() == "DeepLungReg Diverging"
    assert r.ventilation.GetDisplayNode().GetLevel() == pytest.approx(0.0)
    # the HU ventilation (CT with a lung mask) is a map like the others, offered as an overlay
    assert r.ventilation_hu is not None and r.nodes()["ventilation_hu"] is r.ventilation_hu
    assert r.ventilation_hu.GetDisplayNode().GetLevel() == pytest.approx(0.0)
    assert np.allclose(bridge.image_from_volume_node(r.ventilation_hu).array, r.outputs.ventilation_hu.array)


def test_register_nodes_tre_table_and_landmarks(registered, bridge):
    from DeepLungRegLib.metrics import tre
    from DeepLungRegLib.slicer_bridge.review import TRE_WARNING_MM
    from DeepLungRegLib.slicer_bridge.workflow import jump_to_landmark

    r, hs, p = registered["res"], registered["hs"], registered["pair"]
    cols = bridge.columns_from_table_node(r.tre_table)
    n = 40
    assert cols["Landmark"][:2] == ["L0", "L1"] and len(cols["TRE after (mm)"]) == n
    expect = tre(p.fixed_landmarks[:n], p.moving_landmarks[:n], r.outputs.result.field, p.fixed.geometry)
    assert np.allclose(cols["TRE after (mm)"], expect, atol=1e-3)
    vec = np.stack([cols["Error R (mm)"], cols["Error A (mm)"], cols["Error S (mm)"]], 1)
    assert np.allclose(np.linalg.norm(vec, axis=1), expect, atol=5e-3)
    assert r.worst_landmark == int(np.argmax(expect))
    lm = r.landmarks
    assert lm.GetTransformNodeID() == r.transform.GetID() and lm.GetNumberOfControlPoints() == n
    assert lm.GetNthControlPointDescription(0).startswith("L0: ")
    # only the current (here the worst) and the few worst are labelled: the labels do not pile up
    from DeepLungRegLib.slicer_bridge.review import LABELLED_WORST

    labelled = [i for i in range(n) if lm.GetNthControlPointLabel(i)]
    assert labelled == sorted(int(i) for i in np.argsort(-expect)[:LABELLED_WORST])
    assert all(lm.GetNthControlPointLabel(i) == lm.GetNthControlPointDescription(i) for i in labelled)
    for i in range(n):
        assert bool(lm.GetNthControlPointSelected(i)) == bool(expect[i] <= TRE_WARNING_MM)
    # Moving landmarks shown through the transform lie near the fixed landmarks.
    shown = bridge.landmarks_from_markups(lm, world=True)
    assert np.linalg.norm(shown - p.fixed_landmarks[:n], axis=1).mean() < 2 * expect.mean() + 0.5
    # jumping to a landmark moves each slice through it; the view keeps the image in place when the
    # point is in view, and centres it when it is not
    from DeepLungRegLib.slicer_bridge.grid import fit_slice_views, point_in_view

    for logic in hs.slice_logics.values():
        logic.ResizeSliceNode(300, 200)
    fit_slice_views(hs.app_logic, registered["fixed"])
    fov_before = {v: hs.slice_node(v).GetFieldOfView() for v in hs.slice_logics}
    centre_before = {v: np.array([hs.slice_node(v).GetXYToRAS().GetElement(i, 3) for i in range(3)]) for v in hs.slice_logics}
    point = jump_to_landmark(hs.scene, lm, r.worst_landmark)
    shown = bridge.landmarks_from_markups(lm, world=True)[r.worst_landmark]
    assert np.allclose(point, shown)
    ras = lps_to_ras(point[None])[0]
    for view in hs.slice_logics:
        node = hs.slice_node(view)
        sl = node.GetSliceToRAS()
        normal, origin = np.array([sl.GetElement(i, 2) for i in range(3)]), np.array([sl.GetElement(i, 3) for i in range(3)])
        assert abs(np.dot(ras - origin, normal)) < 1e-6 and point_in_view(node, ras)
        assert node.GetFieldOfView() == fov_before[view]
        xy_origin = np.array([node.GetXYToRAS().GetElement(i, 3) for i in range(3)])
        in_plane = (xy_origin - centre_before[view]) - np.dot(xy_origin - centre_before[view], normal) * normal
        assert np.linalg.norm(in_plane) < 1e-6  # the image did not move in the view
    far = ras + np.array([500.0, 0.0, 0.0])
    assert not point_in_view(hs.slice_node("Red"), far)
    from DeepLungRegLib.slicer_bridge.workflow import jump_to_point

    jump_to_point(hs.scene, ras_to_lps(far[None])[0])
    sl = hs.slice_node("Red").GetSliceToRAS()
    assert np.allclose([sl.GetElement(i, 3) for i in range(3)], far, atol=1e-6)  # out of view: centred
    fit_slice_views(hs.app_logic, registered["fixed"])


def test_register_nodes_rerun_replaces_only_its_outputs(registered, bridge):
    from DeepLungRegLib.slicer_bridge.workflow import register_nodes

    hs, r = registered["hs"], registered["res"]
    n_volumes = hs.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    r2 = register_nodes(hs.scene, bridge.RegistrationNodes(registered["fixed"], registered["moving"], fixed_mask=registered["fmask"],
                                                           moving_mask=None), "affine", device="cpu", show=False)
    assert r2.transform is r.transform and r2.warped is r.warped and r2.jacobian is r.jacobian
    assert hs.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes
    assert r2.transform.GetAttribute("DeepLungReg.Method") == "affine"
    # The user's inputs are untouched.
    assert np.array_equal(bridge.image_from_volume_node(registered["moving"]).array, registered["before"])
    assert registered["moving"].GetTransformNodeID() is None
    # An input given as an output is refused, as is a mismatched landmark pair.
    with pytest.raises(DeepLungRegError, match="is one of the inputs"):
        register_nodes(hs.scene, bridge.RegistrationNodes(registered["fixed"], registered["moving"],
                                                          outputs={"warped": registered["moving"]}), "affine")
    short = bridge.markups_from_landmarks(hs.scene, registered["pair"].moving_landmarks[:3], "short")
    with pytest.raises(DeepLungRegError, match="correspond one to one"):
        register_nodes(hs.scene, bridge.RegistrationNodes(registered["fixed"], registered["moving"], fixed_landmarks=registered["fl"],
                                                          moving_landmarks=short), "affine")
    with pytest.raises(DeepLungRegError, match="same node"):
        register_nodes(hs.scene, bridge.RegistrationNodes(registered["fixed"], registered["fixed"]), "affine")
    with pytest.raises(DeepLungRegError, match="unknown method"):
        register_nodes(hs.scene, bridge.RegistrationNodes(registered["fixed"], registered["moving"]), "nope")


def test_slice_view_pictures_are_non_trivial(registered, bridge, tmp_path):
    """Fixed + warped overlay with the deformation grid, and the Jacobian map, rendered offscreen."""
    from DeepLungRegLib.slicer_bridge.render import render_slice_view
    from DeepLungRegLib.slicer_bridge.workflow import show_overlay

    from DeepLungRegLib.slicer_bridge.grid import set_grid_visible

    hs, r = registered["hs"], registered["res"]
    show_overlay(hs.scene, registered["fixed"], r.warped, 0.5)
    set_grid_visible(hs.scene, r.transform, False)
    plain = render_slice_view(hs, "Green", size=(256, 256))
    set_grid_visible(hs.scene, r.transform, True)
    overlay = render_slice_view(hs, "Green", size=(256, 256), path=tmp_path / "overlay.png")
    show_overlay(hs.scene, registered["fixed"], r.jacobian, 0.7)
    jac = render_slice_view(hs, "Green", size=(256, 256), path=tmp_path / "jacobian.png")
    assert (tmp_path / "overlay.png").stat().st_size > 5000 and (tmp_path / "jacobian.png").stat().st_size > 5000
    for img in (plain, overlay, jac):
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        assert img.std() > 20  # not blank
    # CT without the grid is grey; the grid adds coloured lines.
    assert np.abs(plain[..., 0].astype(int) - plain[..., 2]).mean() < 2
    assert (np.abs(overlay.astype(int) - plain).sum(-1) > 30).mean() > 0.02
    # The diverging Jacobian map is coloured (blue where the lung shrinks).
    chroma = np.abs(jac[..., 0].astype(int) - jac[..., 2])
    assert (chroma > 20).mean() > 0.05
    # Its colour legend is drawn at the right edge; hiding it changes only that strip.
    import slicer

    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(r.jacobian)
    assert legend is not None and legend.GetVisibility()
    legend.SetVisibility(False)
    no_legend = render_slice_view(hs, "Green", size=(256, 256))
    legend.SetVisibility(True)
    changed = np.abs(jac.astype(int) - no_legend).sum(-1) > 30
    assert changed[:, 192:].mean() > 0.02 and changed[:, :64].mean() < 0.001
    with pytest.raises(DeepLungRegError, match="no slice view"):
        render_slice_view(hs, "Blue")


def test_a_registration_in_a_background_process_and_a_cancelled_one(small_pair, slicer_core, tmp_path):
    """The Slicer module's path: the work runs in a worker process with progress as JSON lines; the scene is
    written only when it has finished, and a cancelled run leaves no node and no file behind."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.slicer_bridge.background import BackgroundRegistration

    p = small_pair
    hs = b.new_scene()
    fixed, moving, fmask, fl, ml = pair_nodes(b, hs.scene, p)
    before = b.image_from_volume_node(moving).array.copy()
    n_nodes = hs.scene.GetNumberOfNodes()

    stages = []
    run = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None, fixed_landmarks=fl,
                                                     moving_landmarks=ml), "affine", device="cpu",
                                 options={"levels_mm": [8.0], "iterations": [40]},
                                 workdir=tmp_path, show=False)
    res = run.wait(progress=lambda s, f: stages.append(f))
    assert run.state == "done" and stages and max(stages) >= 0.99 and stages == sorted(stages)
    m = res.metrics
    assert m["method"] == "affine" and m["tre_after"]["mean"] < 0.6 * m["tre_before"]["mean"]
    field, g = b.field_from_grid_transform_node(res.transform)
    assert g.same_as(p.fixed.geometry, tol=1e-3) and np.isfinite(field).all() and np.abs(field).max() > 1.0
    assert res.tre_table is not None and res.landmarks.GetNumberOfControlPoints() == 30
    assert res.tre_table.GetTable().GetValue(0, 0).ToString() == "L0"  # the labels went through the worker
    assert not list(tmp_path.iterdir())  # the worker's folder is gone
    n_after = hs.scene.GetNumberOfNodes()
    assert n_after > n_nodes

    slow = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [400, 400], "refine_learning_rates": [0.5, 0.25], "affine_init": False}
    run2 = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None), "adam",
                                  device="cpu", options=slow, workdir=tmp_path, show=False)
    deadline = time.time() + 180
    while run2.poll() == "running" and run2.fraction < 0.2 and time.time() < deadline:
        time.sleep(0.2)
    assert run2.state == "running" and run2.fraction >= 0.2
    run2.cancel()
    assert run2.state == "cancelled" and run2.worker.returncode is not None
    assert hs.scene.GetNumberOfNodes() == n_after  # no output node of the cancelled run
    assert np.array_equal(b.image_from_volume_node(moving).array, before) and not list(tmp_path.iterdir())
    with pytest.raises(DeepLungRegError, match="cancelled"):
        run2.finish()


def test_landmark_review_step_flag_correct_export_and_reopen(registered, bridge, tmp_path):
    """A clinician's review: worst landmark first, accept/flag with comments, a point dragged by a known
    offset gives the known TRE, the reviewed landmarks and table are exported and re-opened."""
    from DeepLungRegLib.slicer_bridge.review import REVIEW_FILES, LandmarkReview, centre_on, points_from_markups

    hs, res = registered["hs"], registered["res"]
    fixed_pts = bridge.landmarks_from_markups(registered["fl"])
    moving_pts = bridge.landmarks_from_markups(registered["ml"])
    labels = bridge.markups_labels(registered["fl"])
    moving_node = bridge.markups_from_landmarks(hs.scene, moving_pts, "M review")  # the node the user drags
    review = LandmarkReview(fixed_pts, moving_pts, res.outputs.result.field, res.outputs.result.geometry, labels)
    tre = review.tre()
    assert np.allclose(tre, res.outputs.tre_after, atol=1e-4)
    # worst first; next and previous wrap around; the views centre on the landmark
    order = review.order("tre")
    assert order[0] == int(np.argmax(tre)) and review.order("index") == list(range(len(tre)))
    review.goto(order[0])
    assert review.next() == order[1] and review.previous() == order[0] and review.previous() == order[-1]
    assert np.allclose(centre_on(hs.scene, review, order[0]), fixed_pts[order[0]])
    review.accept("fine", index=order[1])
    review.flag("  misses the   vessel ", index=order[0])
    assert review.status[order[0]] == "flagged" and review.comment[order[0]] == "misses the vessel"
    # drag the worst moving point onto where the registration maps its fixed point: its TRE becomes 0
    i = order[0]
    target = fixed_pts[i] + sample_field_at_points(res.outputs.result.field, res.outputs.result.geometry, fixed_pts[i:i + 1])[0]
    moving_node.SetNthControlPointPosition(i, *lps_to_ras(target[None])[0])
    before = review.summary()
    assert review.take_points(**points_from_markups(review, moving_node=moving_node)) == [i]
    after = review.summary()
    assert review.tre()[i] < 1e-3 and after["corrected"] == 1
    assert after["mean"] == pytest.approx(before["mean"] - tre[i] / len(tre), abs=1e-4)
    # export, refuse to overwrite, re-open
    written = review.export(tmp_path)
    assert sorted(p.name for p in written) == sorted(REVIEW_FILES)
    with pytest.raises(DeepLungRegError, match="already holds"):
        review.export(tmp_path)
    again = LandmarkReview.load(tmp_path / "review.csv", res.outputs.result.field, res.outputs.result.geometry)
    assert again.status == review.status and again.comment == review.comment and again.labels == labels
    assert np.allclose(again.moving, review.moving, atol=1e-4) and np.allclose(again.tre(), review.tre(), atol=1e-3)
    assert np.allclose(read_landmarks_file(tmp_path / "reviewed_moving_landmarks.mrk.json"), review.moving, atol=1e-3)


def read_landmarks_file(path):
    from DeepLungRegLib.io.landmarks import read_landmarks

    return read_landmarks(path)


def test_review_in_the_scene_drag_the_warped_point_onto_the_fixed_point(registered, bridge):
    """The module's review: the registration's own review, driven by the controller the Widget and the page share
    and drawn by ReviewScene; the warped landmarks are unlocked while correcting; dragging a warped point (in the
    fixed image's world) onto its fixed point makes that landmark's TRE zero, and the table and labels follow."""
    from DeepLungRegLib.evaluation.review import ReviewController
    from DeepLungRegLib.slicer_bridge.review import ReviewScene, show_review

    r, hs, fl = registered["res"], registered["hs"], registered["fl"]
    review = r.review
    tre = review.tre()
    field, geometry = r.outputs.result.field, r.outputs.result.geometry
    fixed_pts, moving_pts = registered["pair"].fixed_landmarks[:40], registered["pair"].moving_landmarks[:40]
    expect = np.linalg.norm(fixed_pts + sample_field_at_points(field, geometry, fixed_pts) - moving_pts, axis=1)
    assert np.allclose(tre, expect, atol=1e-3) and review.labels[0] == "L0"
    assert review.field is field  # the registration's own field, not a copy read back from the transform
    bridge.grid_transform_node_from_field(hs.scene, field, geometry, "", node=r.transform)  # an earlier test re-ran into it
    i = review.order("tre")[0]
    assert review.describe(i).startswith(f"L{i}: 1 of 40 worst first, TRE {tre[i]:.2f} mm")
    assert review.summary_text().startswith(f"40 landmarks: TRE mean {tre.mean():.2f} mm")
    controller = ReviewController(review)
    events = []
    controller.observe(events.append)
    scene_review = ReviewScene(hs.scene, controller, r.landmarks, r.tre_table)
    try:
        controller.set_editable(True)
        assert not r.landmarks.GetNthControlPointLocked(i)
        assert controller.select(i) == i and events[-1] == "current"
        fixed_ras = np.zeros(3)
        fl.GetNthControlPointPositionWorld(i, fixed_ras)
        r.landmarks.SetNthControlPointPositionWorld(i, *fixed_ras)  # what dragging in a slice view does
        r.landmarks.InvokeEvent(r.landmarks.PointEndInteractionEvent)  # ... and dropping it
        assert controller.current == i and events[-1] == "points"
        assert review.tre()[i] < 0.05 and review.corrected()[i]
        after = controller.mark("flagged", "checked by hand")
        assert after == review.order("tre")[(review.order("tre").index(i) + 1) % 40]
        cols = bridge.columns_from_table_node(r.tre_table)
        assert float(cols["TRE after (mm)"][i]) < 0.05 and cols["Status"][i] == "flagged"
        assert cols["Comment"][i] == "checked by hand" and r.landmarks.GetNthControlPointDescription(i).startswith(f"L{i}: 0.0 mm")
        assert r.landmarks.GetNthControlPointLabel(after).startswith(f"L{after}: ")  # the labels follow the current one
    finally:  # leave the module's shared scene as the registration made it
        scene_review.close()
        review.moving[:] = review.original_moving
        review.status[:] = ["unreviewed"] * 40
        review.comment[:] = [""] * 40
        show_review(hs.scene, review, r.landmarks, r.tre_table)
    n = len(events)
    controller.next()  # closed: the scene no longer follows
    assert len(events) == n + 1


def test_the_review_path_never_reads_the_field_back_from_the_transform(small_pair, bridge, monkeypatch, tmp_path):
    """The result carries its review, made from the field in memory: registering with landmarks, reviewing in the
    scene (step, drag, mark), exporting and opening the review again never read the field out of the transform
    node (a float64 copy of it would be ~3.8 GB on a 512x512x600 CT)."""
    from DeepLungRegLib.evaluation.review import LandmarkReview, ReviewController
    from DeepLungRegLib.slicer_bridge import nodes as bridge_nodes
    from DeepLungRegLib.slicer_bridge.review import ReviewScene
    from DeepLungRegLib.slicer_bridge.workflow import register_nodes

    def no_read_back(*args, **kwargs):
        raise AssertionError("the review read the displacement field back out of the transform node")

    monkeypatch.setattr(bridge_nodes, "field_from_grid_transform_node", no_read_back)
    monkeypatch.setattr(bridge, "field_from_grid_transform_node", no_read_back)
    hs = bridge.new_scene()
    fixed, moving, fmask, fl, ml = pair_nodes(bridge, hs.scene, small_pair, n=12)
    res = register_nodes(hs.scene, bridge.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None, fixed_landmarks=fl,
                                                            moving_landmarks=ml), "affine", device="cpu",
                         options={"levels_mm": [8.0], "iterations": [20]}, show=False)
    review = res.review
    assert isinstance(review, LandmarkReview) and review.field is res.outputs.result.field
    assert np.allclose(review.tre(), res.outputs.tre_after, atol=1e-4) and review.current == res.worst_landmark
    controller = ReviewController(review)
    scene_review = ReviewScene(hs.scene, controller, res.landmarks, res.tre_table)
    controller.worst()
    controller.set_editable(True)
    j = controller.current
    target = ras_to_lps(np.array([[0.0, 0.0, 0.0]]))[0]
    res.landmarks.SetNthControlPointPosition(j, *lps_to_ras(target[None])[0])
    res.landmarks.InvokeEvent(res.landmarks.PointEndInteractionEvent)
    assert np.allclose(review.moving[j], target) and review.corrected()[j]
    controller.mark("accepted", "ok")
    written = controller.export(tmp_path)
    again = LandmarkReview.load(tmp_path / "review.csv", review.field, review.geometry)
    assert len(written) == 5 and again.status[j] == "accepted" and np.allclose(again.tre(), review.tre(), atol=1e-3)
    scene_review.close()


@pytest.mark.slow
def test_the_sample_data_pair_registers_through_the_node_path(bridge):
    """The pair that the module offers in Sample Data, loaded with Slicer's readers under the names Sample Data
    gives it, is found by those names (as the module picks it) and registers with the default method through
    register_nodes, the node path the module's Logic delegates to: the TRE table comes at once."""
    from DeepLungRegLib.data import SAMPLE_PAIR
    from DeepLungRegLib.options import DEFAULT_METHOD
    from DeepLungRegLib.slicer_bridge.sample import load_sample_pair, sample_pair_nodes
    from DeepLungRegLib.slicer_bridge.workflow import register_nodes

    hs = bridge.new_scene()
    assert sample_pair_nodes(hs.scene) is None
    loaded = load_sample_pair(hs.scene)
    nodes = sample_pair_nodes(hs.scene)
    assert nodes == loaded and [n.GetName() for n in nodes.values()] == [node for _, node, _ in SAMPLE_PAIR]
    n = nodes["fixed_landmarks"].GetNumberOfControlPoints()
    assert n == nodes["moving_landmarks"].GetNumberOfControlPoints() >= 50
    res = register_nodes(hs.scene, bridge.RegistrationNodes(nodes["fixed"], nodes["moving"], fixed_landmarks=nodes["fixed_landmarks"],
                                                            moving_landmarks=nodes["moving_landmarks"]), DEFAULT_METHOD,
                         device="cpu", show=False)
    before, after = res.metrics["tre_before"]["mean"], res.metrics["tre_after"]["mean"]
    print(f"\nsample pair, {DEFAULT_METHOD}: TRE {before:.2f} mm before, {after:.2f} mm after")
    assert before > 5.0 and after < 0.15 * before
    assert res.metrics["jacobian"]["folding_percent"] == 0.0
    cols = bridge.columns_from_table_node(res.tre_table)
    assert len(cols["TRE after (mm)"]) == n and cols["Landmark"][:2] == ["L1", "L2"]


def test_the_first_look_views_fit_the_fixed_volume_and_the_grid_stays_on_it(registered, bridge, tmp_path):
    """Fitted to the fixed volume, each view shows all of it (the corners of its box in view) and fills the view
    along one axis; the deformation grid is drawn over the image only, never over the background around it."""
    from DeepLungRegLib.slicer_bridge.grid import _ras_to_xy, fit_slice_view, point_in_view, set_grid_visible, volume_corners_ras
    from DeepLungRegLib.slicer_bridge.render import render_slice_view
    from DeepLungRegLib.slicer_bridge.workflow import show_overlay

    hs, r, fixed = registered["hs"], registered["res"], registered["fixed"]
    show_overlay(hs.scene, fixed, None, 0.0)
    corners = volume_corners_ras(fixed)
    for view, size in (("Red", (400, 200)), ("Green", (200, 400)), ("Yellow", (300, 300))):
        logic = hs.slice_logics[view]
        logic.GetSliceNode().SetFieldOfView(20.0, 20.0, 1.0)  # zoomed in and off-centre, as a user may leave it
        logic.GetSliceNode().JumpSliceByCentering(*corners[0])
        assert not all(point_in_view(logic.GetSliceNode(), c) for c in corners)
        fit_slice_view(logic, fixed, size)
        node = logic.GetSliceNode()
        assert all(point_in_view(node, c) for c in corners), view
        xy = np.array([(_ras_to_xy(node) @ np.append(c, 1.0))[:2] for c in corners])
        filled = (xy.max(0) - xy.min(0)) / np.array(size)
        assert filled.max() > 0.8, (view, filled)  # the volume fills the view along one axis at least
        # the grid lines: all inside the volume's rectangle in the picture, none on the black around it
        set_grid_visible(hs.scene, r.transform, False)
        plain = render_slice_view(hs, view, size=size, fit=False)
        set_grid_visible(hs.scene, r.transform, True)
        gridded = render_slice_view(hs, view, size=size, fit=False, path=tmp_path / f"{view}.png")
        lines = np.abs(gridded.astype(int) - plain).sum(-1) > 30
        rows, cols = np.nonzero(lines)
        assert lines.mean() > 0.005, view
        lo, hi = xy.min(0), xy.max(0)
        x, y = cols, size[1] - 1 - rows  # picture rows run top down, slice-view y bottom up
        outside = (x < lo[0] - 2) | (x > hi[0] + 2) | (y < lo[1] - 2) | (y > hi[1] + 2)
        assert outside.sum() == 0, (view, outside.sum())
        if view != "Yellow":  # a view of another shape than the volume has background beside it, which stays black
            yy, xx = np.mgrid[size[1] - 1:-1:-1, 0:size[0]]
            beside = (xx < lo[0] - 2) | (xx > hi[0] + 2) | (yy < lo[1] - 2) | (yy > hi[1] + 2)
            assert beside.mean() > 0.05 and gridded[beside].max() < 30, view
    show_overlay(hs.scene, fixed, r.warped, 0.5)
