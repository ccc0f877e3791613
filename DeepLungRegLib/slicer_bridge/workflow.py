"""The registration job on MRML nodes: what the Slicer module's Apply does.

:func:`job_from_nodes` makes a :class:`~DeepLungRegLib.pipeline.RegistrationJob` of the
input nodes; :func:`register_nodes` computes it
(:func:`DeepLungRegLib.pipeline.compute_outputs`) and writes the results into
output nodes that it tags as its own, so that a re-run replaces only them:

* a grid transform node (resampling direction, "from parent") with the
  deformation grid shown in the slice views, over the fixed volume only (:mod:`.grid`);
* the warped moving volume, shown as the foreground over the fixed volume;
* Jacobian, ventilation and (CT with a lung mask) HU ventilation volumes with a
  diverging colour table centred on no change, each with a colour legend;
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
from ..geometry.grid import lps_to_ras, ras_to_lps
from ..pipeline import DEFAULT_METHOD, RegistrationJob, RegistrationOutputs, compute_outputs, summary_lines
from .grid import grid_spacing_mm, jump_to_point, show_deformation_grid
from .nodes import (
    grid_transform_node_from_field, image_from_volume_node, landmarks_from_markups, mask_from_segmentation,
    markups_labels, volume_node_from_image,
)
from .review import LandmarkReview

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
    "ventilation_hu": "vtkMRMLScalarVolumeNode",
    "landmarks": "vtkMRMLMarkupsFiducialNode",
    "tre_table": "vtkMRMLTableNode",
}
#: The maps (roles of :class:`RegistrationOutputs` images) and their node names.
MAP_NAMES = {"jacobian": "Jacobian", "ventilation": "ventilation", "ventilation_hu": "HU ventilation"}
#: Name of the shared diverging colour table.
DIVERGING_COLOR_NAME = "DeepLungReg Diverging"


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
        ventilation_hu: the HU-based specific ventilation on the fixed grid (``None`` unless both
            images are CT and there is a fixed lung mask).
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
    ventilation_hu: object | None = None

    def nodes(self) -> dict[str, object]:
        """The created nodes by role (``None`` roles left out)."""
        d = {"transform": self.transform, "warped": self.warped, "jacobian": self.jacobian,
             "ventilation": self.ventilation, "ventilation_hu": self.ventilation_hu, "landmarks": self.landmarks, "tre_table": self.tre_table}
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


def input_nodes(fixed_node, moving_node, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks) -> list:
    """The user's nodes a registration reads (masks given as ``"auto"``/``None`` are not nodes): never an output."""
    nodes = [fixed_node, moving_node, fixed_landmarks, moving_landmarks]
    return nodes + [m for m in (fixed_mask, moving_mask) if not (m is None or isinstance(m, str))]


def _checked_outputs(outputs: dict | None, inputs: list) -> dict:
    """The output nodes the user chose, by role, checked before any work: known roles, the right
    node classes, and none of them an input."""
    outputs = dict(outputs or {})
    unknown = sorted(set(outputs) - set(OUTPUT_CLASSES))
    if unknown:
        raise DeepLungRegError(f"register: unknown output role(s) {', '.join(unknown)}; known: {', '.join(OUTPUT_CLASSES)}")
    input_ids = {n.GetID() for n in inputs if n is not None}
    for role, given in outputs.items():
        if given is None:
            continue
        if given.GetID() in input_ids:
            raise DeepLungRegError(f"register: the {role} output {given.GetName()!r} is one of the inputs; "
                                   "choose another node or 'Create new'")
        if not given.IsA(OUTPUT_CLASSES[role]):
            raise DeepLungRegError(f"register: the {role} output {given.GetName()!r} is a {given.GetClassName()}, "
                                   f"not a {OUTPUT_CLASSES[role]}")
    return outputs


def _output_node(scene, role: str, name: str, fixed_node, moving_node, given):
    """The node to write ``role`` into: the one given (see :func:`_checked_outputs`), an earlier own output, or a new one."""
    node = given if given is not None else find_output(scene, role, fixed_node, moving_node)
    if node is None:
        node = scene.AddNewNodeByClass(OUTPUT_CLASSES[role], scene.GenerateUniqueName(name))
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
        if owner is not None and owner.GetAttribute(ROLE_ATTRIBUTE) in MAP_NAMES:
            legend.SetVisibility(foreground_node is not None and owner.GetID() == foreground_node.GetID())


def jump_to_landmark(scene, markups_node, index: int) -> np.ndarray:
    """Centre the slice views on control point ``index`` (world position); returns it in LPS."""
    n = markups_node.GetNumberOfControlPoints()
    if not 0 <= index < n:
        raise DeepLungRegError(f"jump_to_landmark: index {index} is outside 0..{n - 1}")
    ras = np.zeros(3)
    markups_node.GetNthControlPointPositionWorld(index, ras)
    point = ras_to_lps(ras[None])[0]
    jump_to_point(scene, point)
    return point


def summary_text(metrics: dict) -> str:
    """A few lines for the GUI: TRE, folding and SD log J, with a warning when the field folds."""
    return "\n".join(summary_lines(metrics))


# ------------------------------------------------------------------- job
def job_from_nodes(fixed_node, moving_node, method: str = DEFAULT_METHOD, *, fixed_mask="auto", moving_mask="auto",
                   fixed_landmarks=None, moving_landmarks=None, options: dict | None = None, device: str = "auto",
                   fixed_mask_segments=None, moving_mask_segments=None) -> RegistrationJob:
    """The :class:`~DeepLungRegLib.pipeline.RegistrationJob` of two volume nodes (checked as any job is).

    Args:
        fixed_node, moving_node: scalar volume nodes (a linear parent transform is honoured).
        fixed_mask, moving_mask: a (labelmap) volume node on any grid of its scan, a segmentation node
            (e.g. from Lung CT Segmenter or TotalSegmentator), ``"auto"`` or ``None``.
        fixed_mask_segments, moving_mask_segments: with a segmentation node, the names (or IDs) of the
            lung segments; ``None``: every segment whose name contains "lung".
        fixed_landmarks, moving_landmarks: markups point lists with corresponding points (same
            count and order), or ``None``.
        options: method options (see ``deeplungreg methods --options``).
    """
    if fixed_node is None or moving_node is None:
        raise DeepLungRegError("register: choose both a fixed and a moving volume")
    if fixed_node.GetID() == moving_node.GetID():
        raise DeepLungRegError("register: the fixed and the moving volume are the same node")
    fl = None if fixed_landmarks is None else landmarks_from_markups(fixed_landmarks)
    ml = None if moving_landmarks is None else landmarks_from_markups(moving_landmarks)
    if fl is not None and ml is not None and fl.shape != ml.shape:
        raise DeepLungRegError(f"register: {fixed_landmarks.GetName()!r} has {len(fl)} points but "
                               f"{moving_landmarks.GetName()!r} has {len(ml)}; landmarks must correspond one to one")
    labels = None if fl is None else markups_labels(fixed_landmarks)

    def mask(spec, segments, image_node):
        if spec is None or isinstance(spec, str):
            return spec
        if spec.IsA("vtkMRMLSegmentationNode"):
            return mask_from_segmentation(spec, image_node, segments)
        return image_from_volume_node(spec)

    return RegistrationJob(image_from_volume_node(fixed_node), image_from_volume_node(moving_node), method,
                           mask(fixed_mask, fixed_mask_segments, fixed_node), mask(moving_mask, moving_mask_segments, moving_node),
                           fl, ml, labels, options, device)


def register_nodes(scene, fixed_node, moving_node, method: str = DEFAULT_METHOD, *, fixed_mask="auto", moving_mask="auto",
                   fixed_landmarks=None, moving_landmarks=None, device: str = "auto", options: dict | None = None,
                   outputs: dict | None = None, progress: Callable[[str, float], None] | None = None,
                   cancel: Callable[[], bool] | None = None, show: bool = True, fixed_mask_segments=None,
                   moving_mask_segments=None) -> NodeRegistration:
    """Register two volume nodes (see :func:`job_from_nodes`) and write the results into output nodes.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        outputs: output nodes chosen by the user, by role (``"transform"``,
            ``"warped"``, ``"jacobian"``, ``"ventilation"``, ``"ventilation_hu"``, ``"landmarks"``,
            ``"tre_table"``); others are found among this pair's earlier
            outputs or created.
        progress: ``progress(stage, fraction)``.
        cancel: returns True to stop (raises :class:`~DeepLungRegLib.errors.RegistrationCancelled`).
        show: show the warped overlay, the deformation grid and fit the slice views.
    """
    job = job_from_nodes(fixed_node, moving_node, method, fixed_mask=fixed_mask, moving_mask=moving_mask,
                         fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, options=options, device=device,
                         fixed_mask_segments=fixed_mask_segments, moving_mask_segments=moving_mask_segments)
    inputs = input_nodes(fixed_node, moving_node, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks)
    outputs = _checked_outputs(outputs, inputs)
    out = compute_outputs(job, progress=progress, cancel=cancel)
    return write_nodes(scene, job, out, fixed_node, moving_node, outputs=outputs, inputs=inputs, show=show)


def write_nodes(scene, job: RegistrationJob, out: RegistrationOutputs, fixed_node, moving_node, *, outputs: dict | None = None,
                inputs: list | None = None, show: bool = True) -> NodeRegistration:
    """Write a job's outputs (computed here, or read back from a worker's folder) into output nodes."""
    outputs = _checked_outputs(outputs, inputs or [fixed_node, moving_node])
    base = f"{moving_node.GetName()}-to-{fixed_node.GetName()}"

    def node_for(role: str, name: str):
        return _output_node(scene, role, f"{base} {name}", fixed_node, moving_node, outputs.get(role))

    transform = _transform_node(node_for("transform", "transform"), scene, job, out, show)
    warped = volume_node_from_image(scene, out.warped, "", node=node_for("warped", "warped"))
    _copy_display(moving_node, warped)
    jac, vent, vent_hu = _map_nodes(scene, out, *(node_for(role, name) if getattr(out, role) is not None else None
                                                  for role, name in MAP_NAMES.items()))
    lm_node = table = worst = None
    if job.fixed_landmarks is not None:
        table, lm_node, worst = _landmark_nodes(scene, job, out, transform, node_for("tre_table", "TRE"),
                                                node_for("landmarks", "warped landmarks"))
    if show:
        show_overlay(scene, fixed_node, warped, 0.5)
    return NodeRegistration(transform, warped, jac, vent, lm_node, table, out.metrics, summary_text(out.metrics), worst, out,
                            vent_hu)


def _transform_node(node, scene, job: RegistrationJob, out: RegistrationOutputs, show: bool):
    """The grid transform (fixed -> moving) with the metrics as an attribute and the deformation grid shown."""
    g = job.fixed.geometry
    transform = grid_transform_node_from_field(scene, out.result.field, g, "", node=node)
    transform.SetAttribute(METRICS_ATTRIBUTE, json.dumps(out.metrics))
    transform.SetAttribute("DeepLungReg.Method", job.method)
    if transform.GetDisplayNode() is None:
        transform.CreateDefaultDisplayNodes()
    td = transform.GetDisplayNode()
    # Slicer's own grid would cover each view's whole field of view, background included: it stays off
    # (the Transforms module can still show it) and the grid models draw the grid over the fixed volume.
    td.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
    td.SetGridSpacingMm(grid_spacing_mm(g))
    td.SetVisibility(False)
    show_deformation_grid(scene, transform, out.result.field, g, visible=show)
    return transform


def _copy_display(source_node, node) -> None:
    """Show ``node`` with ``source_node``'s window, level and colours."""
    sd, d = source_node.GetDisplayNode(), node.GetDisplayNode()
    if sd is not None and d is not None:
        d.AutoWindowLevelOff()
        d.SetWindowLevel(sd.GetWindow(), sd.GetLevel())
        if sd.GetColorNodeID():
            d.SetAndObserveColorNodeID(sd.GetColorNodeID())


def _map_nodes(scene, out: RegistrationOutputs, jacobian_node, ventilation_node, ventilation_hu_node):
    """The Jacobian, ventilation and HU ventilation volumes, in diverging colours centred on no change
    (``None`` for a map that ``out`` lacks, e.g. read back from a folder without it)."""
    nodes = []
    for image, node, centre, title in ((out.jacobian, jacobian_node, 1.0, "Jacobian"), (out.ventilation, ventilation_node, 0.0, "J - 1"),
                                       (out.ventilation_hu, ventilation_hu_node, 0.0, "HU ventilation")):
        if image is None:
            nodes.append(None)
            continue
        lung = out.fixed_mask.array if out.fixed_mask is not None else np.ones(image.array.shape, bool)
        nodes.append(volume_node_from_image(scene, image, "", node=node))
        _show_map(scene, nodes[-1], centre, _half_width(image.array[lung], centre, 0.25), title)
    return tuple(nodes)


def _landmark_nodes(scene, job: RegistrationJob, out: RegistrationOutputs, transform, table_node, markups_node):
    """The TRE table and the moving landmarks under the transform, labelled and coloured by their error
    (the starting point of a :class:`~.review.LandmarkReview`); returns ``(table, markups, index of the worst landmark)``."""
    review = LandmarkReview(job.fixed_landmarks, job.moving_landmarks, out.result.field, job.fixed.geometry,
                            job.landmark_labels)
    worst = review.goto(review.order("tre")[0])  # the first look: the worst landmark is the current one
    table = review.show(scene, markups_node, table_node)
    markups_node.SetAndObserveTransformNodeID(transform.GetID())
    markups_node.SetAttribute("DeepLungReg.WorstLandmark", str(worst))
    return table, markups_node, worst
