"""MRML node <-> library data conversions.

This is one of the two places where RAS exists (the other is
:mod:`DeepLungRegLib.geometry.grid`'s ``lps_to_ras``/``ras_to_lps``, which
it uses). Everything returned to the library is LPS, ``(z, y, x)`` arrays and
fields in the resampling direction; everything handed to MRML is RAS.

Only classes that the ``slicer-core`` wheel provides are used, so the same
code runs inside 3D Slicer and in a bare Python scene (see :mod:`.scene`).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..geometry.grid import LPS_TO_RAS, lps_to_ras, ras_to_lps
from ..io.images import Image

#: 4x4 homogeneous LPS <-> RAS flip (its own inverse).
LPS_TO_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def _matrix_to_array(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _array_to_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def _world_matrix(node) -> np.ndarray | None:
    """The linear parent-to-world matrix (RAS) of ``node``, ``None`` when it has no parent transform.

    Raises :class:`DeepLungRegError` when the parent transform is non-linear.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return None
    if not parent.IsTransformToWorldLinear():
        raise DeepLungRegError(
            f"{node.GetName()!r} is under the non-linear transform {parent.GetName()!r}; harden it first "
            "(Transforms module, 'Harden transform') or take it out of the transform")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _matrix_to_array(m)


# ---------------------------------------------------------------- volumes
def ijk_to_ras_matrix(geometry: Geometry) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a :class:`Geometry` (oblique directions kept)."""
    return LPS_TO_RAS_4 @ geometry.index_to_world_matrix


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray, size_xyz) -> Geometry:
    """The LPS :class:`Geometry` of a volume with this IJK-to-RAS matrix and ``(x, y, z)`` size."""
    m = LPS_TO_RAS_4 @ np.asarray(ijk_to_ras, dtype=float)
    a = m[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(a)):
        raise DeepLungRegError(f"geometry_from_ijk_to_ras: degenerate IJK-to-RAS matrix {ijk_to_ras.tolist()}")
    direction = a / spacing
    return Geometry(tuple(int(s) for s in size_xyz), tuple(spacing), tuple(m[:3, 3]), tuple(direction.ravel()))


def geometry_from_volume_node(node) -> Geometry:
    """The LPS grid of a volume node, including a linear parent transform if it has one."""
    _check_volume_node(node, "geometry_from_volume_node")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _matrix_to_array(m)
    world = _world_matrix(node)
    if world is not None:
        ijk_to_ras = world @ ijk_to_ras
    return geometry_from_ijk_to_ras(ijk_to_ras, node.GetImageData().GetDimensions())


def _check_volume_node(node, owner: str) -> None:
    if node is None:
        raise DeepLungRegError(f"{owner}: no volume node given")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise DeepLungRegError(f"{owner}: {node.GetName()!r} is a {node.GetClassName()}, not a scalar volume")
    img = node.GetImageData()
    if img is None or img.GetNumberOfPoints() == 0:
        raise DeepLungRegError(f"{owner}: volume {node.GetName()!r} has no voxels")
    if img.GetNumberOfScalarComponents() != 1:
        raise DeepLungRegError(f"{owner}: volume {node.GetName()!r} has {img.GetNumberOfScalarComponents()} components; a scalar volume is needed")


def image_from_volume_node(node) -> Image:
    """A copy of a scalar volume node as an :class:`Image` (``(Z, Y, X)`` array, LPS geometry)."""
    _check_volume_node(node, "image_from_volume_node")
    geometry = geometry_from_volume_node(node)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    if array.ndim != 3:
        raise DeepLungRegError(f"image_from_volume_node: {node.GetName()!r} is not a 3D volume (array shape {array.shape})")
    return Image(array, geometry)


#: Segments whose name contains this (any case) are the lung when no segment is named: Lung CT
#: Segmenter's "right lung"/"left lung", TotalSegmentator's "lung_upper_lobe_left" and the like.
LUNG_SEGMENT_WORD = "lung"


def segment_names(segmentation_node) -> dict[str, str]:
    """``{segment ID: segment name}`` of a segmentation node, in its order."""
    seg = segmentation_node.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    return {i: seg.GetSegment(i).GetName() for i in ids}


def mask_from_segmentation(segmentation_node, reference_volume_node, segments=None) -> Image:
    """A mask (bool :class:`Image` on the reference volume's grid) from segments of a Segmentation node.

    Args:
        segments: segment names or IDs (any case), one or several, united; ``None``: every segment
            whose name contains "lung".
    """
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise DeepLungRegError("mask_from_segmentation: give a segmentation node")
    names = segment_names(segmentation_node)
    listing = ", ".join(repr(n) for n in names.values()) or "none"
    if segments is None:
        chosen = [i for i, n in names.items() if LUNG_SEGMENT_WORD in n.lower()]
        if not chosen:
            raise DeepLungRegError(f"{segmentation_node.GetName()!r} has no segment named like a lung (its segments: {listing}); "
                                   "choose the lung segments")
    else:
        wanted = [segments] if isinstance(segments, str) else list(segments)
        by_key = {k.lower(): i for i, n in names.items() for k in (i, n)}
        unknown = [w for w in wanted if w.lower() not in by_key]
        if unknown or not wanted:
            raise DeepLungRegError(f"{segmentation_node.GetName()!r} has no segment {', '.join(map(repr, unknown)) or 'chosen'} "
                                   f"(its segments: {listing})")
        chosen = list(dict.fromkeys(by_key[w.lower()] for w in wanted))
    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    for i in chosen:
        ids.InsertNextValue(i)
    tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__DeepLungReg mask__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, tmp, reference_volume_node):
            raise DeepLungRegError(f"the segments of {segmentation_node.GetName()!r} could not be turned into a mask")
        mask = image_from_volume_node(tmp)
    finally:
        display = tmp.GetDisplayNode()
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(tmp)
    if not mask.array.any():
        raise DeepLungRegError(f"the chosen segments of {segmentation_node.GetName()!r} are empty")
    return mask.with_array(mask.array > 0)


def update_volume_node(node, image: Image | np.ndarray, geometry: Geometry | None = None):
    """Write an image (array ``(Z, Y, X)`` + geometry) into an existing volume node; returns the node."""
    if isinstance(image, Image):
        array, geometry = image.array, image.geometry
    else:
        array = np.asarray(image)
        if geometry is None:
            raise DeepLungRegError("update_volume_node: give a geometry with a bare array")
        Image(array, geometry)  # checks the shape
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    node.SetIJKToRASMatrix(_array_to_matrix(ijk_to_ras_matrix(geometry)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


def volume_node_from_image(scene, image: Image, name: str, *, node=None, labelmap: bool = False):
    """Create (or fill ``node``) a scalar or labelmap volume node from an :class:`Image`."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    update_volume_node(node, image)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# ------------------------------------------------------------- transforms
def grid_transform_from_field(field: np.ndarray, geometry: Geometry) -> vtk.vtkTransform:
    """A ``vtkOrientedGridTransform`` (RAS) that maps ``x`` to ``x + u(x)``.

    Args:
        field: ``(Z, Y, X, 3)`` displacement in mm along LPS, on ``geometry``,
            resampling direction (``x_moving = x_fixed + u(x_fixed)``).
    """
    field = np.asarray(field)
    if field.shape != (*geometry.shape, 3):
        raise DeepLungRegError(f"grid_transform_from_field: field shape {field.shape} does not match grid {geometry.shape} + (3,)")
    if not np.all(np.isfinite(field)):
        raise DeepLungRegError("grid_transform_from_field: the field holds NaN or infinite values")
    # one float32 copy, flipped in place (LPS_TO_RAS is diagonal): no float64 product beside it (a phase's field
    # of 512 x 512 x 150 voxels is 0.5 GB in float32)
    disp_ras = np.array(field.reshape(-1, 3), dtype=np.float32, order="C", copy=True)
    disp_ras *= np.diag(LPS_TO_RAS).astype(np.float32)
    img = vtk.vtkImageData()
    img.SetDimensions(*geometry.size)
    img.SetSpacing(*geometry.spacing)
    img.SetOrigin(*lps_to_ras(np.asarray(geometry.origin)[None])[0])
    arr = numpy_support.numpy_to_vtk(disp_ras, deep=True, array_type=vtk.VTK_FLOAT)
    arr.SetNumberOfComponents(3)
    img.GetPointData().SetScalars(arr)
    direction = np.eye(4)
    direction[:3, :3] = LPS_TO_RAS @ geometry.direction_matrix
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(img)
    grid.SetGridDirectionMatrix(_array_to_matrix(direction))
    grid.SetInterpolationModeToLinear()
    return grid


def grid_transform_node_from_field(scene, field: np.ndarray, geometry: Geometry, name: str, *, node=None):
    """Create (or fill ``node``) a ``vtkMRMLGridTransformNode`` holding ``field``.

    The transform is stored "from parent" (the resampling direction, like ITK
    and elastix): applied to the moving volume, Slicer shows it in the fixed frame.
    """
    grid = grid_transform_from_field(field, geometry)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(grid)
    return node


def field_from_grid_transform_node(node) -> tuple[np.ndarray, Geometry]:
    """The ``(Z, Y, X, 3)`` LPS field (resampling direction) and grid of a grid transform node."""
    if node is None or not node.IsA("vtkMRMLTransformNode"):
        raise DeepLungRegError("field_from_grid_transform_node: not a transform node")
    grid = node.GetTransformFromParentAs("vtkOrientedGridTransform", False)
    if grid is None:
        raise DeepLungRegError(f"field_from_grid_transform_node: {node.GetName()!r} holds no displacement grid "
                               "in the from-parent direction")
    img = grid.GetDisplacementGrid()
    if img is None:
        raise DeepLungRegError(f"field_from_grid_transform_node: {node.GetName()!r} has an empty displacement grid")
    dm = vtk.vtkMatrix4x4()
    if grid.GetGridDirectionMatrix() is not None:
        dm.DeepCopy(grid.GetGridDirectionMatrix())
    direction_ras = _matrix_to_array(dm)[:3, :3]
    direction = LPS_TO_RAS @ direction_ras
    dims = img.GetDimensions()
    geometry = Geometry(tuple(dims), tuple(img.GetSpacing()), tuple(ras_to_lps(np.asarray(img.GetOrigin())[None])[0]),
                        tuple(direction.ravel()))
    disp = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(-1, 3).astype(np.float64)
    scale = grid.GetDisplacementScale()
    shift = grid.GetDisplacementShift()
    disp = disp * scale + shift
    field = (disp @ LPS_TO_RAS.T).reshape(*geometry.shape, 3).astype(np.float32)
    return field, geometry


# ---------------------------------------------------------------- markups
def landmarks_from_markups(node, *, world: bool = True) -> np.ndarray:
    """Control points of a markups node as ``(N, 3)`` LPS mm (world positions by default)."""
    if node is None or not node.IsA("vtkMRMLMarkupsNode"):
        raise DeepLungRegError("landmarks_from_markups: not a markups node")
    if node.GetNumberOfControlPoints() == 0:
        raise DeepLungRegError(f"landmarks_from_markups: {node.GetName()!r} has no control points")
    ras = slicer.util.arrayFromMarkupsControlPoints(node, world=world)
    return ras_to_lps(ras)


def markups_labels(node) -> list[str]:
    """The control-point labels of a markups node."""
    return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]


def markups_from_landmarks(scene, points_lps: np.ndarray, name: str, *, labels: list[str] | None = None, node=None):
    """Create (or refill ``node``) a point-list markups node from ``(N, 3)`` LPS points."""
    points_lps = np.asarray(points_lps, dtype=float)
    if points_lps.ndim != 2 or points_lps.shape[1] != 3:
        raise DeepLungRegError(f"markups_from_landmarks: points must be (N, 3), got {points_lps.shape}")
    if labels is not None and len(labels) != len(points_lps):
        raise DeepLungRegError(f"markups_from_landmarks: {len(labels)} labels for {len(points_lps)} points")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
    slicer.util.updateMarkupsControlPointsFromArray(node, lps_to_ras(points_lps))
    if labels is not None:
        for i, label in enumerate(labels):
            node.SetNthControlPointLabel(i, str(label))
    return node


# ------------------------------------------------------------------ tables
def table_node_from_columns(scene, columns: dict[str, np.ndarray | list], name: str, *, node=None):
    """Create (or refill ``node``) a table node; each value is one column (numbers or strings)."""
    if not columns:
        raise DeepLungRegError("table_node_from_columns: no columns")
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise DeepLungRegError(f"table_node_from_columns: columns differ in length: {lengths}")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    wasModified = node.StartModify()
    try:
        node.RemoveAllColumns()
        for key, values in columns.items():
            values = list(values)
            if values and isinstance(values[0], str):
                col = vtk.vtkStringArray()
                for v in values:
                    col.InsertNextValue(v)
            else:
                col = numpy_support.numpy_to_vtk(np.asarray(values, dtype=np.float64), deep=True)
            col.SetName(key)
            table.AddColumn(col)
        table.Modified()
    finally:
        node.EndModify(wasModified)
    return node


def columns_from_table_node(node) -> dict[str, list]:
    """The columns of a table node as lists (numbers stay numbers)."""
    table = node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        if isinstance(col, vtk.vtkStringArray):
            out[col.GetName()] = [col.GetValue(i) for i in range(col.GetNumberOfValues())]
        else:
            out[col.GetName()] = numpy_support.vtk_to_numpy(col).tolist()
    return out
