"""Offscreen pictures of Slicer slice views, without Qt.

:func:`render_slice_view` draws what a Slicer slice view shows (the slice
logic's blended background/foreground layers, plus the displayable managers
for models (the deformation grid), transforms, markups and colour legends) into an
offscreen VTK render window (EGL or OSMesa/llvmpipe on a machine without a
display) and returns the pixels. The tests and the README pictures use it; in
Slicer itself the application's views do this.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import DeepLungRegError
from ..geometry.grid import lps_to_ras
from .scene import HeadlessSlicer

#: Displayable managers drawn in the pictures.
DISPLAYABLE_MANAGERS = (
    "vtkMRMLTransformsDisplayableManager2D",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLMarkupsDisplayableManager",
    "vtkMRMLColorLegendDisplayableManager",
)


def render_slice_view(
    hs: HeadlessSlicer,
    view: str = "Red",
    *,
    size: tuple[int, int] = (512, 512),
    centre_lps: np.ndarray | None = None,
    fit: bool = True,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Render one slice view offscreen.

    Args:
        hs: a scene from :func:`~DeepLungRegLib.slicer_bridge.scene.new_scene`.
        view: slice view name (``"Red"``, ``"Yellow"``, ``"Green"``).
        size: picture ``(width, height)`` in pixels.
        centre_lps: move the slice through this LPS point (default: keep).
        fit: fit the field of view to the background volume first.
        path: also write the picture as PNG here.

    Returns:
        ``(height, width, 3)`` uint8 RGB, top row first.
    """
    if view not in hs.slice_logics:
        raise DeepLungRegError(f"render_slice_view: no slice view {view!r}; known: {', '.join(hs.slice_logics)}")
    logic = hs.slice_logics[view]
    slice_node = logic.GetSliceNode()
    w, h = (int(v) for v in size)
    if w < 16 or h < 16 or w > 8192 or h > 8192:
        raise DeepLungRegError(f"render_slice_view: size {size} must be between 16 and 8192 pixels")

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(w, h)
    renderer = vtk.vtkRenderer()
    renderer.GetActiveCamera().ParallelProjectionOn()
    renderer.SetBackground(0, 0, 0)
    window.AddRenderer(renderer)
    window.SetNumberOfLayers(3)  # displayable managers (e.g. colour legends) may draw in layers above
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)

    logic.ResizeSliceNode(w, h)
    if fit:
        logic.FitSliceToBackground()
    if centre_lps is not None:
        r, a, s = lps_to_ras(np.asarray(centre_lps, dtype=float)[None])[0]
        slice_node.JumpSliceByOffsetting(r, a, s)
    logic.SnapSliceOffsetToIJK()

    # The blended slice image (what Slicer's CTK light-box manager draws).
    mapper = vtk.vtkImageMapper()
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(hs.app_logic)
    for name in DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(slice_node)
    # In Slicer the views exist before the data; here the view is new, and the colour-legend
    # manager only picks up legend nodes it sees being added, so announce the existing ones.
    scene = hs.scene
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode")):
        scene.InvokeEvent(slicer.vtkMRMLScene.NodeAddedEvent, scene.GetNthNodeByClass(i, "vtkMRMLColorLegendDisplayNode"))
    logic.GetImageDataConnection().GetProducer().Update()
    group.RequestRender()
    window.Render()

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    img = grab.GetOutput()
    dims = img.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[1], dims[0], -1)[::-1, :, :3].copy()
    group.SetMRMLDisplayableNode(None)
    window.Finalize()
    if path is not None:
        write_png(rgb, path)
    return rgb


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``(H, W, 3)`` uint8 pixels as PNG through VTK."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[::-1])
    img = vtk.vtkImageData()
    img.SetDimensions(rgb.shape[1], rgb.shape[0], 1)
    arr = numpy_support.numpy_to_vtk(rgb.reshape(-1, 3), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    img.GetPointData().SetScalars(arr)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(img)
    writer.Write()
    return path


def montage(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures of equal height side by side, separated by a dark gap."""
    if not pictures:
        raise DeepLungRegError("montage: no pictures")
    h = pictures[0].shape[0]
    if any(p.shape[0] != h for p in pictures):
        raise DeepLungRegError("montage: pictures differ in height")
    sep = np.full((h, gap, 3), 30, np.uint8)
    parts = []
    for i, p in enumerate(pictures):
        parts += ([sep] if i else []) + [p]
    return np.concatenate(parts, axis=1)
