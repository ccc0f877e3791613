"""DeepLungReg: lung CT/MRI registration for large inhale-to-exhale motion, inside 3D Slicer.

Four classes, as in Slicer's Extension Wizard template:

* :class:`DeepLungReg`: module metadata;
* :class:`DeepLungRegWidget`: binds the ``.ui`` to a typed parameter node and
  forwards Apply / Cancel / view buttons to the Logic (nothing else);
* :class:`DeepLungRegLogic`: the work, with an API for the Python console
  (``DeepLungRegLogic().register(RegistrationNodes(fixed, moving), method="convex")``);
* :class:`DeepLungRegTest`: builds its own simulated pair and checks the result.

The MRML work itself lives in ``DeepLungRegLib.slicer_bridge`` so that it is
tested outside Slicer with the ``slicer-core`` wheel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import sys
import tempfile
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer import (
    vtkMRMLGridTransformNode, vtkMRMLLabelMapVolumeNode, vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode, vtkMRMLSequenceNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addLibraryPath() -> None:
    """Make ``DeepLungRegLib`` importable when this folder is used from a source checkout.

    After a build or an install the library sits beside this file in
    qt-scripted-modules; in a source checkout added under "Additional module
    paths" it sits one folder up.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "DeepLungRegLib")):
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return


_addLibraryPath()

#: Python packages the library needs in Slicer besides what Slicer bundles (numpy, SimpleITK, VTK are
#: never replaced; tqdm is for the command line only). Import name -> pip requirement.
PIP_REQUIREMENTS = {"scipy": "scipy>=1.10"}
#: The torch versions the library supports, asked of the PyTorch extension.
TORCH_REQUIREMENT = ">=2.0"
#: Where the README (the user's guide) is.
README_URL = "https://github.com/DeepLungReg/SlicerDeepLungReg#readme"


def unmetRequirements(requirements) -> list:
    """The pip requirements (e.g. ``"scipy>=1.10"``) that this Python does not satisfy: not
    installed, or installed in a version outside the range (by name only where the
    ``packaging`` library is missing)."""
    import re
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:
        Requirement = None
    unmet = []
    for text in requirements:
        name = re.split(r"[<>=!~;\[ ]", text.strip(), maxsplit=1)[0]
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            unmet.append(text)
            continue
        if Requirement is not None:
            spec = Requirement(text).specifier
            if spec and not spec.contains(version, prereleases=True):
                unmet.append(text)
    return unmet


def torchLoadError() -> Optional[str]:
    """None when torch imports; otherwise what to tell the user. A torch build that does not fit the
    machine fails with OSError (a DLL on Windows) or RuntimeError, not only ImportError."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ("DeepLungReg needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, restart "
                "Slicer, then try again.")
    except (OSError, RuntimeError) as exc:
        return (f"PyTorch is installed but does not load on this computer ({type(exc).__name__}: {exc}). Reinstall it "
                "from Utilities > PyTorch, choosing the CPU build or the one that matches your GPU driver, then restart Slicer.")
    return None

#: The registered methods, for the method combo box. Listed here because the parameter node is
#: declared at import, before torch may be installed; Testing/pytest/test_module_static.py checks
#: that this matches DeepLungRegLib.methods.available_methods() and Resources/MethodTable.json.
METHOD_CHOICES = ["adam", "affine", "convex", "embed", "labeldriven", "lindef", "mlvirnet"]
DEVICE_CHOICES = ["auto", "cpu", "cuda"]
#: How each phase of a 4D-CT starts (DeepLungRegLib.sequence.run.STARTS): from scratch, or from its neighbour's result.
SEQUENCE_STARTS = ["reference", "neighbour"]
#: How often the panel asks a 4D-CT run in the background for its progress (ms).
SEQUENCE_POLL_MS = 250

#: Parameters that the widget writes itself, each from the widget named here (the parameter node
#: wrapper binds no table of editors and no segment selector).
PARAMETERS_SET_IN_CODE = {
    "methodOptions": "methodSettingsTable",
    "fixedMaskSegments": "fixedMaskSegmentsSelector",
    "movingMaskSegments": "movingMaskSegmentsSelector",
}
#: The method table (descriptions and typed settings), written from the option declarations by
#: scripts/make_method_table.py, so that the module shows them without importing torch.
METHOD_TABLE_FILE = "MethodTable.json"
#: The largest value a QSpinBox holds; whole-number settings with a larger range get a QDoubleSpinBox with no decimals.
SPINBOX_MAX = 2147483647


def methodTable(path: Optional[str] = None) -> dict:
    """The method table: ``{"default_method", "methods": {name: {"description", "settings": [...]}}}``."""
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", METHOD_TABLE_FILE)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def editorSpec(setting: dict) -> dict:
    """The editor of one method setting (a row of the method table), as plain data: the Qt widget
    class, its range, decimals and starting value, and the default and range as the table shows them.

    ``int`` -> QSpinBox (a QDoubleSpinBox with no decimals beyond ``SPINBOX_MAX``), ``float`` ->
    QDoubleSpinBox, ``bool`` -> QCheckBox, ``choice`` -> QComboBox, ``text`` -> QLineEdit, and
    ``int_list``/``float_list`` -> a QLineEdit whose text :func:`parseListText` checks."""
    kind, default, valueRange = setting["kind"], setting["default"], setting.get("range")
    lo, hi = valueRange if valueRange else (None, None)
    spec = {"name": setting["name"], "kind": kind, "default": default,
            "rangeText": "" if lo is None else f"{lo:g} \u2013 {hi:g}"}
    if kind == "int":
        big = max(abs(lo), abs(hi)) > SPINBOX_MAX
        spec.update(widget="QDoubleSpinBox" if big else "QSpinBox", minimum=lo, maximum=hi, decimals=0, singleStep=1,
                    defaultText=str(default))
    elif kind == "float":
        decimals = int(setting["decimals"])
        spec.update(widget="QDoubleSpinBox", minimum=lo, maximum=hi, decimals=decimals, singleStep=10.0 ** -min(decimals, 2),
                    defaultText=f"{default:g}")
    elif kind == "bool":
        spec.update(widget="QCheckBox", defaultText="\u2713" if default else "\u2717")
    elif kind == "choice":
        spec.update(widget="QComboBox", items=list(setting["choices"]), defaultText=str(default),
                    rangeText=", ".join(setting["choices"]))
    elif kind == "text":
        spec.update(widget="QLineEdit", defaultText=str(default))
    elif kind in ("int_list", "float_list"):
        spec.update(widget="QLineEdit", minimum=lo, maximum=hi, defaultText=listText(default))
    else:
        raise ValueError(f"editorSpec: no editor for setting {setting['name']!r} of kind {kind!r}")
    return spec


def listText(values) -> str:
    """A list setting as the line edit shows it: ``6, 4, 2.5``."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def parseListText(text: str, kind: str, minimum: float, maximum: float) -> list:
    """The values typed in a list setting's line edit (numbers separated by commas or spaces), checked
    against the kind (``int_list``: whole numbers) and the range; raises ValueError naming the problem."""
    parts = [t for t in text.replace(",", " ").split() if t]
    if not parts:
        raise ValueError(_("give one number at least"))
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(_("{text} is not a number").format(text=part)) from None
        if kind == "int_list":
            if not value.is_integer():
                raise ValueError(_("{text} is not a whole number").format(text=part))
            value = int(value)
        if not minimum <= value <= maximum:
            raise ValueError(_("{text} is outside {lo:g} \u2013 {hi:g}").format(text=part, lo=minimum, hi=maximum))
        values.append(value)
    return values


def storedMethodOptions(text: str) -> dict:
    """The method settings kept in the parameter node: ``{method: {name: value}}`` (JSON; only the
    settings that differ from their defaults); ``{}`` for blank text or text in another form."""
    try:
        data = json.loads(text) if text and text.strip() else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {method: dict(values) for method, values in data.items() if isinstance(values, dict)}


def outputRoles() -> tuple:
    """The output roles (``DeepLungRegLib.io.roles.OUTPUT_ROLES``): for each, the parameter-node field that may
    name its node (the Outputs selectors) and the Results button that shows it. Read at the point of use (the
    table needs no torch); the parameter node and the .ui declare those fields and widgets at import, and
    Testing/pytest/test_output_roles.py checks that they match the table."""
    from DeepLungRegLib.io.roles import OUTPUT_ROLES

    return OUTPUT_ROLES


def segmentList(text: str) -> Optional[list]:
    """The lung segments kept in the parameter node (a JSON list of segment IDs; older scenes: names
    separated by commas); ``None`` (every segment named like a lung) when there are none."""
    text = (text or "").strip()
    if text.startswith("["):
        try:
            items = [str(i) for i in json.loads(text)]
        except ValueError:
            items = []
    else:
        items = [name.strip() for name in text.split(",") if name.strip()]
    return items or None


# --------------------------------------------------------------------------- module
class DeepLungReg(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DeepLungReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepLungReg developers"]
        self.parent.helpText = _(
            "Registers lung CT (and MRI), above all inhale-to-exhale pairs with large motion. Choose a fixed and a "
            "moving volume and a method, press Apply, and review the warped overlay, the deformation grid, the "
            "Jacobian and ventilation maps and, with landmarks, the per-landmark target registration error. "
            "The 4D-CT section registers every phase of a volume sequence to a reference phase, in the background, and "
            "plays the motion in a sequence browser with the lung volume curve. "
            "The same library runs from the Python console (DeepLungRegLogic().register(RegistrationNodes(...))) and the "
            "'deeplungreg' command line. See the <a href=\"{url}\">user's guide</a>.").format(url=README_URL)
        self.parent.acknowledgementText = _(
            "Methods after Heinrich et al. (MIND-SSC, discrete displacement search, displacement embeddings, "
            "ConvexAdam), Hering et al. (mlVIRNET, label-driven training) and coupled affine-deformable CNNs. "
            "The demo CT is a crop of the POPI 4D-CT phase 00 (Léon Bérard Cancer Center & CREATIS, Lyon).")
        # the demo CT in the Sample Data module, so that a new user can try the module in one click
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the sample pair in the Sample Data module (category DeepLungReg): the demo CT as the inhale, an
    exhale simulated from it and their corresponding landmarks (``DeepLungRegLib.data.SAMPLE_PAIR``), loaded
    as two volumes and two point lists that the module then picks by itself (:meth:`DeepLungRegLogic.samplePairNodes`)."""
    import SampleData
    from DeepLungRegLib.data import SAMPLE_PAIR, sample_path

    paths = [sample_path(name) for name, _, _ in SAMPLE_PAIR]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        logging.warning("DeepLungReg: the sample pair is not offered in Sample Data; missing %s", ", ".join(missing))
        return
    icons = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="DeepLungReg", sampleName="DeepLungRegInhaleExhale", uris=[path.as_uri() for path in paths],
        fileNames=[name for name, _, _ in SAMPLE_PAIR], nodeNames=[node for _, node, _ in SAMPLE_PAIR],
        thumbnailFileName=os.path.join(icons, "DeepLungRegSamplePair.png"),
        loadFileType=[kind for _, _, kind in SAMPLE_PAIR])


# ----------------------------------------------------------------- parameter node
@parameterNodeWrapper
class DeepLungRegParameterNode:
    """What the GUI edits; every field is bound to a widget through ``SlicerParameterName``."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(METHOD_CHOICES)] = "convex"  # DeepLungRegLib.options.DEFAULT_METHOD
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    fixedMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    movingMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    fixedMaskSegments: str = ""
    movingMaskSegments: str = ""
    autoMasks: bool = True
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    methodOptions: str = ""
    outputTransform: vtkMRMLGridTransformNode
    outputWarped: vtkMRMLScalarVolumeNode
    outputJacobian: vtkMRMLScalarVolumeNode
    outputVentilation: vtkMRMLScalarVolumeNode
    outputVentilationHU: vtkMRMLScalarVolumeNode
    outputUncertainty: vtkMRMLScalarVolumeNode
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showGrid: bool = True
    sequenceInput: vtkMRMLSequenceNode
    sequenceOutputFolder: pathlib.Path
    sequenceReference: Annotated[int, WithinRange(-1, 999)] = -1  # -1: automatic (end-exhale)
    sequenceStart: Annotated[str, Choice(SEQUENCE_STARTS)] = "reference"


# ------------------------------------------------------------------------ widget
def segmentIDsOf(segmentationNode, stored: list) -> list:
    """The IDs of ``stored`` segments (IDs, or names as older scenes saved them, any case) that the
    segmentation has, in order; [] without a segmentation."""
    if segmentationNode is None:
        return []
    segmentation = segmentationNode.GetSegmentation()
    byName = {segmentation.GetNthSegment(i).GetName().lower(): segmentation.GetNthSegmentID(i)
              for i in range(segmentation.GetNumberOfSegments())}
    ids = []
    for entry in stored:
        segmentID = entry if segmentation.GetSegment(entry) is not None else byName.get(str(entry).lower())
        if segmentID is not None and segmentID not in ids:
            ids.append(segmentID)
    return ids


class DeepLungRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the ``.ui`` to the parameter node and forwards actions to the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._lastResult = None
        self._review = None
        self._reviewScene = None
        self._settingEditors = {}
        self._invalidSettings = {}
        self._sequenceRun = None
        self._sequenceTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepLungReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepLungRegLogic()
        # The combo boxes are filled by the parameter-node binding (Choice annotations).
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.resetSettingsButton.connect("clicked(bool)", self.onResetSettings)
        for side in ("fixed", "moving"):
            getattr(self.ui, f"{side}MaskSegmentsSelector").connect(
                "segmentSelectionChanged(QStringList)", lambda ids, side=side: self.onSegmentsChosen(side, ids))
        for role in outputRoles():
            if role.button:
                getattr(self.ui, role.button).connect("clicked(bool)", lambda checked=False, role=role.name: self.onShow(role))
        self.ui.jumpToWorstButton.connect("clicked(bool)", self.onJumpToWorst)
        self.ui.previousLandmarkButton.connect("clicked(bool)", lambda: self.onReviewStep(-1))
        self.ui.nextLandmarkButton.connect("clicked(bool)", lambda: self.onReviewStep(1))
        self.ui.reviewOrderComboBox.connect("currentIndexChanged(int)", lambda i: self.onReviewOrderChanged())
        self.ui.acceptLandmarkButton.connect("clicked(bool)", lambda: self.onReviewMark("accepted"))
        self.ui.flagLandmarkButton.connect("clicked(bool)", lambda: self.onReviewMark("flagged"))
        self.ui.correctPointsCheckBox.connect("toggled(bool)", self.onCorrectPointsToggled)
        self.ui.exportReviewButton.connect("clicked(bool)", self.onExportReview)
        self.ui.loadReviewButton.connect("clicked(bool)", self.onLoadReview)
        self.ui.sequenceApplyButton.connect("clicked(bool)", self.onSequenceApplyButton)
        self.ui.sequenceCancelButton.connect("clicked(bool)", self.onSequenceCancelButton)
        self._sequenceTimer = qt.QTimer()
        self._sequenceTimer.setInterval(SEQUENCE_POLL_MS)
        self._sequenceTimer.connect("timeout()", self.onSequencePoll)
        self.initializeParameterNode()
        self.onMethodChanged()
        self._updateResultsGui()

    def cleanup(self) -> None:
        self.removeObservers()
        self._setReview(None)
        self.onSequenceCancelButton()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.onSequenceCancelButton()  # its results could not go into a scene that is closing
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.logic.useSamplePair(self._parameterNode)
        if not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode: Optional[DeepLungRegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            descriptions = self.logic.methodDescriptions()
            for i in range(self.ui.methodComboBox.count):
                text = descriptions.get(self.ui.methodComboBox.itemText(i), "")
                self.ui.methodComboBox.setItemData(i, text, qt.Qt.ToolTipRole)
            stored = self._parameterNode.methodOptions
            if stored.strip() and not storedMethodOptions(stored) and stored.strip() != "{}":
                logging.warning("DeepLungReg: the method settings saved in this scene (%r) are in an older form and are "
                                "not used; set them again in the table", stored)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()
            self.onMethodChanged()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        busy = self.ui.cancelButton.enabled or self._sequenceRun is not None
        self.ui.applyButton.enabled = ready and not busy
        self.ui.applyButton.toolTip = _("Run the registration.") if ready else _("Choose two different volumes.")
        folder = str(p.sequenceOutputFolder) if p is not None and p.sequenceOutputFolder else ""
        sequenceReady = bool(p and p.sequenceInput and folder not in ("", "."))
        self.ui.sequenceApplyButton.enabled = sequenceReady and not busy
        self.ui.sequenceApplyButton.toolTip = _("Register every phase to the reference phase, in the background.") if sequenceReady \
            else _("Choose a 4D-CT volume sequence and an output folder.")
        if p is not None:
            self.logic.setOverlayOpacity(p.overlayOpacity)
            self.logic.setGridVisible(self._result("transform"), p.showGrid)
        self._updateSegmentSelectors()

    # ------------------------------------------------------------ lung segments
    def _updateSegmentSelectors(self) -> None:
        """Point each segment selector at its mask when the mask is a segmentation (disabled otherwise),
        ticking the stored segments that the segmentation has."""
        p = self._parameterNode
        for side in ("fixed", "moving"):
            selector = getattr(self.ui, f"{side}MaskSegmentsSelector")
            mask = getattr(p, f"{side}Mask") if p is not None else None
            node = mask if mask is not None and mask.IsA("vtkMRMLSegmentationNode") else None
            selector.enabled = node is not None
            if selector.currentNode() == node:
                continue
            stored = segmentList(getattr(p, f"{side}MaskSegments")) if p is not None else None
            kept = segmentIDsOf(node, stored or [])
            wasBlocked = selector.blockSignals(True)
            try:
                selector.setCurrentNode(node)
                selector.setSelectedSegmentIDs(kept)
            finally:
                selector.blockSignals(wasBlocked)
            if p is not None and kept and kept != (stored or []):  # names from older scenes become IDs; nothing found: kept as is
                setattr(p, f"{side}MaskSegments", json.dumps(kept))

    def onSegmentsChosen(self, side: str, segmentIDs) -> None:
        if self._parameterNode is not None:
            ids = [str(i) for i in segmentIDs]
            setattr(self._parameterNode, f"{side}MaskSegments", json.dumps(ids) if ids else "")

    # ---------------------------------------------------------- method settings
    def onMethodChanged(self, index=None) -> None:
        """Show the method's description and a typed editor per setting (from the method table: no torch needed)."""
        method = self.ui.methodComboBox.currentText
        if not method:
            return
        entry = self.logic.methodTable()["methods"].get(method, {"description": "", "settings": []})
        self.ui.methodDescriptionLabel.text = entry["description"]
        stored = storedMethodOptions(self._parameterNode.methodOptions if self._parameterNode else "").get(method, {})
        table = self.ui.methodSettingsTable
        table.clear()
        table.setColumnCount(4)
        table.setHorizontalHeaderLabels([_("Setting"), _("Value"), _("Default"), _("Range")])
        table.setRowCount(len(entry["settings"]))
        self._settingEditors, self._invalidSettings = {}, {}
        for row, setting in enumerate(entry["settings"]):
            spec = editorSpec(setting)
            name = qt.QTableWidgetItem(setting["name"])
            name.setToolTip(setting["help"])
            table.setItem(row, 0, name)
            editor = self._makeEditor(spec, stored.get(setting["name"], spec["default"]))
            editor.setToolTip(setting["help"])
            table.setCellWidget(row, 1, editor)
            table.setItem(row, 2, qt.QTableWidgetItem(spec["defaultText"]))
            table.setItem(row, 3, qt.QTableWidgetItem(spec["rangeText"]))
            self._settingEditors[setting["name"]] = (editor, spec)
        table.resizeColumnsToContents()

    def _makeEditor(self, spec: dict, value):
        """The Qt editor of one setting (see :func:`editorSpec`), showing ``value``."""
        editor = getattr(qt, spec["widget"])()
        if spec["widget"] in ("QSpinBox", "QDoubleSpinBox"):
            if spec["widget"] == "QDoubleSpinBox":
                editor.setDecimals(spec["decimals"])
            editor.setRange(spec["minimum"], spec["maximum"])
            editor.setSingleStep(spec["singleStep"])
            editor.setValue(value)
            editor.connect("valueChanged(double)" if spec["widget"] == "QDoubleSpinBox" else "valueChanged(int)",
                           lambda *args: self.onSettingChanged())
        elif spec["widget"] == "QCheckBox":
            editor.setChecked(bool(value))
            editor.connect("toggled(bool)", lambda *args: self.onSettingChanged())
        elif spec["widget"] == "QComboBox":
            editor.addItems(spec["items"])
            editor.setCurrentIndex(spec["items"].index(value) if value in spec["items"] else 0)
            editor.connect("currentIndexChanged(int)", lambda *args: self.onSettingChanged())
        else:
            editor.setText(listText(value) if spec["kind"].endswith("_list") else str(value))
            editor.connect("textChanged(QString)", lambda *args: self.onSettingChanged())
        return editor

    def _editorValue(self, editor, spec: dict):
        """The value an editor holds now; ValueError for a list that does not parse or is out of range."""
        if spec["widget"] == "QSpinBox":
            return int(editor.value)
        if spec["widget"] == "QDoubleSpinBox":
            return int(round(editor.value)) if spec["kind"] == "int" else float(editor.value)
        if spec["widget"] == "QCheckBox":
            return bool(editor.checked)
        if spec["widget"] == "QComboBox":
            return editor.currentText
        if spec["kind"].endswith("_list"):
            return parseListText(editor.text, spec["kind"], spec["minimum"], spec["maximum"])
        return editor.text

    def onSettingChanged(self) -> None:
        """Keep the settings that differ from their defaults in the parameter node; mark a list that does not parse."""
        method = self.ui.methodComboBox.currentText
        changed, self._invalidSettings = {}, {}
        for name, (editor, spec) in self._settingEditors.items():
            try:
                value = self._editorValue(editor, spec)
            except ValueError as exc:
                self._invalidSettings[name] = str(exc)
                editor.setStyleSheet("background-color: #f4c7c3")
                continue
            if spec["kind"].endswith("_list"):
                editor.setStyleSheet("")
            if value != spec["default"]:
                changed[name] = value
        if self._parameterNode is not None:
            stored = storedMethodOptions(self._parameterNode.methodOptions)
            stored.pop(method, None)
            if changed:
                stored[method] = changed
            self._parameterNode.methodOptions = json.dumps(stored, sort_keys=True) if stored else ""

    def onResetSettings(self) -> None:
        if self._parameterNode is not None:
            stored = storedMethodOptions(self._parameterNode.methodOptions)
            stored.pop(self.ui.methodComboBox.currentText, None)
            self._parameterNode.methodOptions = json.dumps(stored, sort_keys=True) if stored else ""
        self.onMethodChanged()

    def onProgress(self, stage: str, fraction: float) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = stage
        slicer.app.processEvents()

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling...")

    def _settingsValid(self) -> bool:
        """False (after saying which) when a method setting in the table does not parse."""
        if self._invalidSettings:
            name, problem = next(iter(self._invalidSettings.items()))
            slicer.util.errorDisplay(_("DeepLungReg: the setting {name} is not valid: {problem}.").format(name=name, problem=problem))
            return False
        return True

    def onApplyButton(self) -> None:
        if not self._settingsValid():
            return
        self._cancelRequested = False
        self.ui.cancelButton.enabled = True
        self.ui.applyButton.enabled = False
        try:
            with slicer.util.tryWithErrorDisplay(_("DeepLungReg: registration failed."), waitCursor=True):
                result = self.logic.registerFromParameterNode(
                    self._parameterNode, progress=self.onProgress, cancel=lambda: self._cancelRequested)
                if result is not None:
                    self._lastResult = result
        finally:
            self.ui.cancelButton.enabled = False
            self._onParameterNodeModified()
        self._updateResultsGui()

    # ------------------------------------------------------------------ 4D-CT
    def onSequenceApplyButton(self) -> None:
        """Start the 4D-CT run in the background; the timer polls it (the panel and Slicer stay usable)."""
        if not self._settingsValid():
            return
        self.ui.sequenceProgressBar.value = 0
        self.ui.sequenceStatusLabel.text = _("Starting...")
        with slicer.util.tryWithErrorDisplay(_("DeepLungReg: the 4D-CT registration did not start."), waitCursor=True):
            self._sequenceRun = self.logic.startSequenceFromParameterNode(self._parameterNode)
            self.ui.sequenceCancelButton.enabled = True
            self._sequenceTimer.start()
        if self._sequenceRun is None:
            self.ui.sequenceStatusLabel.text = ""
        self._onParameterNodeModified()

    def onSequenceProgress(self, stage: str, fraction: float) -> None:
        self.ui.sequenceProgressBar.value = int(round(100 * fraction))
        self.ui.sequenceStatusLabel.text = stage

    def onSequencePoll(self) -> None:
        """The timer's tick: show the run's progress; once it has ended, load its results (or say why not)."""
        run = self._sequenceRun
        if run is None or run.poll(self.onSequenceProgress) == "running":
            return
        self._sequenceTimer.stop()
        self._sequenceRun = None
        self.ui.sequenceCancelButton.enabled = False
        result = None
        try:
            with slicer.util.tryWithErrorDisplay(_("DeepLungReg: the 4D-CT registration failed."), waitCursor=True):
                result = self.logic.finishSequence(run, progress=self.onSequenceProgress)
        finally:
            if result is not None:
                self.ui.sequenceStatusLabel.text = result["text"]
            elif run.state == "done":
                self.ui.sequenceStatusLabel.text = _("Registered into {folder}, but not loaded: see the message.").format(
                    folder=str(run.outdir))
            else:
                self.ui.sequenceStatusLabel.text = _("Failed: {error}").format(error=run.error or run.state)
            self._onParameterNodeModified()

    def onSequenceCancelButton(self) -> None:
        """End the 4D-CT run (and its process): the phases finished so far stay in the output folder."""
        run, self._sequenceRun = self._sequenceRun, None
        if self._sequenceTimer is not None:
            self._sequenceTimer.stop()
        if run is None:
            return
        self.ui.sequenceStatusLabel.text = _("Cancelling...")
        run.cancel()
        self.ui.sequenceCancelButton.enabled = False
        self.ui.sequenceStatusLabel.text = _("Cancelled; the phases finished so far are in {folder}.").format(folder=str(run.outdir))
        self._onParameterNodeModified()

    def _result(self, role: str):
        return (self._lastResult or {}).get("nodes", {}).get(role)

    def _updateResultsGui(self) -> None:
        r = self._lastResult
        self.ui.resultsLabel.text = r["summary"] if r else _("No results yet.")
        self.ui.treTableView.setMRMLTableNode(self._result("tre_table"))
        for role in outputRoles():
            if role.button:
                getattr(self.ui, role.button).enabled = self._result(role.name) is not None
        self.ui.jumpToWorstButton.enabled = self._result("landmarks") is not None
        self._setReview(r.get("review") if r else None)
        if r:
            self.ui.statusLabel.text = _("Done.") if r["metrics"]["jacobian"]["folding_percent"] == 0 else \
                _("Done, but the deformation folds: see the warning above.")

    def onShow(self, role: str) -> None:
        p = self._parameterNode
        self.logic.showOverlay(p.fixedVolume, self._result(role), p.overlayOpacity)

    def onJumpToWorst(self) -> None:
        self.logic.jumpToWorstLandmark(self._result("landmarks"))

    # ------------------------------------------------------------ landmark review
    def _setReview(self, review) -> None:
        """Bind a review (``DeepLungRegLib.evaluation.review.LandmarkReview``: the registration's own, or one
        opened from a file) or ``None`` to the panel, through its controller (``ReviewController``, shared with
        the review page); the scene follows it (``DeepLungRegLib.slicer_bridge.review.ReviewScene``)."""
        if self._reviewScene is not None:
            self._reviewScene.close()
        self._reviewScene = self._review = None
        self.ui.correctPointsCheckBox.checked = False
        if review is not None and self._lastResult and self._result("landmarks") is not None:
            self._reviewScene = self.logic.startReview(self._lastResult, review)
            self._review = self._reviewScene.controller
            self._review.order = self._reviewOrder()
            self._review.observe(lambda event: self._updateReviewGui())
            self._review.select(review.order(self._reviewOrder())[0])
        self._updateReviewGui()

    def _reviewOrder(self) -> str:
        """The chosen order (combo box items: worst TRE first, by index, most uncertain first); most uncertain
        first only where the registration gave an uncertainty map, else worst first."""
        order = ("tre", "index", "uncertainty")[min(max(self.ui.reviewOrderComboBox.currentIndex, 0), 2)]
        if self._review is not None and order not in self._review.review.orders():
            slicer.util.showStatusMessage(_("This registration has no uncertainty map (the method option uncertainty was off): worst TRE first."), 5000)
            return "tre"
        return order

    def _updateReviewGui(self) -> None:
        r = self._review
        for name in ("previousLandmarkButton", "nextLandmarkButton", "acceptLandmarkButton", "flagLandmarkButton",
                     "correctPointsCheckBox", "exportReviewButton", "reviewCommentLineEdit", "reviewOrderComboBox"):
            getattr(self.ui, name).enabled = r is not None
        self.ui.loadReviewButton.enabled = self._result("landmarks") is not None
        if r is None:
            self.ui.currentLandmarkLabel.text = _("Register with fixed and moving landmarks to review them.")
            self.ui.reviewSummaryLabel.text = ""
            return
        self.ui.currentLandmarkLabel.text = r.describe()
        self.ui.reviewCommentLineEdit.text = r.comment()
        self.ui.reviewSummaryLabel.text = r.summary_text()

    def onReviewOrderChanged(self) -> None:
        if self._review is not None:
            self._review.set_order(self._reviewOrder())
        else:
            self._updateReviewGui()

    def onReviewStep(self, offset: int) -> None:
        self._review.step(offset)

    def onReviewMark(self, status: str) -> None:
        self._review.mark(status, self.ui.reviewCommentLineEdit.text)

    def onCorrectPointsToggled(self, checked: bool) -> None:
        if self._review is not None:
            self._review.set_editable(checked)

    def onExportReview(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("DeepLungReg: the review was not exported.")):
            written = self._review.export(self.ui.reviewFolderButton.directory)
            self.ui.statusLabel.text = _("Review exported: {files}").format(files=", ".join(p.name for p in written))

    def onLoadReview(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Open a saved review"), self.ui.reviewFolderButton.directory,
                                              _("Review table (review.csv);;CSV (*.csv)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("DeepLungReg: the review was not opened.")):
                self._setReview(self.logic.loadReview(path, self._lastResult))


# ------------------------------------------------------------------------- logic
class DeepLungRegLogic(ScriptedLoadableModuleLogic):
    """All the work, without GUI. Usable from the Python console::

        logic = slicer.util.getModuleLogic("DeepLungReg")
        out = logic.register(fixedNode, movingNode, method="convex", regularisation=2.0)
        out["metrics"]["tre_after"], out["nodes"]["warped"]
    """

    def getParameterNode(self):
        return DeepLungRegParameterNode(super().getParameterNode())

    # ---------------------------------------------------------------- dependencies
    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> None:
        """Make torch (through the PyTorch extension) and the few pip packages importable.

        Runs at the point of use, never at import. numpy, SimpleITK and VTK are
        Slicer's own and are never replaced.
        """
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError(
                    "DeepLungReg needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, "
                    "restart Slicer, then try again.") from exc
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                    raise RuntimeError("DeepLungReg needs PyTorch, which was not installed. Install it from the "
                                       "PyTorch module (Utilities > PyTorch) and try again.")
        problem = torchLoadError()
        if problem is None and unmetRequirements([f"torch{TORCH_REQUIREMENT}"]):
            problem = (f"DeepLungReg needs PyTorch {TORCH_REQUIREMENT}; reinstall it from Utilities > PyTorch "
                       "and restart Slicer.")
        if problem is not None:
            raise RuntimeError(problem)
        missing = unmetRequirements(PIP_REQUIREMENTS.values())
        if missing:
            packaging = getattr(slicer, "packaging", None)
            if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer 5.12 and later
                packaging.pip_ensure(missing, requester="DeepLungReg")
            else:
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(_(
                        "DeepLungReg needs these Python packages: {packages}. Install them now?").format(packages=", ".join(missing))):
                    raise RuntimeError(f"DeepLungReg cannot run without {', '.join(missing)}")
                slicer.util.pip_install(missing)

    # --------------------------------------------------------------------- queries
    @staticmethod
    def samplePairNodes() -> Optional[dict]:
        """The sample pair loaded from Sample Data, ``{"fixed", "moving", "fixed_landmarks",
        "moving_landmarks": node}``, or ``None`` when it is not (all) in the scene."""
        from DeepLungRegLib.slicer_bridge.sample import sample_pair_nodes

        return sample_pair_nodes(slicer.mrmlScene)

    def useSamplePair(self, parameterNode) -> None:
        """When the sample pair is in the scene and no moving volume is chosen yet, choose the pair: inhale
        fixed, exhale moving, and both landmark lists, so that Apply gives the TRE table at once."""
        if parameterNode is None or parameterNode.movingVolume:
            return
        nodes = self.samplePairNodes()
        if nodes is None:
            return
        parameterNode.fixedVolume = nodes["fixed"]
        parameterNode.movingVolume = nodes["moving"]
        parameterNode.fixedLandmarks = nodes["fixed_landmarks"]
        parameterNode.movingLandmarks = nodes["moving_landmarks"]

    @staticmethod
    def methods() -> dict:
        """Registered methods: name -> one-line description."""
        from DeepLungRegLib.methods import available_methods

        return available_methods()

    @staticmethod
    def methodTable() -> dict:
        """The methods' descriptions and typed settings (defaults, ranges, choices, help) as the module
        shows them, read from Resources/MethodTable.json: no torch needed (see :func:`methodTable`)."""
        return methodTable()

    @classmethod
    def methodDescriptions(cls) -> dict:
        """Method name -> one-line description, from the method table (opening the module never imports torch)."""
        return {name: entry["description"] for name, entry in cls.methodTable()["methods"].items()}

    @staticmethod
    def methodSettings(method: str) -> list:
        """A method's settings from the library: ``[{"name", "default", "type", "help", "range", "choices"}]``."""
        from DeepLungRegLib.methods import method_settings

        return method_settings(method)

    # -------------------------------------------------------------------- the work
    def register(self, nodes, method: str = "convex", *, device: str = "auto", progress=None, cancel=None,
                 show: bool = True, background: bool = False, reportFolder=None, **options) -> Optional[dict]:
        """Register the chosen nodes::

            from DeepLungRegLib.slicer_bridge import RegistrationNodes
            out = logic.register(RegistrationNodes(fixed, moving, fixed_landmarks=f, moving_landmarks=m), "convex")

        Args:
            nodes: a ``DeepLungRegLib.slicer_bridge.RegistrationNodes``: the fixed and moving volume nodes,
                masks (labelmap or segmentation nodes, ``"auto"`` or ``None``) and their lung segments,
                landmark point lists, and output nodes by role (others are created, or replaced when an
                earlier DeepLungReg run on this pair made them).
            method: a name from :meth:`methods`.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
            progress: ``progress(stage, fraction)``; cancel: returns True to stop.
            show: show the warped overlay and the deformation grid.
            background: run the work in a separate process (:meth:`startRegistration`) and wait for
                it while Slicer keeps processing events; the scene is written only when it ends well.
            reportFolder: with ``background``, also write the command line's outputs and HTML report (needs
                matplotlib) into a new subfolder of this folder, which is kept.
            **options: method settings (see :meth:`methodSettings`), e.g. ``regularisation=2``.

        Returns:
            ``{"nodes": {role: node}, "metrics": dict, "summary": str, "worstLandmark": int | None,
            "review": LandmarkReview | None}`` or ``None`` when cancelled.
        """
        self.ensureDependencies()
        from DeepLungRegLib.errors import RegistrationCancelled
        from DeepLungRegLib.slicer_bridge.workflow import register_nodes

        try:
            if background:
                run = self.startRegistration(nodes, method, device=device, show=show, reportFolder=reportFolder, **options)
                result = run.wait(progress=progress, cancel=cancel, idle=slicer.app.processEvents)
            else:
                if reportFolder:
                    raise ValueError("DeepLungReg: reportFolder needs background=True (the report is written by the worker)")
                result = register_nodes(slicer.mrmlScene, nodes, method, device=device, options=options, progress=progress,
                                        cancel=cancel, show=show)
        except RegistrationCancelled:
            logging.info("DeepLungReg: registration cancelled")
            return None
        logging.info("DeepLungReg: %s", result.summary.replace("\n", "; "))
        if show:
            self.fitSliceViews(nodes.fixed)
        return {"nodes": result.nodes(), "metrics": result.metrics, "summary": result.summary,
                "worstLandmark": result.worst_landmark, "review": result.review}

    def startRegistration(self, nodes, method: str = "convex", *, device: str = "auto", show: bool = True,
                          reportFolder=None, **options):
        """Start :meth:`register`'s work in a separate process and return its handle
        (``DeepLungRegLib.slicer_bridge.background.BackgroundRegistration``): call its ``poll()``
        from a timer for progress, ``cancel()`` to stop it, ``finish()`` once it is done to get
        the output nodes, or ``wait(idle=slicer.app.processEvents)`` to block while Slicer stays
        responsive. Slicer's scene is only written by ``finish()``."""
        self.ensureDependencies()
        from DeepLungRegLib.slicer_bridge.background import BackgroundRegistration

        return BackgroundRegistration(slicer.mrmlScene, nodes, method, options=options, device=device, show=show,
                                      report_folder=reportFolder or None)

    @staticmethod
    def nodesFromParameterNode(parameterNode):
        """The GUI's choice of nodes as a ``DeepLungRegLib.slicer_bridge.RegistrationNodes`` (output nodes from the
        parameter-node fields of the output roles)."""
        from DeepLungRegLib.slicer_bridge import RegistrationNodes

        p = parameterNode
        auto = "auto" if p.autoMasks else None
        outputs = {role.name: getattr(p, role.parameter) for role in outputRoles() if role.parameter and getattr(p, role.parameter)}
        return RegistrationNodes(p.fixedVolume, p.movingVolume, fixed_mask=p.fixedMask or auto, moving_mask=p.movingMask or auto,
                                 fixed_mask_segments=segmentList(p.fixedMaskSegments),
                                 moving_mask_segments=segmentList(p.movingMaskSegments), fixed_landmarks=p.fixedLandmarks,
                                 moving_landmarks=p.movingLandmarks, outputs=outputs)

    def registerFromParameterNode(self, parameterNode, progress=None, cancel=None) -> Optional[dict]:
        """Run :meth:`register` with the GUI's settings, in a separate process (Slicer stays responsive, and
        running out of memory ends the worker, not Slicer); writes created outputs back into the parameter node."""
        p = parameterNode
        result = self.register(self.nodesFromParameterNode(p), p.method, device=p.device, progress=progress, cancel=cancel,
                               background=True, **storedMethodOptions(p.methodOptions).get(p.method, {}))
        if result is not None:
            # The output selectors keep the user's choice ("Create new" stays so): a re-run
            # finds DeepLungReg's earlier outputs for this pair by their node references.
            self.setGridVisible(result["nodes"]["transform"], p.showGrid)
            self.setOverlayOpacity(p.overlayOpacity)
        return result

    def registerSequence(self, sequenceNode, outputFolder, method: str = "convex", reference=None, progress=None, cancel=None, *,
                         device: str = "auto", start: str = "reference", landmarks=None, overwrite: bool = False, browserNode=None,
                         show: bool = True, background: bool = False, **options) -> Optional[dict]:
        """Register every phase of a 4D-CT held in a volume sequence to a reference phase, and show the motion::

            out = logic.registerSequence(getNode("4D-CT"), "/data/4dct-results", "convex")
            out["summary"]["tidal_volume_ml"], out["nodes"]["browser"], out["nodes"]["volume_chart"]

        Each phase is registered in turn (the reference and one phase in memory), into ``outputFolder``/phase_XX
        as ``deeplungreg sequence`` writes it. The scene gets a transform, a warped-volume and a Jacobian sequence
        in one sequence browser with the 4D-CT (play it to see the cycle), the lung volume curve (table and plot) and,
        with landmarks, the TRE per phase. Slicer waits for the run; with ``background=True`` it runs in a separate
        process while Slicer keeps processing events (the module's 4D-CT section starts it with :meth:`startSequence`
        and polls it from a timer instead).

        Args:
            sequenceNode: the 4D-CT, a sequence of scalar volumes (e.g. a 4D NRRD or a multi-phase DICOM series).
            outputFolder: where the phase folders, ``sequence.json`` and ``volume_curve.csv`` go (kept).
            method: a name from :meth:`methods`; reference: the reference phase's index (``None``: end-exhale,
                the smallest lung volume).
            progress: ``progress(stage, fraction)``; cancel: returns True to stop.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``; overwrite: replace an earlier run's own files in ``outputFolder``.
            start: ``"reference"`` (each phase from scratch) or ``"neighbour"`` (from its neighbour's result).
            landmarks: ``{phase index: (N, 3) LPS mm}`` or a folder of landmark files, one per phase.
            browserNode: the sequence browser to add the results to (else a new one).
            show: show the sequence browser toolbar and the volume curve in the layout.
            background: run in the worker process (:meth:`startSequence`), waiting while Slicer processes events.
            **options: method settings (see :meth:`methodSettings`).

        Returns:
            ``{"summary": dict, "nodes": {name: node}}`` or ``None`` when cancelled (the phases finished so far stay
            in ``outputFolder``; the scene gets nothing).
        """
        self.ensureDependencies()
        from DeepLungRegLib.errors import RegistrationCancelled
        from DeepLungRegLib.slicer_bridge.sequence import register_sequence_node

        try:
            if background:
                run = self.startSequence(sequenceNode, outputFolder, method, reference, device=device, start=start,
                                         landmarks=landmarks, overwrite=overwrite, browserNode=browserNode, **options)
                summary, nodes = run.wait(progress=progress, cancel=cancel, idle=slicer.app.processEvents)
            else:
                summary, nodes = register_sequence_node(slicer.mrmlScene, sequenceNode, outputFolder, method=method, reference=reference,
                                                        options=options, landmarks=landmarks, device=device, overwrite=overwrite,
                                                        browser_node=browserNode, progress=progress, cancel=cancel, start=start)
        except RegistrationCancelled:
            logging.info("DeepLungReg: sequence registration cancelled")
            return None
        return self._sequenceDone(summary, nodes, show)

    def startSequence(self, sequenceNode, outputFolder, method: str = "convex", reference=None, *, device: str = "auto",
                      start: str = "reference", landmarks=None, overwrite: bool = False, browserNode=None, **options):
        """Start :meth:`registerSequence`'s work in a separate process and return its handle
        (``DeepLungRegLib.slicer_bridge.background.BackgroundSequence``): call its ``poll(progress)`` from a timer,
        ``cancel()`` to stop it (the phases finished so far stay in ``outputFolder``), and :meth:`finishSequence` once
        it has ended. ``sequenceNode``: a volume sequence node, or the path of a 4D-CT (a folder of phases, a 4D NRRD,
        a DICOM series). The scene is only written by :meth:`finishSequence`."""
        self.ensureDependencies()
        from DeepLungRegLib.slicer_bridge.background import BackgroundSequence

        return BackgroundSequence(slicer.mrmlScene, sequenceNode, outputFolder, method, reference=reference, options=options,
                                  device=device, start=start, landmarks=landmarks, overwrite=overwrite, browser_node=browserNode)

    def startSequenceFromParameterNode(self, parameterNode):
        """:meth:`startSequence` with the GUI's choices: the 4D-CT section's sequence, output folder, reference phase
        (-1: automatic) and start, and the method, device and settings chosen for pairs. A new run into the same
        folder replaces what an earlier run wrote there (only that)."""
        p = parameterNode
        folder = str(p.sequenceOutputFolder) if p.sequenceOutputFolder else ""
        if not p.sequenceInput or folder in ("", "."):
            raise ValueError(_("Choose a 4D-CT volume sequence and an output folder."))
        return self.startSequence(p.sequenceInput, folder, p.method, None if p.sequenceReference < 0 else p.sequenceReference,
                                  device=p.device, start=p.sequenceStart, overwrite=True,
                                  **storedMethodOptions(p.methodOptions).get(p.method, {}))

    def finishSequence(self, run, progress=None, show: bool = True) -> dict:
        """The results of a :meth:`startSequence` run that has ended, into the scene (the sequences in one browser, the
        volume curve, the TRE table); raises the run's one-line error when it failed or was cancelled. Returns
        ``{"summary", "nodes", "text"}`` (``text``: one line for the panel)."""
        summary, nodes = run.finish(progress)
        return self._sequenceDone(summary, nodes, show)

    @staticmethod
    def _sequenceDone(summary: dict, nodes: dict, show: bool) -> dict:
        tidal = summary["tidal_volume_ml"]
        text = _("Done: {n} phases registered to phase {ref}; tidal volume {tidal}. Play the cycle with the sequence browser.").format(
            n=summary["n_phases"], ref=summary["reference_name"], tidal=_("unknown") if tidal is None else f"{tidal:.0f} mL")
        logging.info("DeepLungReg: %s", text)
        if show and hasattr(slicer, "modules"):
            slicer.modules.sequences.setToolBarActiveBrowserNode(nodes["browser"])
            slicer.modules.sequences.showSequenceBrowser(nodes["browser"])
            slicer.modules.plots.logic().ShowChartInLayout(nodes["volume_chart"])
        return {"summary": summary, "nodes": nodes, "text": text}

    # ------------------------------------------------------------------- viewing
    @staticmethod
    def showOverlay(backgroundNode, foregroundNode, opacity: float = 0.5) -> None:
        """Show ``foregroundNode`` (warped, Jacobian or ventilation) over ``backgroundNode``."""
        from DeepLungRegLib.slicer_bridge.workflow import show_overlay

        show_overlay(slicer.mrmlScene, backgroundNode, foregroundNode, opacity)

    @staticmethod
    def setOverlayOpacity(opacity: float) -> None:
        """Fade every slice view between background (0) and foreground (1)."""
        for comp in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            comp.SetForegroundOpacity(float(opacity))

    @staticmethod
    def setGridVisible(transformNode, visible: bool) -> None:
        """Show or hide the deformation grid of a DeepLungReg transform in the slice views (drawn over the
        fixed volume only, by ``DeepLungRegLib.slicer_bridge.grid``)."""
        if transformNode is None:
            return
        from DeepLungRegLib.slicer_bridge.grid import set_grid_visible

        set_grid_visible(slicer.mrmlScene, transformNode, visible)

    @staticmethod
    def fitSliceViews(volumeNode) -> None:
        """Fit every slice view to ``volumeNode`` (all of it in view, centred), at the views' present size."""
        from DeepLungRegLib.slicer_bridge.grid import fit_slice_views

        fit_slice_views(slicer.app.applicationLogic(), volumeNode)

    # ------------------------------------------------------------------- review
    @staticmethod
    def startReview(result: dict, review=None):
        """The landmark review of a :meth:`register` result made with landmarks, in the scene: returns a
        ``DeepLungRegLib.slicer_bridge.review.ReviewScene`` whose ``controller`` steps (``next()``,
        ``previous()``, ``select(i)``, ``worst()``), marks (``mark("flagged", comment)``, then on to the next)
        and exports (``export(folder)``); the views, the warped landmarks and the TRE table follow it, and a
        warped landmark dragged in a view is taken as a correction. ``review``: another review of this
        registration (:meth:`loadReview`); default: the result's own (no field is read back from the transform)."""
        from DeepLungRegLib.evaluation.review import ReviewController
        from DeepLungRegLib.slicer_bridge.review import ReviewScene

        nodes = result["nodes"]
        review = review if review is not None else result.get("review")
        if nodes.get("landmarks") is None or review is None:
            raise ValueError("startReview: the registration was made without landmarks")
        return ReviewScene(slicer.mrmlScene, ReviewController(review), nodes["landmarks"], nodes.get("tre_table"))

    @staticmethod
    def loadReview(reviewCsvPath: str, result: dict):
        """Open a review saved by ``export`` again, against the registration of a :meth:`register` result
        (its field in memory); pass it to :meth:`startReview` to show it."""
        from DeepLungRegLib.evaluation.review import LandmarkReview

        if result is None or result.get("review") is None:
            raise ValueError("loadReview: open a review against a registration made with landmarks")
        own = result["review"]
        return LandmarkReview.load(reviewCsvPath, own.field, own.geometry)

    @staticmethod
    def jumpToWorstLandmark(landmarksNode):
        """Centre the slice views on the landmark with the largest TRE; returns its LPS position."""
        from DeepLungRegLib.slicer_bridge.workflow import jump_to_landmark

        if landmarksNode is None:
            raise ValueError("jumpToWorstLandmark: no landmarks; register with fixed and moving landmarks first")
        index = int(landmarksNode.GetAttribute("DeepLungReg.WorstLandmark") or 0)
        return jump_to_landmark(slicer.mrmlScene, landmarksNode, index)


# -------------------------------------------------------------------------- test
class DeepLungRegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: simulate a breathing pair from the bundled CT, register it, check the outputs."""

    FAST = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [50, 30], "refine_learning_rates": [1.0, 0.5]}

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegisterSimulatedPair()

    @staticmethod
    def _samplePath() -> str:
        from DeepLungRegLib.data import sample_path

        path = sample_path()
        if not path.is_file():
            raise RuntimeError(f"DeepLungRegTest: the bundled sample {path} is missing")
        return str(path)

    def test_RegisterSimulatedPair(self):
        self.delayDisplay("Simulating a breathing pair from the bundled CT (no download)")
        DeepLungRegLogic.ensureDependencies(askConfirmation=False)
        from DeepLungRegLib import read_image
        from DeepLungRegLib.simulation import simulate_breathing
        from DeepLungRegLib.slicer_bridge import RegistrationNodes, markups_from_landmarks, volume_node_from_image
        from DeepLungRegLib.transforms import resample_to_spacing

        ct = resample_to_spacing(read_image(self._samplePath()), 4.0, fill=-1024.0)
        pair = simulate_breathing(ct, amplitude="small", seed=3)
        scene = slicer.mrmlScene
        fixed = volume_node_from_image(scene, pair.fixed, "inhale")
        moving = volume_node_from_image(scene, pair.moving, "exhale")
        fmask = volume_node_from_image(scene, pair.fixed_mask, "inhale lungs", labelmap=True)
        fl = markups_from_landmarks(scene, pair.fixed_landmarks[:50], "inhale landmarks")
        ml = markups_from_landmarks(scene, pair.moving_landmarks[:50], "exhale landmarks")

        self.delayDisplay("Registering")
        logic = DeepLungRegLogic()
        out = logic.register(RegistrationNodes(fixed, moving, fixed_mask=fmask, fixed_landmarks=fl, moving_landmarks=ml),
                             "adam", **self.FAST)
        m = out["metrics"]
        self.assertLess(m["tre_after"]["mean"], 0.5 * m["tre_before"]["mean"])
        self.assertEqual(m["jacobian"]["folding_percent"], 0.0)
        for role in ("transform", "warped", "jacobian", "ventilation", "landmarks", "tre_table"):
            node = out["nodes"][role]
            self.assertIsNotNone(scene.GetNodeByID(node.GetID()), role)
        self.assertEqual(out["nodes"]["tre_table"].GetNumberOfRows(), 50)

        self.delayDisplay("Reviewing the landmarks")
        controller = logic.startReview(out).controller
        worst = controller.worst()
        controller.mark("flagged", "checked")
        with tempfile.TemporaryDirectory() as folder:
            written = controller.export(folder)
            self.assertEqual(len(written), 5)
            again = logic.loadReview(os.path.join(folder, "review.csv"), out)
            self.assertEqual(again.status[worst], "flagged")

        self.delayDisplay("Re-running replaces only DeepLungReg's own outputs")
        count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        again = logic.register(RegistrationNodes(fixed, moving, fixed_mask=fmask), "affine")
        self.assertEqual(again["nodes"]["warped"].GetID(), out["nodes"]["warped"].GetID())
        self.assertEqual(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), count)
        logic.jumpToWorstLandmark(out["nodes"]["landmarks"])

        self.delayDisplay("Test passed")
