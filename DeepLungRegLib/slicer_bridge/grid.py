"""The deformation grid over the fixed image only, and slice views fitted to the fixed volume.

Slicer's own 2D grid of a transform (``vtkMRMLTransformDisplayNode``, grid mode) samples the
transform over the whole field of view of a slice view, so it covers the black background around
the image too. Here the grid is a model per slice orientation instead, made once from the
displacement field and drawn by Slicer's model displayable manager where the slice cuts it:

* the surfaces ``{x : (x + u(x))_a = n * spacing}`` for the two RAS axes ``a`` that lie in the view's
  plane (R and A in an axial view), inside the fixed volume: a regular grid of the moving image,
  pulled back onto the fixed image by the same field that warps the image (resampling direction,
  ``x_moving = x_fixed + u(x_fixed)``), so the lines bend where the tissue moves;
* each model is shown in the slice views of its orientation only, and only over the fixed volume.

:func:`fit_slice_views` fits the slice views to the fixed volume (all of it in view, centred), at the
size each view has then; :func:`point_in_view` tells whether a point is in a view's field of view.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..geometry.grid import lps_to_ras

#: Slice orientation -> the RAS axes lying in its plane.
VIEW_AXES = {"Axial": (0, 1), "Sagittal": (1, 2), "Coronal": (0, 2)}
#: Role (``DeepLungReg.Role`` attribute) of the grid models, and the attribute naming their orientation.
GRID_ROLE = "grid"
GRID_VIEW_ATTRIBUTE = "DeepLungReg.GridView"
#: Node reference from each grid model to the transform it draws.
TRANSFORM_REFERENCE = "DeepLungRegTransform"
#: Samples of the field per grid spacing (the surfaces are contoured on this coarser grid).
SAMPLES_PER_LINE = 4
GRID_COLOR = (1.0, 0.85, 0.25)


def grid_spacing_mm(geometry: Geometry) -> float:
    """About 15 grid cells across the smallest extent of the fixed volume, 5 mm at least."""
    extent = np.asarray(geometry.size) * np.asarray(geometry.spacing)
    return float(max(5.0, round(float(np.min(extent)) / 15.0)))


def grid_surfaces(field: np.ndarray, geometry: Geometry, spacing_mm: float, axes: tuple[int, ...]) -> vtk.vtkPolyData:
    """The surfaces ``(x + u(x))_a = n * spacing_mm`` (RAS mm) for each RAS axis ``a`` in ``axes``, inside the volume.

    Args:
        field: ``(Z, Y, X, 3)`` displacement, LPS mm, on ``geometry`` (resampling direction).
        spacing_mm: distance between grid lines.
    """
    if field.shape != (*geometry.shape, 3):
        raise DeepLungRegError(f"grid_surfaces: field shape {field.shape} does not fit the grid {geometry.shape}")
    if not spacing_mm > 0:
        raise DeepLungRegError(f"grid_surfaces: spacing must be positive, got {spacing_mm}")
    steps = [max(1, int(round(spacing_mm / SAMPLES_PER_LINE / s))) for s in geometry.spacing]  # (i, j, k)
    si, sj, sk = steps
    u = np.asarray(field[::sk, ::sj, ::si], dtype=float)
    ks, js, is_ = (np.arange(0, n, s) for n, s in zip(geometry.shape, (sk, sj, si)))
    kk, jj, ii = np.meshgrid(ks, js, is_, indexing="ij")
    x = geometry.index_to_world(np.stack([ii, jj, kk], -1).reshape(-1, 3))
    phi = lps_to_ras(x + u.reshape(-1, 3)).reshape(u.shape)
    # sampled index (i', j', k') -> RAS
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.index_to_world_matrix @ np.diag([si, sj, sk, 1.0])
    append = vtk.vtkAppendPolyData()
    keep = []
    for a in axes:
        values = np.ascontiguousarray(phi[..., a], dtype=np.float32)
        image = vtk.vtkImageData()
        image.SetDimensions(values.shape[2], values.shape[1], values.shape[0])
        scalars = numpy_support.numpy_to_vtk(values.ravel(), deep=True)
        image.GetPointData().SetScalars(scalars)
        contour = vtk.vtkFlyingEdges3D()
        contour.SetInputData(image)
        contour.ComputeNormalsOff()
        contour.ComputeGradientsOff()
        contour.ComputeScalarsOff()
        levels = np.arange(np.ceil(values.min() / spacing_mm), np.floor(values.max() / spacing_mm) + 1) * spacing_mm
        for n, level in enumerate(levels):
            contour.SetValue(n, float(level))
        contour.Update()
        keep.append(contour)
        append.AddInputData(contour.GetOutput())
    append.Update()
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(ijk_to_ras.ravel().tolist())
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    to_ras = vtk.vtkTransformPolyDataFilter()
    to_ras.SetTransform(transform)
    to_ras.SetInputConnection(append.GetOutputPort())
    to_ras.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(to_ras.GetOutput())
    return out


def _slice_nodes(scene, orientation: str) -> list:
    nodes = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if node.GetOrientation() == orientation:
            nodes.append(node)
    return nodes


def grid_models(scene, transform_node) -> dict[str, object]:
    """The grid models drawing ``transform_node``, by orientation."""
    out = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLModelNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLModelNode")
        if node.GetAttribute("DeepLungReg.Role") == GRID_ROLE and node.GetNodeReferenceID(TRANSFORM_REFERENCE) == transform_node.GetID():
            out[node.GetAttribute(GRID_VIEW_ATTRIBUTE)] = node
    return out


def show_deformation_grid(scene, transform_node, field: np.ndarray, geometry: Geometry, *, spacing_mm: float | None = None,
                          visible: bool = True) -> dict[str, object]:
    """Make (or refill) the grid models of ``transform_node``, one per slice orientation that the scene
    has a view of, each shown in those views only; returns them by orientation."""
    spacing_mm = grid_spacing_mm(geometry) if spacing_mm is None else float(spacing_mm)
    existing = grid_models(scene, transform_node)
    out = {}
    for orientation, axes in VIEW_AXES.items():
        views = _slice_nodes(scene, orientation)
        if not views:
            continue
        node = existing.get(orientation)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(f"{transform_node.GetName()} grid {orientation.lower()}"))
            node.SetAttribute("DeepLungReg.Role", GRID_ROLE)
            node.SetAttribute(GRID_VIEW_ATTRIBUTE, orientation)
            node.SetNodeReferenceID(TRANSFORM_REFERENCE, transform_node.GetID())
            node.CreateDefaultDisplayNodes()
        node.SetAndObservePolyData(grid_surfaces(field, geometry, spacing_mm, axes))
        display = node.GetDisplayNode()
        display.SetColor(*GRID_COLOR)
        display.SetScalarVisibility(False)
        display.SetVisibility3D(False)
        display.SetVisibility2D(True)
        display.SetSliceIntersectionThickness(1)
        display.SetSliceIntersectionOpacity(0.8)
        display.RemoveAllViewNodeIDs()
        for view in views:
            display.AddViewNodeID(view.GetID())
        display.SetVisibility(bool(visible))
        out[orientation] = node
    transform_node.SetAttribute("DeepLungReg.GridSpacingMm", f"{spacing_mm:g}")
    return out


def set_grid_visible(scene, transform_node, visible: bool) -> None:
    """Show or hide the deformation grid of ``transform_node`` in the slice views."""
    if transform_node is None:
        return
    for node in grid_models(scene, transform_node).values():
        node.GetDisplayNode().SetVisibility(bool(visible))


# ----------------------------------------------------------------------- views
def _ras_to_xy(slice_node) -> np.ndarray:
    m = slice_node.GetXYToRAS()
    xy_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return np.linalg.inv(xy_to_ras)


def point_in_view(slice_node, point_ras) -> bool:
    """Whether ``point_ras`` projects into the slice view's field of view (to half a pixel)."""
    x, y = (_ras_to_xy(slice_node) @ np.append(np.asarray(point_ras, dtype=float), 1.0))[:2]
    w, h = slice_node.GetDimensions()[:2]
    return -0.5 <= x <= w + 0.5 and -0.5 <= y <= h + 0.5


def volume_corners_ras(volume_node) -> np.ndarray:
    """``(8, 3)`` RAS corners of a volume's voxel-centre box."""
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    return np.array([[bounds[0 + a], bounds[2 + b], bounds[4 + c]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])


def fit_slice_view(slice_logic, volume_node, size: tuple[int, int] | None = None) -> None:
    """Fit one slice view to ``volume_node``: all of it in view and centred, for a view of ``size``
    pixels (default: the size the view has now), the slice snapped to the volume's voxels."""
    node = slice_logic.GetSliceNode()
    if size is not None:
        slice_logic.ResizeSliceNode(int(size[0]), int(size[1]))
    w, h = node.GetDimensions()[:2]
    slice_logic.FitSliceToVolume(volume_node, max(int(w), 1), max(int(h), 1))
    slice_logic.SnapSliceOffsetToIJK()


def fit_slice_views(app_logic, volume_node) -> None:
    """Fit every slice view of the application logic to ``volume_node`` (see :func:`fit_slice_view`);
    call it once the views have their size."""
    if volume_node is None:
        return
    logics = app_logic.GetSliceLogics()
    for i in range(logics.GetNumberOfItems()):
        logic = logics.GetItemAsObject(i)
        if logic is not None and logic.GetSliceNode() is not None:
            fit_slice_view(logic, volume_node)


def jump_to_point(scene, point_lps: np.ndarray) -> None:
    """Move every slice view through an LPS point: the slice moves, the image stays where it is (the views
    keep their fit to the fixed volume, which has every landmark in view); a view shows the point at its
    centre only when it was outside the view (e.g. zoomed in elsewhere)."""
    r, a, s = lps_to_ras(np.asarray(point_lps, dtype=float)[None])[0]
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if point_in_view(node, (r, a, s)):
            node.JumpSliceByOffsetting(r, a, s)
        else:
            node.JumpSliceByCentering(r, a, s)
