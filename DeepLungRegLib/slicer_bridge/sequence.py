"""4D-CT in Slicer: a volume sequence in, every phase's registration out as sequences in one browser.

* :func:`phases_from_sequence_node`: a 4D-CT held in a volume sequence node (as Slicer loads a 4D NRRD or a
  multi-phase DICOM series) as a lazy :class:`~DeepLungRegLib.io.phases.Phases`: checked from the nodes'
  geometry (at least two phases, one grid) and read one phase at a time, as :func:`~DeepLungRegLib.io.phases.read_phases`
  reads files.
* :func:`sequence_node_from_phases`: the other way, a 4D-CT read by the library (a folder of phases, a 4D NRRD,
  a DICOM series) as a volume sequence node.
* :func:`load_sequence_results`: a finished :func:`~DeepLungRegLib.sequence.register_sequence` output folder in
  the scene: a transform sequence, a warped-volume sequence and a Jacobian sequence, one item per phase, in one
  sequence browser (with the 4D-CT's own sequence where given), so that playing the cycle shows the motion; the
  lung volume curve as a table and a plot chart; the TRE per phase as a table where landmarks were given.
* :func:`register_sequence_node`: the three steps together, as the Slicer module's Logic runs them.

Memory: a sequence node holds every item in memory (Slicer's Sequences keep no item on disk). The results hold,
per phase, one displacement field (3 float32 per voxel of the reference grid, 12 bytes: the transform
sequence), one warped volume (the 4D-CT's voxel type) and one Jacobian (float32): for ten phases of
512 x 512 x 150 voxels, about 4.7 GB of fields, 0.8 GB of warped int16 volumes and 1.6 GB of Jacobians, besides
the 4D-CT itself; the browser's proxy nodes hold one more copy of the items shown. They are loaded one phase
at a time: beyond the sequences, a load holds one phase's file and its temporary node. The registration itself (:func:`~DeepLungRegLib.sequence.register_sequence`) holds the reference,
one phase and one field at a time, reading each phase from the sequence when it needs it.

Node items are stored in the sequence node (a copy) and shown through the browser's proxy nodes, which Slicer's
Sequences module logic (or :func:`~.scene.new_scene`'s) updates when the browser's item changes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import slicer

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.fields import read_field
from ..io.images import Image, read_image
from ..io.phases import Phases, phases_from_readers, read_phases
from ..sequence import phase_folder, read_phase_landmarks, register_sequence
from ..sequence.run import SEQUENCE_FILE
from .nodes import geometry_from_volume_node, grid_transform_node_from_field, image_from_volume_node, table_node_from_columns, update_volume_node
from .workflow import ROLE_ATTRIBUTE, _half_width, _show_map

#: The files of each registered phase's folder that the scene gets.
PHASE_FILES = ("displacement.nii.gz", "warped.nii.gz", "jacobian.nii.gz")
#: Node attribute with the output folder the nodes were loaded from.
FOLDER_ATTRIBUTE = "DeepLungReg.SequenceFolder"
#: Node attribute (on the browser) with the run's summary (``sequence.json`` as JSON).
SUMMARY_ATTRIBUTE = "DeepLungReg.Sequence"


# ------------------------------------------------------------------ phases from a sequence node
def _sequence_what(sequence_node) -> str:
    return f"Slicer sequence {sequence_node.GetName()!r}"


def phase_names(sequence_node) -> tuple[str, ...]:
    """The phase names of a sequence node: its index values (``phase_XX`` where a value is empty)."""
    return tuple(sequence_node.GetNthIndexValue(i).strip() or f"phase_{i:02d}" for i in range(sequence_node.GetNumberOfDataNodes()))


def _check_phase_node(node, what: str, name: str) -> None:
    owner = "phases_from_sequence_node"
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise DeepLungRegError(f"{owner}: {what} holds {kind} at phase {name}, not a scalar volume; a 4D-CT sequence holds "
                               "one CT volume per phase")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise DeepLungRegError(f"{owner}: {what} holds label maps (phase {name}), not CT volumes; choose the 4D-CT's sequence")
    img = node.GetImageData()
    if img is None or img.GetNumberOfPoints() == 0:
        raise DeepLungRegError(f"{owner}: {what}: phase {name} has no voxels")
    if img.GetNumberOfScalarComponents() != 1:
        raise DeepLungRegError(f"{owner}: {what}: phase {name} has {img.GetNumberOfScalarComponents()} components per voxel; "
                               "a 4D-CT sequence holds scalar volumes")


def phases_from_sequence_node(sequence_node) -> Phases:
    """The phases of a 4D-CT held in a volume sequence node, checked from the nodes' geometry and read lazily.

    Each phase is read when asked for (``phases[i]``, a copy of that item's voxels as an :class:`~DeepLungRegLib.io.Image`,
    ``(Z, Y, X)`` array, LPS geometry); none is kept. Phase names are the sequence's index values (``phase_XX`` where
    one is empty), in the sequence's order. ``source`` is ``Path("Slicer sequence <name>")``, which names no file.

    Raises:
        DeepLungRegError: one line for a node that is not a sequence of scalar volumes, fewer than two phases,
            phases on different grids; when read, for a phase removed or changed since.
    """
    owner = "phases_from_sequence_node"
    if sequence_node is None or not sequence_node.IsA("vtkMRMLSequenceNode"):
        kind = "no node" if sequence_node is None else f"{sequence_node.GetName()!r}, a {sequence_node.GetClassName()}"
        raise DeepLungRegError(f"{owner}: {kind} is given, not a sequence node; a 4D-CT in Slicer is a volume sequence "
                               "(load a 4D NRRD or a multi-phase DICOM series as a sequence)")
    what = _sequence_what(sequence_node)
    names = phase_names(sequence_node)
    readers = []
    for i, name in enumerate(names):
        node = sequence_node.GetNthDataNode(i)
        _check_phase_node(node, what, name)
        readers.append((name, geometry_from_volume_node(node), _phase_reader(sequence_node, i, name, what)))
    return phases_from_readers(readers, Path(f"Slicer sequence {sequence_node.GetName()}"), what, owner=owner)


def _phase_reader(sequence_node, index: int, name: str, what: str) -> Callable[[], Image]:
    value = sequence_node.GetNthIndexValue(index)
    grid = geometry_from_volume_node(sequence_node.GetNthDataNode(index))

    def read() -> Image:
        node = sequence_node.GetDataNodeAtValue(value, True)
        if node is None:
            raise DeepLungRegError(f"phases_from_sequence_node: phase {name} is no longer in {what}")
        _check_phase_node(node, what, name)
        if not geometry_from_volume_node(node).same_as(grid):
            raise DeepLungRegError(f"phases_from_sequence_node: {what}: phase {name} has changed its grid since it was checked")
        return image_from_volume_node(node)

    return read


def sequence_node_from_phases(scene, phases: Phases, name: str, *, index_name: str = "phase"):
    """A volume sequence node holding ``phases`` (one item per phase, a text index of the phase names), made one
    phase at a time; returns the node (not browsed: add it to a browser to see it)."""
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    seq.SetIndexType(slicer.vtkMRMLSequenceNode.TextIndex)
    seq.SetIndexName(index_name)
    seq.SetIndexUnit("")
    try:
        for i, phase_name in enumerate(phases.names):
            _add_volume_item(seq, phases[i], phase_name, phase_name)
    except BaseException:
        scene.RemoveNode(seq)
        raise
    return seq


# ------------------------------------------------------------------ items
def _add_volume_item(seq, image: Image, value: str, name: str) -> None:
    """Add ``image`` at ``value``: the sequence keeps a copy; the temporary node goes."""
    tmp = slicer.vtkMRMLScalarVolumeNode()
    tmp.SetName(name)
    update_volume_node(tmp, image)
    seq.SetDataNodeAtValue(tmp, value)


def _add_transform_item(seq, field: np.ndarray, geometry: Geometry, value: str, name: str) -> None:
    tmp = slicer.vtkMRMLGridTransformNode()
    tmp.SetName(name)
    grid_transform_node_from_field(None, field, geometry, name, node=tmp)
    seq.SetDataNodeAtValue(tmp, value)


# ------------------------------------------------------------------ results
def read_sequence_summary(outdir: str | os.PathLike) -> dict:
    """The summary of a finished ``deeplungreg sequence`` run in ``outdir`` (``sequence.json``), checked: every
    registered phase's folder holds its displacement field, warped image and Jacobian.

    Raises:
        DeepLungRegError: one line when the folder, the summary or a phase's file is missing, or the summary is damaged.
    """
    owner = "load_sequence_results"
    out = Path(outdir)
    path = out / SEQUENCE_FILE
    if not out.is_dir():
        raise DeepLungRegError(f"{owner}: {out} {'is not a folder' if out.exists() else 'does not exist'}")
    if not path.is_file():
        raise DeepLungRegError(f"{owner}: {out} holds no {SEQUENCE_FILE}: not a finished 'deeplungreg sequence' run "
                               "(a cancelled run leaves its finished phases but no summary)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepLungRegError(f"{owner}: cannot read {path} ({exc})") from exc
    try:
        rows = summary["phases"]
        n, ref = int(summary["n_phases"]), int(summary["reference"])
        if len(rows) != n or [int(r["index"]) for r in rows] != list(range(n)) or not 0 <= ref < n or not rows[ref].get("reference"):
            raise ValueError("its phases do not agree with n_phases and reference")
        for r in rows:
            str(r["name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DeepLungRegError(f"{owner}: {path} is incomplete or damaged ({type(exc).__name__}: {exc})") from exc
    for r in rows:
        if r.get("reference"):
            continue
        folder = out / (r.get("folder") or phase_folder(int(r["index"])))
        missing = [f for f in PHASE_FILES if not (folder / f).is_file()]
        if missing:
            raise DeepLungRegError(f"{owner}: {folder} lacks {', '.join(missing)}: the run in {out} is incomplete")
    return summary


def _tag(node, role: str, out: Path) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(FOLDER_ATTRIBUTE, str(out))


def _reference_image(summary: dict, phases_node, phases: Phases | None, names: list[str], out: Path) -> Image:
    """The reference phase's image, from the sequence node, the phases, or the 4D-CT the run read (when it is there)."""
    owner = "load_sequence_results"
    ref = int(summary["reference"])
    if phases_node is not None:
        node = phases_node.GetNthDataNode(ref)
        _check_phase_node(node, _sequence_what(phases_node), names[ref])
        return image_from_volume_node(node)
    if phases is not None:
        return phases[ref]
    source = Path(str(summary.get("source", "")))
    if str(source) and source.exists():
        found = read_phases(source)
        if len(found) == len(names):
            return found[ref]
    raise DeepLungRegError(f"{owner}: the reference phase {names[ref]} is needed for the warped sequence, and the 4D-CT the run "
                           f"in {out} read ({source}) is not there: give the 4D-CT's sequence node (phases_node) or its phases")


def load_sequence_results(scene, outdir: str | os.PathLike, *, phases_node=None, phases: Phases | None = None, browser_node=None,
                          progress: Callable[[str, float], None] | None = None) -> dict:
    """Load a finished :func:`~DeepLungRegLib.sequence.register_sequence` output folder into the scene.

    Made, one item per phase (the index values of ``phases_node`` where given, else the phase names), in the
    order of the cycle:

    * ``"transforms"``: a sequence of grid transforms (``phase_XX/displacement.nii.gz``; the reference's is a zero
      field), each from the reference's grid to its phase (resampling direction, "from parent": a phase's
      volume placed under its transform is shown on the reference, as the warped volume);
    * ``"warped"``: each phase warped onto the reference (``warped.nii.gz``; the reference phase itself);
    * ``"jacobians"``: the Jacobian determinant per phase (``jacobian.nii.gz``; ones for the reference);
    * ``"browser"``: one sequence browser with these three (and ``phases_node``); ``browser_node`` where given,
      else a new one whose master is ``phases_node`` (or the transform sequence). Its proxy nodes, made by the
      Sequences module logic, are ``"transform_proxy"``, ``"warped_proxy"`` and ``"jacobian_proxy"`` (where made);
    * ``"volume_table"`` (index, phase, lung volume in mL, the reference's volume in its own column) and
      ``"volume_chart"`` with ``"volume_series"`` and ``"reference_series"``: the lung volume curve, the tidal
      volume in the chart's title;
    * ``"tre_table"``: TRE per phase (mean before and after, 95th percentile and max after), where the run had landmarks.

    Args:
        scene: the MRML scene.
        outdir: the run's output folder (``sequence.json``, ``phase_XX/``).
        phases_node: the 4D-CT's volume sequence node the run registered (its phase names must match the run's).
        phases: the run's :class:`~DeepLungRegLib.io.phases.Phases` (for the reference image without ``phases_node``;
            without both, the 4D-CT the run read, where it still is).
        progress: ``progress(stage, fraction)`` per phase.

    Returns:
        the nodes by the names above (``"tre_table"`` and proxies only where made).

    Raises:
        DeepLungRegError: one line for an absent or incomplete run, results on another grid than the phases, phases
            that are not the run's; the scene then holds no node of this load.
    """
    owner = "load_sequence_results"
    out = Path(outdir)
    summary = read_sequence_summary(out)
    say = progress or (lambda stage, fraction: None)
    rows = summary["phases"]
    n, ref = int(summary["n_phases"]), int(summary["reference"])
    names = [str(r["name"]) for r in rows]
    like = phases_node if phases_node is not None else (browser_node.GetMasterSequenceNode() if browser_node is not None else None)
    if phases_node is not None:
        if not phases_node.IsA("vtkMRMLSequenceNode"):
            raise DeepLungRegError(f"{owner}: phases_node {phases_node.GetName()!r} is a {phases_node.GetClassName()}, not a sequence node")
        if list(phase_names(phases_node)) != names:
            raise DeepLungRegError(f"{owner}: the run in {out} registered the phases {', '.join(names)}; "
                                   f"{_sequence_what(phases_node)} holds {', '.join(phase_names(phases_node)) or 'none'}")
    elif phases is not None and list(phases.names) != names:
        raise DeepLungRegError(f"{owner}: the run in {out} registered the phases {', '.join(names)}; the phases given are "
                               f"{', '.join(phases.names)}")
    if like is not None and like.GetNumberOfDataNodes() != n:
        raise DeepLungRegError(f"{owner}: the browser's sequence {like.GetName()!r} has {like.GetNumberOfDataNodes()} items; "
                               f"the run in {out} has {n} phases")
    values = [like.GetNthIndexValue(i) for i in range(n)] if like is not None else names
    ref_image = _reference_image(summary, phases_node, phases, names, out)
    grid = ref_image.geometry
    base = phases_node.GetName() if phases_node is not None else Path(str(summary.get("source", out.name))).name or out.name

    created: list = []

    def new_node(cls: str, name: str, role: str):
        node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name))
        created.append(node)
        _tag(node, role, out)
        return node

    def new_sequence(name: str, role: str):
        seq = new_node("vtkMRMLSequenceNode", name, role)
        if like is not None:
            seq.SetIndexName(like.GetIndexName())
            seq.SetIndexUnit(like.GetIndexUnit())
            seq.SetIndexType(like.GetIndexType())
        else:
            seq.SetIndexName("phase")
            seq.SetIndexUnit("")
            seq.SetIndexType(slicer.vtkMRMLSequenceNode.TextIndex)
        return seq

    nodes: dict = {}
    added: list = []  # sequences this load added to the browser
    try:
        transforms = new_sequence(f"{base} transforms", "sequence_transforms")
        warped = new_sequence(f"{base} warped", "sequence_warped")
        jacobians = new_sequence(f"{base} Jacobian", "sequence_jacobians")
        half_width = 0.1
        for i in range(n):
            say(f"loading phase {names[i]} ({i + 1}/{n})", i / n)
            if i == ref:
                _add_transform_item(transforms, np.zeros((*grid.shape, 3), np.float32), grid, values[i], names[i])
                _add_volume_item(warped, ref_image, values[i], names[i])
                _add_volume_item(jacobians, Image(np.ones(grid.shape, np.float32), grid), values[i], names[i])
                continue
            folder = out / (rows[i].get("folder") or phase_folder(i))
            field, fgrid = read_field(folder / "displacement.nii.gz")
            if not fgrid.same_as(grid):
                raise DeepLungRegError(f"{owner}: {folder / 'displacement.nii.gz'} is not on the reference phase's grid "
                                       f"(size {fgrid.size} vs {grid.size}): were the results made from another 4D-CT?")
            _add_transform_item(transforms, field, fgrid, values[i], names[i])
            del field
            for seq, file in ((warped, "warped.nii.gz"), (jacobians, "jacobian.nii.gz")):
                image = read_image(folder / file)
                if not image.geometry.same_as(grid):
                    raise DeepLungRegError(f"{owner}: {folder / file} is not on the reference phase's grid: "
                                           "were the results made from another 4D-CT?")
                if seq is jacobians:
                    half_width = max(half_width, _half_width(image.array[::2, ::2, ::2], 1.0, 0.1))
                _add_volume_item(seq, image, values[i], names[i])
                del image
        del ref_image
        nodes.update(transforms=transforms, warped=warped, jacobians=jacobians)
        say("volume curve", 0.95)
        nodes.update(_volume_curve(summary, names, base, new_node))
        tre = _tre_table(summary, base, new_node)
        if tre is not None:
            nodes["tre_table"] = tre
        say("sequence browser", 0.98)
        if browser_node is None:
            browser_node = new_node("vtkMRMLSequenceBrowserNode", f"{base} DeepLungReg", "sequence_browser")
            browser_node.SetAndObserveMasterSequenceNodeID((phases_node or transforms).GetID())
        for seq in ((phases_node,) if phases_node is not None else ()) + (transforms, warped, jacobians):
            if not browser_node.IsSynchronizedSequenceNode(seq, True):
                browser_node.AddSynchronizedSequenceNodeID(seq.GetID())
                added.append(seq)
        browser_node.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary))
        browser_node.SetSelectedItemNumber(max(browser_node.GetSelectedItemNumber(), 0))
        browser_node.Modified()  # the Sequences logic makes or updates the proxy nodes
        nodes["browser"] = browser_node
        for key, seq in (("transform_proxy", transforms), ("warped_proxy", warped), ("jacobian_proxy", jacobians)):
            proxy = browser_node.GetProxyNode(seq)
            if proxy is not None:
                nodes[key] = proxy
        if "jacobian_proxy" in nodes:
            _show_map(scene, nodes["jacobian_proxy"], 1.0, half_width, "Jacobian")
    except BaseException:
        if browser_node is not None:  # a browser of the user's is as it was
            for seq in added:
                browser_node.RemoveSynchronizedSequenceNode(seq.GetID())
        for node in reversed(created):
            if node.GetScene() is scene:
                scene.RemoveNode(node)
        raise
    say("done", 1.0)
    return nodes


def _volume_curve(summary: dict, names: list[str], base: str, new_node) -> dict:
    """The lung volume curve: a table (index, phase, lung volume, the reference's in its own column) and a chart."""
    ref = int(summary["reference"])
    volumes = [math.nan if v is None else float(v) for v in summary.get("lung_volume_ml", [None] * len(names))]
    table = new_node("vtkMRMLTableNode", f"{base} lung volume", "sequence_volume_table")
    table_node_from_columns(table.GetScene(), {
        "index": [float(i) for i in range(len(names))], "phase": names, "lung_volume_ml": volumes,
        "reference_ml": [v if i == ref else math.nan for i, v in enumerate(volumes)]}, "", node=table)
    table.SetColumnUnitLabel("lung_volume_ml", "mL")
    table.SetColumnUnitLabel("reference_ml", "mL")
    series = new_node("vtkMRMLPlotSeriesNode", f"{base} lung volume", "sequence_volume_series")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("index")
    series.SetYColumnName("lung_volume_ml")
    series.SetLabelColumnName("phase")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    series.SetColor(0.13, 0.3, 0.7)
    marker = new_node("vtkMRMLPlotSeriesNode", f"{base} reference phase", "sequence_reference_series")
    marker.SetAndObserveTableNodeID(table.GetID())
    marker.SetXColumnName("index")
    marker.SetYColumnName("reference_ml")
    marker.SetLabelColumnName("phase")
    marker.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    marker.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
    marker.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleSquare)
    marker.SetMarkerSize(12)
    marker.SetColor(0.75, 0.12, 0.12)
    chart = new_node("vtkMRMLPlotChartNode", f"{base} lung volume", "sequence_volume_chart")
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.AddAndObservePlotSeriesNodeID(marker.GetID())
    tidal = summary.get("tidal_volume_ml")
    chart.SetTitle(f"Lung volume per phase: tidal volume {'unknown' if tidal is None else f'{tidal:.0f} mL'}, "
                   f"reference {summary.get('reference_name', names[ref])}")
    chart.SetXAxisTitle("phase (index)")
    chart.SetYAxisTitle("lung volume (mL)")
    return {"volume_table": table, "volume_series": series, "reference_series": marker, "volume_chart": chart}


#: TRE table columns: (column name, TRE summary, key).
TRE_COLUMNS = (("tre_before_mm", "tre_before", "mean"), ("tre_after_mm", "tre_after", "mean"),
               ("tre_after_p95_mm", "tre_after", "p95"), ("tre_after_max_mm", "tre_after", "max"))


def _tre_table(summary: dict, base: str, new_node):
    """TRE per registered phase (mean before and after, 95th percentile and max after), or ``None`` without landmarks."""
    rows = [r for r in summary["phases"] if "tre_after" in r and "tre_before" in r]
    if not rows:
        return None
    columns = {"index": [float(r["index"]) for r in rows], "phase": [str(r["name"]) for r in rows]}
    for column, which, key in TRE_COLUMNS:
        columns[column] = [float(r[which].get(key, math.nan)) for r in rows]
    columns["landmarks"] = [float(r["tre_after"].get("n", math.nan)) for r in rows]
    table = new_node("vtkMRMLTableNode", f"{base} TRE per phase", "sequence_tre_table")
    table_node_from_columns(table.GetScene(), columns, "", node=table)
    for column, _, _ in TRE_COLUMNS:
        table.SetColumnUnitLabel(column, "mm")
    return table


# ------------------------------------------------------------------ all together
def register_sequence_node(scene, sequence_node, outdir: str | os.PathLike, *, method: str, reference: int | None = None,
                           options: dict | None = None, landmarks=None, device: str = "auto", overwrite: bool = False,
                           browser_node=None, progress: Callable[[str, float], None] | None = None,
                           cancel: Callable[[], bool] | None = None, **run_options) -> tuple[dict, dict]:
    """Register every phase of the 4D-CT in ``sequence_node`` to a reference phase and load the results.

    :func:`phases_from_sequence_node`, then :func:`~DeepLungRegLib.sequence.register_sequence` into ``outdir`` (one
    phase at a time), then :func:`load_sequence_results` with ``sequence_node`` in the browser.

    Args:
        reference: the reference phase's index; ``None``: the smallest lung volume (end-exhale).
        method, options, device, overwrite: as for :func:`~DeepLungRegLib.sequence.register_sequence`.
        landmarks: ``{phase index: (N, 3) LPS mm}``, or a folder of landmark files, one per phase
            (:func:`~DeepLungRegLib.sequence.read_phase_landmarks`).
        browser_node: the browser to add the result sequences to (else a new one).
        progress: ``progress(stage, fraction)``: the registration up to 0.9, the loading after.
        cancel: returns True to stop (:class:`~DeepLungRegLib.errors.RegistrationCancelled`): the scene gets no node,
            ``outdir`` keeps the phases finished so far.
        **run_options: further keywords of :func:`~DeepLungRegLib.sequence.register_sequence` (``report=True``, ...).

    Returns:
        ``(summary, nodes)``: the run's summary (``sequence.json``) and the nodes of :func:`load_sequence_results`.
    """
    phases = phases_from_sequence_node(sequence_node)
    if landmarks is not None and not isinstance(landmarks, dict):
        landmarks = read_phase_landmarks(landmarks, phases.names)
    say = progress or (lambda stage, fraction: None)
    summary = register_sequence(phases, outdir, reference=reference, method=method, options=options, device=device,
                                landmarks=landmarks, overwrite=overwrite, cancel=cancel,
                                progress=lambda stage, f: say(stage, 0.9 * f), **run_options)
    nodes = load_sequence_results(scene, outdir, phases_node=sequence_node, phases=phases, browser_node=browser_node,
                                  progress=lambda stage, f: say(stage, 0.9 + 0.1 * f))
    return summary, nodes
