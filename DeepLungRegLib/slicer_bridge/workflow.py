"""The registration job on MRML nodes: what the Slicer module's Apply does.

:func:`job_from_nodes` makes a :class:`~DeepLungRegLib.pipeline.RegistrationJob` of the
input nodes (a :class:`~.selection.RegistrationNodes`); :func:`register_nodes` computes it
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
nodes never: passing an input as an output is an error. The roles, their node classes and node
names come from the one table of output roles (:mod:`DeepLungRegLib.io.roles`).

The result (:class:`NodeRegistration`) carries the landmark review built from the field in memory,
so nothing reads the field back out of the transform node.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import slicer

from ..errors import DeepLungRegError
from ..evaluation.review import LandmarkReview
from ..geometry.grid import ras_to_lps
from ..io.roles import ROLES, maps, node_classes
from ..io.landmarks import check_pairing
from ..pipeline import DEFAULT_METHOD, RegistrationJob, RegistrationOutputs, compute_outputs, summary_lines
from ..transforms.warp import sample_map_at_points
from .grid import grid_spacing_mm, jump_to_point, show_deformation_grid
from .nodes import (
    grid_transform_node_from_field, image_from_volume_node, landmarks_from_markups, mask_from_segmentation,
    markups_labels, volume_node_from_image,
)
from .review import show_review
from .selection import RegistrationNodes

log = logging.getLogger(__name__)

#: Node attribute naming the output role; its presence marks a node as DeepLungReg's own.
ROLE_ATTRIBUTE = "DeepLungReg.Role"
#: Node attribute with the metrics JSON (on the transform node).
METRICS_ATTRIBUTE = "DeepLungReg.Metrics"
#: Node reference roles pointing from each output to the inputs it came from.
FIXED_REFERENCE, MOVING_REFERENCE = "DeepLungRegFixed", "DeepLungRegMoving"
#: Output roles and their node classes (from :mod:`DeepLungRegLib.io.roles`).
OUTPUT_CLASSES = node_classes()
#: Name of the shared diverging colour table.
DIVERGING_COLOR_NAME = "DeepLungReg Diverging"
#: Name of the shared sequential colour table (maps that grow from 0: the uncertainty).
SEQUENTIAL_COLOR_NAME = "DeepLungReg Sequential"


@dataclass
class NodeRegistration:
    """What :func:`register_nodes` created or updated.

    Attributes:
        by_role: the output nodes by role (:data:`DeepLungRegLib.io.roles.OUTPUT_ROLES`); a role whose output
            the run lacks (landmarks without landmarks, HU ventilation without CT and a lung mask) is absent.
            Each is also an attribute: ``transform`` (``vtkMRMLGridTransformNode``, fixed -> moving, resampling
            direction), ``warped``, ``jacobian``, ``ventilation``, ``ventilation_hu``, ``landmarks`` (the moving
            landmarks under ``transform``), ``tre_table``; ``None`` when absent.
        metrics: the metrics dict (also in the transform's ``DeepLungReg.Metrics`` attribute).
        summary: a few human-readable lines, with a warning when the field folds.
        worst_landmark: index of the landmark with the largest TRE after registration.
        outputs: the in-memory library outputs.
        review: the landmark review of this registration (on the field in memory), ``None`` without landmarks.
    """

    by_role: dict
    metrics: dict
    summary: str
    worst_landmark: int | None = None
    outputs: RegistrationOutputs | None = field(default=None, repr=False)
    review: LandmarkReview | None = field(default=None, repr=False)

    def __getattr__(self, name: str):
        if name in ROLES:
            return self.__dict__.get("by_role", {}).get(name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def nodes(self) -> dict[str, object]:
        """The created nodes by role (``None`` roles left out)."""
        return {k: v for k, v in self.by_role.items() if v is not None}


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


def _output_node(scene, role: str, name: str, nodes: RegistrationNodes):
    """The node to write ``role`` into: the one the user gave (see :meth:`RegistrationNodes.check`), an earlier
    own output, or a new one."""
    fixed_node, moving_node = nodes.fixed, nodes.moving
    node = nodes.output(role) or find_output(scene, role, fixed_node, moving_node)
    if node is None:
        node = scene.AddNewNodeByClass(OUTPUT_CLASSES[role], scene.GenerateUniqueName(name))
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetNodeReferenceID(FIXED_REFERENCE, fixed_node.GetID())
    node.SetNodeReferenceID(MOVING_REFERENCE, moving_node.GetID())
    return node


def _shared_color_node(scene, name: str, colour_at) -> object:
    """The colour table ``name`` of 256 colours ``colour_at(t)`` (``t`` from 0 to 1, RGB), created once per scene."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName() == name:
            return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    node.GetLookupTable().SetTableRange(0, 255)
    for i in range(256):
        node.SetColor(i, f"{i}", *colour_at(i / 255.0), 1.0)
    node.SetAttribute("Category", "DeepLungReg")
    scene.AddNode(node)
    return node


def diverging_color_node(scene):
    """The shared blue-white-red colour table (white at its centre), created once per scene."""
    blue, white, red = np.array([0.13, 0.3, 0.7]), np.ones(3), np.array([0.75, 0.12, 0.12])
    return _shared_color_node(scene, DIVERGING_COLOR_NAME, lambda t: blue + (white - blue) * (t / 0.5) if t <= 0.5
                              else white + (red - white) * ((t - 0.5) / 0.5))


def sequential_color_node(scene):
    """The shared white-yellow-red colour table for maps that grow from 0 (the uncertainty), created once per scene."""
    stops = np.array([[1.0, 1.0, 1.0], [1.0, 0.85, 0.2], [0.85, 0.2, 0.1], [0.35, 0.0, 0.1]])

    def colour_at(t: float):
        k = min(int(3.0 * t), 2)
        return stops[k] + (stops[k + 1] - stops[k]) * (3.0 * t - k)

    return _shared_color_node(scene, SEQUENTIAL_COLOR_NAME, colour_at)


def _show_map(scene, node, centre: float | None, half_width: float, title: str) -> None:
    """Diverging colours centred on ``centre`` (``None``: sequential colours from 0 to ``half_width``), a fixed
    window and a colour legend (hidden until shown)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    d = node.GetDisplayNode()
    d.SetAndObserveColorNodeID((diverging_color_node(scene) if centre is not None else sequential_color_node(scene)).GetID())
    d.AutoWindowLevelOff()
    if centre is None:
        d.SetWindowLevel(half_width, 0.5 * half_width)
    else:
        d.SetWindowLevel(2.0 * half_width, centre)
    d.SetInterpolate(False)
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText(title)
        legend.SetVisibility(False)


def _half_width(values: np.ndarray, centre: float | None, floor: float) -> float:
    """The window's half width around ``centre`` (``None``: its width from 0) covering the 1st to 99th percentile."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return floor
    lo, hi = np.percentile(v, [1, 99])
    return float(max(floor, hi)) if centre is None else float(max(floor, abs(lo - centre), abs(hi - centre)))


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
        if owner is not None and owner.GetAttribute(ROLE_ATTRIBUTE) in {r.name for r in maps()}:
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
def job_from_nodes(nodes: RegistrationNodes, method: str = DEFAULT_METHOD, *, options: dict | None = None,
                   device: str = "auto") -> RegistrationJob:
    """The :class:`~DeepLungRegLib.pipeline.RegistrationJob` of the chosen nodes (checked as any job is).

    Args:
        nodes: the input and output nodes (:class:`~.selection.RegistrationNodes`).
        method: a registered method.
        options: method options (see ``deeplungreg methods --options``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    nodes.check()
    fl = None if nodes.fixed_landmarks is None else landmarks_from_markups(nodes.fixed_landmarks)
    ml = None if nodes.moving_landmarks is None else landmarks_from_markups(nodes.moving_landmarks)
    check_pairing(fl, ml, "register", tuple(repr(n.GetName()) if n is not None else what for n, what in
                                          ((nodes.fixed_landmarks, "fixed landmarks"), (nodes.moving_landmarks, "moving landmarks"))))
    labels = None if fl is None else markups_labels(nodes.fixed_landmarks)

    def mask(spec, segments, image_node):
        if spec is None or isinstance(spec, str):
            return spec
        if spec.IsA("vtkMRMLSegmentationNode"):
            return mask_from_segmentation(spec, image_node, segments)
        return image_from_volume_node(spec)

    return RegistrationJob(image_from_volume_node(nodes.fixed), image_from_volume_node(nodes.moving), method,
                           mask(nodes.fixed_mask, nodes.fixed_mask_segments, nodes.fixed),
                           mask(nodes.moving_mask, nodes.moving_mask_segments, nodes.moving),
                           fl, ml, labels, options, device)


def register_nodes(scene, nodes: RegistrationNodes, method: str = DEFAULT_METHOD, *, options: dict | None = None,
                   device: str = "auto", progress: Callable[[str, float], None] | None = None,
                   cancel: Callable[[], bool] | None = None, show: bool = True) -> NodeRegistration:
    """Register the chosen volume nodes (see :func:`job_from_nodes`) and write the results into output nodes.

    >>> res = register_nodes(slicer.mrmlScene, RegistrationNodes(fixed, moving), method="embed")

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer).
        nodes: the inputs, and output nodes by role (:class:`~.selection.RegistrationNodes`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: ``progress(stage, fraction)``.
        cancel: returns True to stop (raises :class:`~DeepLungRegLib.errors.RegistrationCancelled`).
        show: show the warped overlay, the deformation grid and fit the slice views.
    """
    job = job_from_nodes(nodes, method, options=options, device=device)
    out = compute_outputs(job, progress=progress, cancel=cancel)
    return write_nodes(scene, job, out, nodes, show=show)


def write_nodes(scene, job: RegistrationJob, out: RegistrationOutputs, nodes: RegistrationNodes, *,
                show: bool = True) -> NodeRegistration:
    """Write a job's outputs (computed here, or read back from a worker's folder) into output nodes, one per
    role of :data:`DeepLungRegLib.io.roles.OUTPUT_ROLES` that the outputs have."""
    nodes.check()
    fixed_node, moving_node = nodes.fixed, nodes.moving
    base = f"{moving_node.GetName()}-to-{fixed_node.GetName()}"

    def node_for(role: str):
        return _output_node(scene, role, f"{base} {ROLES[role].node_name}", nodes)

    made = {"transform": _transform_node(node_for("transform"), scene, job, out, show)}
    made["warped"] = volume_node_from_image(scene, out.warped, "", node=node_for("warped"))
    _copy_display(moving_node, made["warped"])
    for role in maps():
        image = getattr(out, role.name)
        if image is not None:
            made[role.name] = _map_node(scene, out, image, node_for(role.name), role.centre, role.legend)
    review = worst = None
    if job.fixed_landmarks is not None:
        unsure = None if out.uncertainty is None else sample_map_at_points(out.uncertainty.array, job.fixed.geometry,
                                                                             job.fixed_landmarks)
        review = LandmarkReview(job.fixed_landmarks, job.moving_landmarks, out.result.field, job.fixed.geometry,
                                job.landmark_labels, uncertainty=unsure)
        made["tre_table"], made["landmarks"], worst = _landmark_nodes(scene, review, made["transform"], node_for("tre_table"),
                                                                      node_for("landmarks"))
    if show:
        show_overlay(scene, fixed_node, made["warped"], 0.5)
    return NodeRegistration(made, out.metrics, summary_text(out.metrics), worst, out, review)


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


def _map_node(scene, out: RegistrationOutputs, image, node, centre: float | None, title: str):
    """A map volume in diverging colours centred on ``centre`` (its role's value of no change; ``None``: sequential
    from 0), windowed on the values inside the fixed lung mask, with a colour legend titled ``title``."""
    lung = out.fixed_mask.array if out.fixed_mask is not None else np.ones(image.array.shape, bool)
    node = volume_node_from_image(scene, image, "", node=node)
    _show_map(scene, node, centre, _half_width(image.array[lung], centre, 0.25), title)
    return node


def _landmark_nodes(scene, review: LandmarkReview, transform, table_node, markups_node):
    """The TRE table and the moving landmarks under the transform, labelled and coloured by their error
    (the review's first look: the worst landmark is the current one); returns ``(table, markups, index of the
    worst landmark)``."""
    worst = review.goto(review.order("tre")[0])
    table = show_review(scene, review, markups_node, table_node)
    markups_node.SetAndObserveTransformNodeID(transform.GetID())
    markups_node.SetAttribute("DeepLungReg.WorstLandmark", str(worst))
    return table, markups_node, worst
