"""Tests of DeepLungRegLib/slicer_bridge/workflow.py on slicer-core: register_nodes, its outputs, the review in the scene and the views."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.geometry.grid import lps_to_ras, ras_to_lps
from DeepLungRegLib.transforms import sample_field_at_points

from helpers_slicer import bridge, hs, small_pair
from conftest import pair_nodes


#: every test here takes `registered` (a registration through register_nodes, minutes on 2 cores): not in `make test-fast`
pytestmark = pytest.mark.slow


# ------------------------------------------------------------- the workflow
FAST = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [50, 30], "refine_learning_rates": [1.0, 0.5]}


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


def test_the_uncertainty_map_is_an_overlay_in_sequential_colours_and_orders_the_review(small_pair, slicer_core, bridge):
    """Issue 31 in Slicer: convex with ``uncertainty`` gives the map as a volume node (mm, sequential colours from 0,
    its legend), and the landmark review can step most uncertain first, by the map's values at the fixed landmarks."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.slicer_bridge.workflow import SEQUENTIAL_COLOR_NAME, register_nodes
    from DeepLungRegLib.transforms import sample_map_at_points

    from helpers_convex import FAST as FAST_CONVEX

    p = small_pair
    hs = b.new_scene()
    fixed = b.volume_node_from_image(hs.scene, p.fixed, "inhale")
    moving = b.volume_node_from_image(hs.scene, p.moving, "exhale")
    fl = b.markups_from_landmarks(hs.scene, p.fixed_landmarks[:30], "F")
    ml = b.markups_from_landmarks(hs.scene, p.moving_landmarks[:30], "M")
    r = register_nodes(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask="auto", moving_mask="auto", fixed_landmarks=fl,
                                                     moving_landmarks=ml), "convex", device="cpu",
                       options={**FAST_CONVEX, "uncertainty": True})
    node = r.nodes()["uncertainty"]
    values = bridge.image_from_volume_node(node).array
    assert np.allclose(values, r.outputs.uncertainty.array) and values.min() >= 0.0
    d = node.GetDisplayNode()
    assert d.GetColorNode().GetName() == SEQUENTIAL_COLOR_NAME
    assert d.GetLevel() - d.GetWindow() / 2 == pytest.approx(0.0, abs=1e-6) and d.GetWindow() > 0  # from 0 up
    assert r.metrics["uncertainty"]["both"]["n"] > 0
    expect = sample_map_at_points(r.outputs.uncertainty.array, p.fixed.geometry, p.fixed_landmarks[:30])
    assert np.allclose(r.review.uncertainty, expect)
    assert r.review.order("uncertainty") == [int(i) for i in np.argsort(-expect, kind="stable")]
