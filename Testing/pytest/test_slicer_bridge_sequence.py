"""A 4D-CT as a Slicer volume sequence (DeepLungRegLib/slicer_bridge/sequence.py) on slicer-core: the phases read from
the sequence equal the files', bad sequences get one line, and a registration of a small cycle gives a transform,
a warped and a Jacobian sequence in one browser that agree with the files the run wrote; Cancel adds no node."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import DeepLungRegError, Image
from DeepLungRegLib.errors import RegistrationCancelled
from DeepLungRegLib.geometry.grid import lps_to_ras, ras_to_lps
from DeepLungRegLib.io import read_image
from DeepLungRegLib.io.fields import read_field
from DeepLungRegLib.io.phases import read_phases
from DeepLungRegLib.transforms import sample_field_at_points

from helpers_sequence import FAST_AFFINE, cycle4  # noqa: F401  (a fixture)
from helpers_slicer import bridge, hs  # noqa: F401  (fixtures)


@pytest.fixture
def seqmod(slicer_core):
    from DeepLungRegLib.slicer_bridge import sequence

    return sequence


def _write_phases(folder, geometry, n=3):
    """``n`` phase files on ``geometry`` (random int16 voxels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for t in range(n):
        img = sitk.GetImageFromArray(rng.integers(-1000, 400, geometry.shape).astype(np.int16))
        img.SetSpacing(geometry.spacing)
        img.SetOrigin(geometry.origin)
        img.SetDirection(geometry.direction)
        sitk.WriteImage(img, str(folder / f"phase_{t:02d}.nrrd"))
    return folder


def _scene_nodes(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_phases_from_a_sequence_node_equal_the_files(seqmod, hs, oblique, tmp_path):
    files = read_phases(_write_phases(tmp_path / "in", oblique))
    seq = seqmod.sequence_node_from_phases(hs.scene, files, "4D-CT")
    assert seq.GetNumberOfDataNodes() == 3 and [seq.GetNthIndexValue(i) for i in range(3)] == list(files.names)
    phases = seqmod.phases_from_sequence_node(seq)
    assert len(phases) == 3 and phases.names == files.names
    assert str(phases.source) == "Slicer sequence 4D-CT" and not phases.source.exists()
    for i in range(3):
        a, b = phases[i], files[i]
        assert a.array.dtype == b.array.dtype and np.array_equal(a.array, b.array)
        assert a.geometry.same_as(b.geometry, tol=1e-9) and a.geometry.same_as(oblique, tol=1e-9)
    # read lazily: a phase taken out of the sequence after the check is refused when it is read
    seq.RemoveDataNodeAtValue(files.names[1])
    with pytest.raises(DeepLungRegError, match="phase phase_01 is no longer in Slicer sequence '4D-CT'"):
        phases[1]


def test_phase_names_are_the_index_values(seqmod, bridge, hs, oblique):
    seq = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")  # Slicer's default index: time in s, numeric
    for t in (0.0, 0.5, 1.0):
        vol = bridge.volume_node_from_image(hs.scene, Image(np.full(oblique.shape, t, np.float32), oblique), "v")
        seq.SetDataNodeAtValue(vol, f"{t:g}")
        hs.scene.RemoveNode(vol)
    phases = seqmod.phases_from_sequence_node(seq)
    assert phases.names == ("0", "0.5", "1")
    assert [float(phases[i].array.max()) for i in range(3)] == [0.0, 0.5, 1.0]


def test_bad_sequences_get_one_line(seqmod, bridge, hs, oblique, tmp_path):
    one = seqmod.sequence_node_from_phases(hs.scene, read_phases(_write_phases(tmp_path / "a", oblique, n=2)), "one")
    one.RemoveDataNodeAtValue("phase_01")
    with pytest.raises(DeepLungRegError, match=r"^phases_from_sequence_node: Slicer sequence 'one' holds a single phase \(phase_00\); "
                                               "a 4D-CT needs at least two$"):
        seqmod.phases_from_sequence_node(one)
    # phases on different grids: read_phases itself refuses them, so the sequence is made item by item
    moved = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "moved")
    moved.SetIndexType(moved.TextIndex)
    for t in range(3):
        g = oblique if t != 2 else type(oblique)(oblique.size, oblique.spacing, tuple(np.array(oblique.origin) + 1.5), oblique.direction)
        vol = bridge.volume_node_from_image(hs.scene, Image(np.zeros(g.shape, np.int16), g), "v")
        moved.SetDataNodeAtValue(vol, f"phase_{t:02d}")
        hs.scene.RemoveNode(vol)
    with pytest.raises(DeepLungRegError, match=r"^phases_from_sequence_node: Slicer sequence 'moved': phase phase_02 is on a different "
                                               r"grid than phase phase_00 \(origin .*\); all phases must share one grid$"):
        seqmod.phases_from_sequence_node(moved)
    transforms = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "motion")
    for t in range(2):
        tn = bridge.grid_transform_node_from_field(hs.scene, np.zeros((*oblique.shape, 3), np.float32), oblique, "T")
        transforms.SetDataNodeAtValue(tn, str(t))
        hs.scene.RemoveNode(tn)
    with pytest.raises(DeepLungRegError, match=r"^phases_from_sequence_node: Slicer sequence 'motion' holds vtkMRMLGridTransformNode "
                                               "at phase 0, not a scalar volume"):
        seqmod.phases_from_sequence_node(transforms)
    labels = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "lungs")
    for t in range(2):
        lab = bridge.volume_node_from_image(hs.scene, Image(np.zeros(oblique.shape, np.uint8), oblique), "l", labelmap=True)
        labels.SetDataNodeAtValue(lab, str(t))
        hs.scene.RemoveNode(lab)
    with pytest.raises(DeepLungRegError, match="holds label maps .phase 0., not CT volumes"):
        seqmod.phases_from_sequence_node(labels)
    vol = bridge.volume_node_from_image(hs.scene, Image(np.zeros(oblique.shape, np.int16), oblique), "a volume")
    with pytest.raises(DeepLungRegError, match=r"'a volume', a vtkMRMLScalarVolumeNode is given, not a sequence node"):
        seqmod.phases_from_sequence_node(vol)
    with pytest.raises(DeepLungRegError, match="no node is given, not a sequence node"):
        seqmod.phases_from_sequence_node(None)


def test_results_that_are_absent_or_incomplete_are_refused_and_add_no_node(seqmod, hs, oblique, tmp_path):
    seq = seqmod.sequence_node_from_phases(hs.scene, read_phases(_write_phases(tmp_path / "in", oblique, n=2)), "4D-CT")
    out = tmp_path / "out"
    out.mkdir()
    before = _scene_nodes(hs.scene)
    with pytest.raises(DeepLungRegError, match="holds no sequence.json: not a finished 'deeplungreg sequence' run"):
        seqmod.load_sequence_results(hs.scene, out, phases_node=seq)
    (out / "sequence.json").write_text('{"phases": [')
    with pytest.raises(DeepLungRegError, match="cannot read .*sequence.json"):
        seqmod.load_sequence_results(hs.scene, out, phases_node=seq)
    rows = [{"index": 0, "name": "phase_00", "folder": None, "lung_volume_ml": 10.0, "reference": True},
            {"index": 1, "name": "phase_01", "folder": "phase_01", "lung_volume_ml": 12.0}]
    (out / "sequence.json").write_text(json.dumps({"phases": rows, "n_phases": 3, "reference": 0}))
    with pytest.raises(DeepLungRegError, match="sequence.json is incomplete or damaged"):
        seqmod.load_sequence_results(hs.scene, out, phases_node=seq)
    (out / "sequence.json").write_text(json.dumps({"phases": rows, "n_phases": 2, "reference": 0, "source": "x",
                                                   "lung_volume_ml": [10.0, 12.0], "tidal_volume_ml": 2.0}))
    (out / "phase_01").mkdir()
    (out / "phase_01" / "warped.nii.gz").write_bytes(b"")
    with pytest.raises(DeepLungRegError, match=r"lacks displacement.nii.gz, jacobian.nii.gz: the run in .* is incomplete"):
        seqmod.load_sequence_results(hs.scene, out, phases_node=seq)
    for name in ("displacement.nii.gz", "jacobian.nii.gz"):
        (out / "phase_01" / name).write_bytes(b"")
    with pytest.raises(DeepLungRegError, match="read_field: .*displacement.nii.gz"):  # damaged: found while loading
        seqmod.load_sequence_results(hs.scene, out, phases_node=seq)
    assert _scene_nodes(hs.scene) == before  # the sequences made before it went again
    three = seqmod.sequence_node_from_phases(hs.scene, read_phases(_write_phases(tmp_path / "in3", oblique)), "another")
    before = _scene_nodes(hs.scene)
    with pytest.raises(DeepLungRegError, match=r"the run in .* registered the phases phase_00, phase_01; Slicer sequence 'another' "
                                               "holds phase_00, phase_01, phase_02$"):
        seqmod.load_sequence_results(hs.scene, out, phases_node=three)
    with pytest.raises(DeepLungRegError, match="the reference phase phase_00 is needed for the warped sequence"):
        seqmod.load_sequence_results(hs.scene, out)  # the run's source, "x", is not there
    (out / "phase_01" / "displacement.nii.gz").unlink()
    with pytest.raises(DeepLungRegError, match=r"phase_01 lacks displacement.nii.gz: the run in .* is incomplete"):
        seqmod.load_sequence_results(hs.scene, out, phases_node=seq)
    assert _scene_nodes(hs.scene) == before


def _apply(transform, points_lps: np.ndarray) -> np.ndarray:
    """Points (LPS) through a vtk transform as Slicer applies it (in RAS)."""
    return np.array([ras_to_lps(np.array(transform.TransformPoint(lps_to_ras(p[None])[0]))[None])[0] for p in points_lps])


@pytest.mark.slow
def test_a_registered_cycle_plays_in_one_browser(seqmod, bridge, hs, cycle4, tmp_path):
    folder = cycle4[0]
    files = read_phases(folder / "phases")
    seq = seqmod.sequence_node_from_phases(hs.scene, files, "4D-CT")
    out = tmp_path / "out"
    seen = []
    summary, nodes = seqmod.register_sequence_node(hs.scene, seq, out, method="affine", options=FAST_AFFINE,
                                                   landmarks=folder / "landmarks", progress=lambda s, f: seen.append((s, f)))
    n, ref = 4, summary["reference"]
    assert ref == 2 and summary["source"] == "Slicer sequence 4D-CT"  # end-exhale, found from the lung volumes
    loading = [f for s, f in seen[[s for s, _ in seen].index("loading phase phase_00 (1/4)"):]]  # after the registration's 0.9
    assert seen[-1] == ("done", 1.0) and loading[0] == pytest.approx(0.9) and loading == sorted(loading)
    assert {s for s, _ in seen} >= {f"loading phase {name} ({i + 1}/4)" for i, name in enumerate(files.names)}
    values = [seq.GetNthIndexValue(i) for i in range(n)]
    browser = nodes["browser"]
    assert browser.GetMasterSequenceNode() is seq and browser.GetNumberOfItems() == n
    for key in ("transforms", "warped", "jacobians"):
        s = nodes[key]
        assert s.GetNumberOfDataNodes() == n and [s.GetNthIndexValue(i) for i in range(n)] == values
        assert browser.IsSynchronizedSequenceNode(s, True)
    assert nodes["transforms"].GetDataNodeClassName() == "vtkMRMLGridTransformNode"
    # the reference: a zero field, the reference phase itself, a Jacobian of ones
    u_ref, g_ref = bridge.field_from_grid_transform_node(nodes["transforms"].GetNthDataNode(ref))
    assert g_ref.same_as(files[ref].geometry) and not np.any(u_ref)
    assert np.array_equal(bridge.image_from_volume_node(nodes["warped"].GetNthDataNode(ref)).array, files[ref].array)
    assert np.all(bridge.image_from_volume_node(nodes["jacobians"].GetNthDataNode(ref)).array == 1.0)
    # a phase's transform moves points as its displacement.nii.gz says (x_phase = x_ref + u(x_ref)), also as the
    # browser's proxy once that phase is selected
    u, g = read_field(out / "phase_01" / "displacement.nii.gz")
    assert np.abs(u).max() > 1.0  # a real motion, not a zero field
    p = g.index_to_world(np.array([[3.0, 4.0, 5.0], [10.5, 8.25, 6.0], [g.size[0] / 2, g.size[1] / 2, g.size[2] / 2]]))
    expect = p + sample_field_at_points(u, g, p)
    assert np.abs(_apply(nodes["transforms"].GetNthDataNode(1).GetTransformFromParent(), p) - expect).max() < 1e-3
    browser.SetSelectedItemNumber(1)
    proxy = nodes["transform_proxy"]
    assert np.abs(_apply(proxy.GetTransformFromParent(), p) - expect).max() < 1e-3
    assert np.array_equal(bridge.image_from_volume_node(nodes["warped_proxy"]).array,
                          read_image(out / "phase_01" / "warped.nii.gz").array)
    browser.SetSelectedItemNumber(ref)
    assert not np.any(bridge.field_from_grid_transform_node(proxy)[0])
    # the volume curve: the table is volume_curve.csv; the chart marks the reference and gives the tidal volume
    with open(out / "volume_curve.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))[:n]
    table = bridge.columns_from_table_node(nodes["volume_table"])
    assert table["phase"] == [r["name"] for r in csv_rows] == list(files.names)
    assert np.allclose(table["lung_volume_ml"], [float(r["lung_volume_ml"]) for r in csv_rows], atol=1e-3)
    assert np.isnan(table["reference_ml"][0]) and table["reference_ml"][ref] == table["lung_volume_ml"][ref]
    chart = nodes["volume_chart"]
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert f"tidal volume {summary['tidal_volume_ml']:.0f} mL" in chart.GetTitle() and "reference phase_02" in chart.GetTitle()
    # TRE per phase, where the run had landmarks: the summary's
    tre = bridge.columns_from_table_node(nodes["tre_table"])
    rows = [r for r in summary["phases"] if not r.get("reference")]
    assert tre["phase"] == [r["name"] for r in rows]
    assert np.allclose(tre["tre_after_mm"], [r["tre_after"]["mean"] for r in rows])
    assert np.allclose(tre["tre_before_mm"], [r["tre_before"]["mean"] for r in rows])
    # the folder loads again into another scene, with the phases read from the files (the run's source is the
    # sequence, which that scene lacks); without them, one line
    other = bridge.new_scene()
    with pytest.raises(DeepLungRegError, match="the reference phase phase_02 is needed for the warped sequence"):
        seqmod.load_sequence_results(other.scene, out)
    again = seqmod.load_sequence_results(other.scene, out, phases=files)
    assert again["browser"].GetMasterSequenceNode() is again["transforms"] and again["browser"].GetNumberOfItems() == n
    assert [again["warped"].GetNthIndexValue(i) for i in range(n)] == list(files.names)


@pytest.mark.slow
def test_cancel_after_the_first_phase_adds_no_node(seqmod, hs, cycle4, tmp_path):
    seq = seqmod.sequence_node_from_phases(hs.scene, read_phases(cycle4[0] / "phases"), "4D-CT")
    out = tmp_path / "out"
    before = _scene_nodes(hs.scene)
    with pytest.raises(RegistrationCancelled):
        seqmod.register_sequence_node(hs.scene, seq, out, method="affine", options=FAST_AFFINE, reference=2,
                                      cancel=lambda: (out / "phase_00" / "metrics.json").exists())
    assert _scene_nodes(hs.scene) == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["phase_00"]  # no summary
