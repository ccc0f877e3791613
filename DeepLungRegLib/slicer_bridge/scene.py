"""A bare MRML scene set up the way the Slicer application sets up its own.

Inside 3D Slicer use ``slicer.mrmlScene``; this is for headless scripts, the
tests and browser viewers built on ``slicer-core`` / ``trame-slicer``, where
no application object exists. It creates an application logic, the default
colour nodes, the module logics that MRML code relies on (volumes, markups,
transforms, tables, sequences, subject hierarchy; the application logic's
colour logic serves colours) and one slice logic per standard view
(Red, Yellow, Green), so slice composite nodes exist just as in Slicer.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

from ..errors import DeepLungRegError

#: Standard slice views: name -> orientation.
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


@dataclass
class HeadlessSlicer:
    """The scene and the logics a bare Python process needs.

    Attributes:
        scene: the ``vtkMRMLScene``.
        app_logic: ``vtkSlicerApplicationLogic`` bound to the scene.
        logics: module logics by name (``"volumes"``, ``"markups"``, ``"transforms"``, ...).
        slice_logics: ``vtkMRMLSliceLogic`` per view name (``"Red"``, ``"Yellow"``, ``"Green"``).
    """

    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)
    slice_logics: dict = field(default_factory=dict)

    def slice_node(self, view: str = "Red"):
        return self.slice_logics[view].GetSliceNode()

    def composite_node(self, view: str = "Red"):
        return self.slice_logics[view].GetSliceCompositeNode()


def new_scene(*, slice_views: dict[str, str] | None = None) -> HeadlessSlicer:
    """Create and initialise a scene as ``qSlicerCoreApplication`` does."""
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)

    logics: dict = {}

    def add(name: str, logic) -> None:
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name.lower()] = logic

    # Node classes that Slicer's loadable modules register when they start.
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    add("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
    add("Volumes", slicer.vtkSlicerVolumesLogic())
    add("Transforms", slicer.vtkSlicerTransformLogic())
    add("Markups", slicer.vtkSlicerMarkupsLogic())
    add("Tables", slicer.vtkSlicerTablesLogic())
    add("Sequences", slicer.vtkSlicerSequencesLogic())  # updates a sequence browser's proxy nodes as Slicer's does

    hs = HeadlessSlicer(scene, app_logic, logics)
    for name, orientation in (slice_views or SLICE_VIEWS).items():
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        node = logic.AddSliceNode(name)
        node.SetOrientation(orientation)
        app_logic.GetSliceLogics().AddItem(logic)
        hs.slice_logics[name] = logic
    return hs


def save_scene(hs: HeadlessSlicer, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save the scene with its data as a ``.mrb`` bundle or a ``.mrml`` file plus a ``Data/`` folder.

    Slicer opens either (drag and drop, or File > Add Data); the grid transform
    is stored as an ITK ``.h5`` transform, volumes as NRRD.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mrb", ".mrml"):
        raise DeepLungRegError(f"save_scene: {path} must end in .mrb or .mrml")
    if path.exists() and not overwrite:
        raise DeepLungRegError(f"save_scene: {path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mrml":
        folder = path.parent
        if not hs.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder)):
            raise DeepLungRegError(f"save_scene: Slicer could not write the scene into {folder}")
        written = folder / f"{folder.name}.mrml"
        if written != path:
            written.replace(path)
        return path
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / path.stem
        folder.mkdir()
        if not hs.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder)):
            raise DeepLungRegError(f"save_scene: Slicer could not write the scene for {path}")
        if path.exists():
            path.unlink()
        if not hs.app_logic.Zip(str(path), str(folder)):
            raise DeepLungRegError(f"save_scene: Slicer could not zip the scene into {path}")
    return path


def load_scene(hs: HeadlessSlicer, path: str | os.PathLike) -> None:
    """Load a ``.mrml`` or ``.mrb`` scene into ``hs.scene`` (replacing its content)."""
    path = Path(path)
    if not path.is_file():
        raise DeepLungRegError(f"load_scene: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".mrml":
        hs.scene.SetURL(str(path))
        if not hs.scene.Connect():
            raise DeepLungRegError(f"load_scene: Slicer could not read {path}")
    elif suffix == ".mrb":
        unpack = Path(tempfile.mkdtemp(prefix="deeplungreg-mrb-"))
        if not hs.app_logic.OpenSlicerDataBundle(str(path), str(unpack)):
            raise DeepLungRegError(f"load_scene: Slicer could not open the bundle {path}")
    else:
        raise DeepLungRegError(f"load_scene: {path} must end in .mrb or .mrml")
