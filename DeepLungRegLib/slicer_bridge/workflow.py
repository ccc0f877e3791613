"""The registration job on MRML nodes: what the Slicer module's Apply does.

:func:`register_nodes` reads the input nodes, runs
:func:`DeepLungRegLib.pipeline.compute_outputs` and writes its results into
output nodes that it tags as its own, so that a re-run replaces only them:

* a grid transform node (resampling direction, "from parent") with the
  deformation grid shown in the slice views;
* the warped moving volume, shown as the foreground over the fixed volume;
* Jacobian and ventilation volumes with a diverging colour table centred on
  no volume change, each with a colour legend;
* with landmarks, a TRE table (before, after, error vector) and the moving
  landmarks placed under the transform, labelled and coloured by their error.

User nodes are never written unless passed explicitly as outputs, and input
nodes never: passing an input as an output is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import slicer

from ..errors import DeepLungRegError
from ..geometry.grid import lps_to_ras
from ..io.images import Image
from ..pipeline import RegistrationOutputs, compute_outputs
from ..transforms.resample import resample_to_geometry
from ..transforms.warp import sample_field_at_points
from .nodes import (
    grid_transform_node_from_field, image_from_volume_node, landmarks_from_markups, markups_from_landmarks,
    markups_labels, table_node_from_columns, volume_node_from_image,
)

log = logging.getLogger(__name__)

#: Node attribute naming the output role; its presence marks a node as DeepLungReg's own.
ROLE_ATTRIBUTE = "DeepLungReg.Role"
#: Node attribute with the metrics JSON (on the transform node).
METRICS_ATTRIBUTE = "DeepLungReg.Metrics"
#: Node reference roles pointing from each output to the inputs it came from.
FIXED_REFERENCE, MOVING_REFERENCE = "DeepLungRegFixed", "DeepLungRegMoving"
#: Output roles and their node classes.
OUTPUT_CLASSES = {
    "transform": "vtkMRMLGridTransformNode",
    "warped": "vtkMRMLScalarVolumeNode",
    "jacobian": "vtkMRMLScalarVolumeNode",
    "ventilation": "vtkMRMLScalarVolumeNode",
    "landmarks": "vtkMRMLMarkupsFiducialNode",
    "tre_table": "vtkMRMLTableNode",
}
#: Name of the shared diverging colour table.
DIVERGING_COLOR_NAME = "DeepLungReg Diverging"
#: Landmarks whose TRE after registration exceeds this (mm) are drawn in the "bad" colour.
TRE_WARNING_MM = 3.0


@dataclass
class NodeRegistration:
    """What :func:`register_nodes` created or updated.

    Attributes:
        transform: ``vtkMRMLGridTransformNode`` (fixed -> moving, resampling direction).
        warped: the moving volume warped onto the fixed grid.
        jacobian, ventilation: scalar volumes on the fixed grid.
        landmarks: the moving landmarks under ``transform`` (``None`` without landmarks).
        tre_table: per-landmark TRE table (``None`` without landmarks).
        metrics: the metrics dict (also in the transform's ``DeepLungReg.Metrics`` attribute).
        summary: a few human-readable lines, with a warning when the field folds.
        worst_landmark: index of the landmark with the largest TRE after registration.
        outputs: the in-memory library outputs.
    """

    transform: object
    warped: object
    jacobian: object
    ventilation: object
    landmarks: object | None
    tre_table: object | None
    metrics: dict
    summary: str
    worst_landmark: int | None = None
    outputs: RegistrationOutputs | None = field(default=None, repr=False)

    def nodes(self) -> dict[str, object]:
        """The created nodes by role (``None`` roles left out)."""
        d = {"transform": self.transform, "warped": self.warped, "jacobian": self.jacobian,
             "ventilation": self.ventilation, "landmarks": self.landmarks, "tre_table": self.tre_table}
        return {k: v for k, v in d.items() if v is not None}


# ----------------------------------------------------------- output nodes
def find_output(scene, role: str, fixed_node, moving_node):
    """The node DeepLungReg created earlier for ``role`` and this input pair, or ``None``."""
    cls = OUTPUT_CLASSES[role]
    for i in range(scene.GetNumberOfNodesByClass(cls)):
        node = scene.GetNthNodeByClass(i, cls)
        if (node.GetAttribute(ROLE_ATTRIBUTE) == role
                and node.GetNodeReferenceID(FIXED_REFERENCE) == fixed_node.GetID()
                and node.GetNodeReferenceID(MOVING_REFERENCE) == moving_node.GetID()):
            return node
    return None


def _output_node(scene, role: str, name: str, fixed_node, moving_node, given, inputs: list):
    """The node to write ``role`` into: the one given, an earlier own output, or a new one."""
    cls = OUTPUT_CLASSES[role]
    input_ids = {n.GetID() for n in inputs if n is not None}
    if given is not None:
        if given.GetID() in input_ids:
            raise DeepLungRegError(f"register: the {role} output {given.GetName()!r} is one of the inputs; "
                                   "choose another node or 'Create new'")
        if not given.IsA(cls):
            raise DeepLungRegError(f"register: the {role} output {given.GetName()!r} is a {given.GetClassName()}, not a {cls}")
        node = given
    else:
        node = find_output(scene, role, fixed_node, moving_node)
        if node is None:
            node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name))
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetNodeReferenceID(FIXED_REFERENCE, fixed_node.GetID())
    node.SetNodeReferenceID(MOVING_REFERENCE, moving_node.GetID())
    return node


def diverging_color_node(scene):
    """The shared blue-white-red colour table (white at its centre), created once per scene."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName() == DIVERGING_COLOR_NAME:
            return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(DIVERGING_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    lut = node.GetLookupTable()
    lut.SetTableRange(0, 255)
    blue, white, red = np.array([0.13, 0.3, 0.7]), np.ones(3), np.array([0.75, 0.12, 0.12])
    for i in range(256):
        t = i / 255.0
        rgb = blue + (white - blue) * (t / 0.5) if t <= 0.5 else white + (red - white) * ((t - 0.5) / 0.5)
        node.SetColor(i, f"{i}", *rgb, 1.0)
    node.SetAttribute("Category", "DeepLungReg")
    scene.AddNode(node)
    return node


def _show_map(scene, node, centre: float, half_width: float, title: str) -> None:
    """Diverging colours centred on ``centre``, a fixed window and a colour legend (hidden until shown)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    d = node.GetDisplayNode()
    d.SetAndObserveColorNodeID(diverging_color_node(scene).GetID())
    d.AutoWindowLevelOff()
    d.SetWindowLevel(2.0 * half_width, centre)
    d.SetInterpolate(False)
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText(title)
        legend.SetVisibility(False)


def _half_width(values: np.ndarray, centre: float, floor: float) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return floor
    lo, hi = np.percentile(v, [1, 99])
    return float(max(floor, abs(lo - centre), abs(hi - centre)))


def show_overlay(scene, background_node, foreground_node, opacity: float = 0.5) -> None:
    """Show ``foreground_node`` over ``background_node`` in every slice view (fade with the opacity).

    Colour legends of DeepLungReg's maps are shown only for the map in the foreground.
    """
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        comp = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        comp.SetBackgroundVolumeID(background_node.GetID() if background_node else None)
        comp.SetForegroundVolumeID(foreground_node.GetID() if foreground_node else None)
        comp.SetForegroundOpacity(float(opacity))
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode")):
        legend = scene.GetNthNodeByClass(i, "vtkMRMLColorLegendDisplayNode")
        owner = legend.GetDisplayableNode()
        if owner is not None and owner.GetAttribute(ROLE_ATTRIBUTE) in ("jacobian", "ventilation"):
            legend.SetVisibility(foreground_node is not None and owner.GetID() == foreground_node.GetID())


def jump_to_point(scene, point_lps: np.ndarray) -> None:
    """Centre every slice view on an LPS point."""
    r, a, s = lps_to_ras(np.asarray(point_lps, dtype=float)[None])[0]
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByCentering(r, a, s)


def jump_to_landmark(scene, markups_node, index: int) -> np.ndarray:
    """Centre the slice views on control point ``index`` (world position); returns it in LPS."""
    n = markups_node.GetNumberOfControlPoints()
    if not 0 <= index < n:
        raise DeepLungRegError(f"jump_to_landmark: index {index} is outside 0..{n - 1}")
    ras = np.zeros(3)
    markups_node.GetNthControlPointPositionWorld(index, ras)
    point = lps_to_ras(ras[None])[0]  # the flip is its own inverse
    jump_to_point(scene, point)
    return point


def summary_text(metrics: dict) -> str:
    """A few lines for the GUI: TRE, folding and SD log J, with a warning when the field folds."""
    j = metrics["jacobian"]
    lines = []
    if "tre_before" in metrics:
        b, a = metrics["tre_before"], metrics["tre_after"]
        lines.append(f"TRE {b['mean']:.2f} ± {b['std']:.2f} mm before, {a['mean']:.2f} ± {a['std']:.2f} mm after "
                     f"(95th percentile {a['p95']:.2f}, max {a['max']:.2f}, n = {a['n']})")
    lines.append(f"Folding {j['folding_percent']:.3f} % of voxels, SD log J {j['sd_log_j']:.3f}, "
                 f"J in [{j['min_j']:.2f}, {j['max_j']:.2f}]")
    if j["folding_percent"] > 0:
        lines.append(f"WARNING: the deformation folds (J <= 0) in {j['folding_percent']:.3f} % of voxels; "
                     "raise the regularisation or check the inputs.")
    t = metrics.get("timings_s", {})
    lines.append(f"Registration {t.get('total', float('nan')):.1f} s on {metrics.get('diagnostics', {}).get('device', '?')}")
    return "\n".join(lines)


# ------------------------------------------------------------------- job
def _mask_image(spec, image: Image, what: str):
    """``"auto"``/``None``/``"none"`` pass through; a volume node becomes a mask on ``image``'s grid."""
    if spec is None or isinstance(spec, str):
        return spec
    mask = image_from_volume_node(spec)
    if not mask.geometry.same_as(image.geometry, tol=1e-3):
        log.info("resampling the %s %s onto its image's grid", what, spec.GetName())
        mask = resample_to_geometry(mask.with_array(mask.array.astype(np.float32)), image.geometry, mode="nearest")
    return mask.with_array(mask.array > 0)


def register_nodes(
    scene,
    fixed_node,
    moving_node,
    method: str = "adam",
    *,
    fixed_mask="auto",
    moving_mask="auto",
    fixed_landmarks=None,
    moving_landmarks=None,
    device: str = "auto",
    options: dict | None = None,
    outputs: dict | None = None,
    progress: Callable[[str, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    show: bool = True,
) -> NodeRegistration:
    """Register two volume nodes and write the results into output nodes.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer).
        fixed_node, moving_node: scalar volume nodes (a linear parent transform is honoured).
        method: a registered method name.
        fixed_mask, moving_mask: a (labelmap) volume node, ``"auto"`` (automatic
            lung mask) or ``None``.
        fixed_landmarks, moving_landmarks: markups point lists with corresponding
            points (same count and order), or ``None``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        options: method options (see ``deeplungreg methods --options``).
        outputs: output nodes chosen by the user, by role (``"transform"``,
            ``"warped"``, ``"jacobian"``, ``"ventilation"``, ``"landmarks"``,
            ``"tre_table"``); others are found among this pair's earlier
            outputs or created.
        progress: ``progress(stage, fraction)``.
        cancel: returns True to stop (raises :class:`~DeepLungRegLib.errors.RegistrationCancelled`).
        show: show the warped overlay, the deformation grid and fit the slice views.
    """
    if fixed_node is None or moving_node is None:
        raise DeepLungRegError("register: choose both a fixed and a moving volume")
    if fixed_node.GetID() == moving_node.GetID():
        raise DeepLungRegError("register: the fixed and the moving volume are the same node")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise DeepLungRegError("register: give both fixed and moving landmarks, or neither")
    outputs = dict(outputs or {})
    unknown = sorted(set(outputs) - set(OUTPUT_CLASSES))
    if unknown:
        raise DeepLungRegError(f"register: unknown output role(s) {', '.join(unknown)}; known: {', '.join(OUTPUT_CLASSES)}")
    inputs = [fixed_node, moving_node, fixed_landmarks, moving_landmarks]
    inputs += [m for m in (fixed_mask, moving_mask) if not (m is None or isinstance(m, str))]

    fixed = image_from_volume_node(fixed_node)
    moving = image_from_volume_node(moving_node)
    fl = ml = labels = None
    if fixed_landmarks is not None:
        fl = landmarks_from_markups(fixed_landmarks)
        ml = landmarks_from_markups(moving_landmarks)
        if fl.shape != ml.shape:
            raise DeepLungRegError(f"register: {fixed_landmarks.GetName()!r} has {len(fl)} points but "
                                   f"{moving_landmarks.GetName()!r} has {len(ml)}; landmarks must correspond one to one")
        labels = markups_labels(fixed_landmarks)
    out = compute_outputs(
        fixed, moving, method=method, fixed_mask=_mask_image(fixed_mask, fixed, "fixed mask"),
        moving_mask=_mask_image(moving_mask, moving, "moving mask"), fixed_landmarks=fl, moving_landmarks=ml,
        config=options, device=device, progress=progress, cancel=cancel)
    g = fixed.geometry
    base = f"{moving_node.GetName()}-to-{fixed_node.GetName()}"

    def node_for(role: str, name: str):
        return _output_node(scene, role, name, fixed_node, moving_node, outputs.get(role), inputs)

    transform = grid_transform_node_from_field(scene, out.result.field, g, base, node=node_for("transform", f"{base} transform"))
    metrics = out.metrics
    transform.SetAttribute(METRICS_ATTRIBUTE, json.dumps(metrics))
    transform.SetAttribute("DeepLungReg.Method", method)
    if transform.GetDisplayNode() is None:
        transform.CreateDefaultDisplayNodes()
    td = transform.GetDisplayNode()
    td.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
    extent = np.asarray(g.size) * np.asarray(g.spacing)
    td.SetGridSpacingMm(float(max(5.0, round(float(np.min(extent)) / 15.0))))
    td.SetVisibility(show)
    td.SetVisibility2D(True)
    td.SetVisibility3D(False)

    warped_arr = out.warped.array
    if moving.array.dtype.kind in "iu":
        warped_arr = np.round(warped_arr).astype(moving.array.dtype)
    warped = volume_node_from_image(scene, Image(warped_arr, g), "", node=node_for("warped", f"{base} warped"))
    md, wd = moving_node.GetDisplayNode(), warped.GetDisplayNode()
    if md is not None and wd is not None:
        wd.AutoWindowLevelOff()
        wd.SetWindowLevel(md.GetWindow(), md.GetLevel())
        if md.GetColorNodeID():
            wd.SetAndObserveColorNodeID(md.GetColorNodeID())

    jac = volume_node_from_image(scene, out.jacobian, "", node=node_for("jacobian", f"{base} Jacobian"))
    lung = out.fixed_mask.array if out.fixed_mask is not None else np.ones(g.shape, bool)
    _show_map(scene, jac, 1.0, _half_width(out.jacobian.array[lung], 1.0, 0.25), "Jacobian")
    vent = volume_node_from_image(scene, out.ventilation, "", node=node_for("ventilation", f"{base} ventilation"))
    _show_map(scene, vent, 0.0, _half_width(out.ventilation.array[lung], 0.0, 0.25), "J - 1")

    lm_node = table = worst = None
    if fl is not None:
        predicted = fl + sample_field_at_points(out.result.field, g, fl)
        err_ras = lps_to_ras(predicted - ml)
        tb, ta = out.tre_before, out.tre_after
        worst = int(np.argmax(ta))
        names = [lab or f"P-{i + 1}" for i, lab in enumerate(labels)]
        table = table_node_from_columns(scene, {
            "Landmark": names,
            "TRE before (mm)": np.round(tb, 3),
            "TRE after (mm)": np.round(ta, 3),
            "Error R (mm)": np.round(err_ras[:, 0], 3),
            "Error A (mm)": np.round(err_ras[:, 1], 3),
            "Error S (mm)": np.round(err_ras[:, 2], 3),
        }, "", node=node_for("tre_table", f"{base} TRE"))
        lm_node = node_for("landmarks", f"{base} warped landmarks")
        markups_from_landmarks(scene, ml, "", labels=[f"{n}: {a:.1f} mm" for n, a in zip(names, ta)], node=lm_node)
        if lm_node.GetDisplayNode() is None:
            lm_node.CreateDefaultDisplayNodes()
        # Good points are drawn "selected" (green), points above TRE_WARNING_MM unselected (red).
        for i, a in enumerate(ta):
            lm_node.SetNthControlPointSelected(i, bool(a <= TRE_WARNING_MM))
            lm_node.SetNthControlPointLocked(i, True)
        ld = lm_node.GetDisplayNode()
        ld.SetSelectedColor(0.1, 0.8, 0.2)
        ld.SetColor(0.9, 0.1, 0.1)
        lm_node.SetAndObserveTransformNodeID(transform.GetID())
        lm_node.SetAttribute("DeepLungReg.WorstLandmark", str(worst))
    summary = summary_text(metrics)
    if show:
        show_overlay(scene, fixed_node, warped, 0.5)
    return NodeRegistration(transform, warped, jac, vent, lm_node, table, metrics, summary, worst, out)
