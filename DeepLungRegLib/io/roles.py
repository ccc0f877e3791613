"""The output roles of a registration: one table that the files, the nodes and both GUIs' menus derive from.

A role is one thing a registration gives the user: the displacement field (as a transform), the warped
moving image, a map (Jacobian, ventilation, HU ventilation), the warped landmarks, the TRE table. Each
row says which file ``deeplungreg register`` writes for it, which MRML node class holds it in Slicer
(and in the review page), which parameter-node field of the Slicer module may name its node, and how
a GUI offers it as an overlay (menu label, button, colour map centre and legend).

Derived views (kept in step by Testing/pytest/test_output_roles.py):

* ``pipeline.IMAGE_OUTPUTS``: the image files (:func:`image_files`);
* ``slicer_bridge.workflow.OUTPUT_CLASSES``: the node classes (:func:`node_classes`);
* the Slicer module's output selectors and Results buttons (:attr:`OutputRole.parameter`, :attr:`OutputRole.button`);
* the review page's overlay menu (:func:`overlays`).

Adding an output is a row here, its computation in ``pipeline._run_job`` and its field in
``pipeline.RegistrationOutputs``; a node-selectable one also needs its parameter-node field and
selector in the Slicer module's ``.ui`` (which the module declares at import, before the library loads).

Imports only the standard library (no torch): the Slicer module reads it before torch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Kinds of role: what the output is.
KINDS = ("field", "image", "map", "points", "table")


@dataclass(frozen=True)
class OutputRole:
    """One output role.

    Attributes:
        name: the role (``RegistrationOutputs`` field and node attribute ``DeepLungReg.Role``).
        kind: one of :data:`KINDS`; ``"map"`` is a scalar image on the fixed grid shown in diverging colours.
        file: the file ``deeplungreg register`` writes, or ``None`` (only in ``metrics.json``).
        node_class: the MRML node class holding it.
        node_name: what its node is called after ``"<moving>-to-<fixed> "``.
        parameter: the Slicer module's parameter-node field that may name its node (``None``: always made by us).
        label: the overlay menu's label (``None``: not an overlay); the module translates it.
        button: the Slicer module's Results button that shows it (``None``: no button).
        centre: a map's value of no change (the centre of the diverging colour map); ``None`` for a map that
            only grows from 0 (the uncertainty): sequential colours from 0.
        legend: a map's colour legend title.
    """

    name: str
    kind: str
    file: str | None
    node_class: str
    node_name: str
    parameter: str | None = None
    label: str | None = None
    button: str | None = None
    centre: float | None = None
    legend: str | None = None

    @property
    def is_image(self) -> bool:
        """An image on the fixed grid (written as a NIfTI file, held in a scalar volume node)."""
        return self.kind in ("image", "map")


#: Every output role, in the order the GUIs list them.
OUTPUT_ROLES: tuple[OutputRole, ...] = (
    OutputRole("transform", "field", "displacement.nii.gz", "vtkMRMLGridTransformNode", "transform", "outputTransform"),
    OutputRole("warped", "image", "warped.nii.gz", "vtkMRMLScalarVolumeNode", "warped", "outputWarped",
               "Warped moving image", "showWarpedButton"),
    OutputRole("jacobian", "map", "jacobian.nii.gz", "vtkMRMLScalarVolumeNode", "Jacobian", "outputJacobian",
               "Jacobian determinant", "showJacobianButton", 1.0, "Jacobian"),
    OutputRole("ventilation", "map", "ventilation.nii.gz", "vtkMRMLScalarVolumeNode", "ventilation", "outputVentilation",
               "Ventilation (J - 1)", "showVentilationButton", 0.0, "J - 1"),
    OutputRole("ventilation_hu", "map", "ventilation_hu.nii.gz", "vtkMRMLScalarVolumeNode", "HU ventilation",
               "outputVentilationHU", "HU ventilation", "showVentilationHUButton", 0.0, "HU ventilation"),
    OutputRole("uncertainty", "map", "uncertainty.nii.gz", "vtkMRMLScalarVolumeNode", "uncertainty", "outputUncertainty",
               "Uncertainty (mm)", "showUncertaintyButton", None, "uncertainty (mm)"),
    OutputRole("landmarks", "points", None, "vtkMRMLMarkupsFiducialNode", "warped landmarks"),
    OutputRole("tre_table", "table", None, "vtkMRMLTableNode", "TRE"),
)

#: The roles by name.
ROLES: dict[str, OutputRole] = {r.name: r for r in OUTPUT_ROLES}


def image_files() -> dict[str, str]:
    """Image role -> the file ``register`` writes (the warped image and the maps)."""
    return {r.name: r.file for r in OUTPUT_ROLES if r.is_image}


def node_classes() -> dict[str, str]:
    """Role -> MRML node class."""
    return {r.name: r.node_class for r in OUTPUT_ROLES}


def maps() -> tuple[OutputRole, ...]:
    """The map roles (diverging colours centred on no change, a colour legend)."""
    return tuple(r for r in OUTPUT_ROLES if r.kind == "map")


def overlays() -> dict[str, str]:
    """Role -> overlay menu label, for the roles a GUI shows over the fixed volume."""
    return {r.name: r.label for r in OUTPUT_ROLES if r.label}


def selectable() -> dict[str, str]:
    """Role -> the Slicer module's parameter-node field that may name its output node."""
    return {r.name: r.parameter for r in OUTPUT_ROLES if r.parameter}
