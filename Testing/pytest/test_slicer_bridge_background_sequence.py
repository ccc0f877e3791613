"""A 4D-CT registered in the worker process (DeepLungRegLib/slicer_bridge/background.py, BackgroundSequence) on slicer-core:
a finished run ends with the nodes of the in-process path; a cancelled one leaves the scene as it was and only complete
phase folders; a failing one gives one line."""

from __future__ import annotations

import time

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.io.phases import read_phases

from helpers_sequence import FAST_AFFINE, cycle4, tiny_phases  # noqa: F401  (a fixture)
from helpers_slicer import bridge, hs  # noqa: F401  (fixtures)

#: what a registered phase's folder holds when it is complete
PHASE_FILES = ("metrics.json", "displacement.nii.gz", "warped.nii.gz", "jacobian.nii.gz")


@pytest.fixture
def bg(slicer_core):
    from DeepLungRegLib.slicer_bridge import background

    return background


def _scene_nodes(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _wait_until(condition, run, limit: float = 300.0) -> None:
    """Poll ``run`` until ``condition()`` holds (or the run ended, or ``limit`` s passed: a test failure)."""
    end = time.monotonic() + limit
    while not condition() and run.poll() == "running" and time.monotonic() < end:
        time.sleep(0.05)


@pytest.mark.slow
def test_a_background_run_ends_with_the_nodes_of_the_foreground_path(bg, bridge, hs, cycle4, tmp_path):
    from DeepLungRegLib.slicer_bridge import sequence as seqmod

    folder = cycle4[0]
    seq = seqmod.sequence_node_from_phases(hs.scene, read_phases(folder / "phases"), "4D-CT")
    fg_summary, fg = seqmod.register_sequence_node(hs.scene, seq, tmp_path / "fg", method="affine", options=FAST_AFFINE,
                                                   landmarks=folder / "landmarks")
    work = tmp_path / "work"
    work.mkdir()
    seen = []
    run = bg.BackgroundSequence(hs.scene, seq, tmp_path / "bg", "affine", options=FAST_AFFINE, landmarks=folder / "landmarks",
                                workdir=work)
    assert run.state == "running" and run.phases.names == tuple(seq.GetNthIndexValue(i) for i in range(4))
    summary, nodes = run.wait(progress=lambda s, f: seen.append((s, f)))
    assert run.state == "done" and not list(work.iterdir())  # the phases written for the worker are gone
    # progress: the phases by name from the worker, then the loading, never backwards, to the end
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and seen[-1] == ("done", 1.0)
    assert any(s.startswith("phase phase_00 (1/3): ") for s, _ in seen) and ("loading phase phase_03 (4/4)", pytest.approx(0.975)) in seen
    # the same run as the foreground's: the reference found, the names and source the sequence's, the same files
    for key in ("reference", "reference_name", "n_phases", "source", "method", "start", "end_inhale"):
        assert summary[key] == fg_summary[key], key
    assert summary["source"] == "Slicer sequence 4D-CT"  # not the private copies
    assert np.allclose(summary["lung_volume_ml"], fg_summary["lung_volume_ml"])
    assert sorted(p.name for p in (tmp_path / "bg").iterdir()) == sorted(p.name for p in (tmp_path / "fg").iterdir())
    # and the same nodes: by role, class, items, index values and content
    assert sorted(nodes) == sorted(fg)
    for key, node in nodes.items():
        other = fg[key]
        assert node.GetClassName() == other.GetClassName() and node is not other, key
        if node.IsA("vtkMRMLSequenceNode"):
            assert [node.GetNthIndexValue(i) for i in range(4)] == [other.GetNthIndexValue(i) for i in range(4)], key
    for i in range(4):
        a = bridge.image_from_volume_node(nodes["warped"].GetNthDataNode(i))
        b = bridge.image_from_volume_node(fg["warped"].GetNthDataNode(i))
        assert a.geometry.same_as(b.geometry) and np.abs(a.array.astype(float) - b.array).mean() < 5.0  # HU, two processes
        ua, _ = bridge.field_from_grid_transform_node(nodes["transforms"].GetNthDataNode(i))
        ub, _ = bridge.field_from_grid_transform_node(fg["transforms"].GetNthDataNode(i))
        assert np.abs(ua - ub).max() < 0.5  # mm
    assert nodes["browser"].GetMasterSequenceNode() is seq and nodes["browser"].GetNumberOfItems() == 4
    for table in ("volume_table", "tre_table"):
        a, b = (bridge.columns_from_table_node(n[table]) for n in (nodes, fg))
        assert a["phase"] == b["phase"]
    assert np.allclose(bridge.columns_from_table_node(nodes["tre_table"])["tre_after_mm"],
                       bridge.columns_from_table_node(fg["tre_table"])["tre_after_mm"], atol=0.3)


@pytest.mark.slow
def test_cancel_mid_run_leaves_the_scene_and_only_complete_phase_folders(bg, hs, cycle4, tmp_path):
    from DeepLungRegLib.slicer_bridge.sequence import sequence_node_from_phases

    seq = sequence_node_from_phases(hs.scene, read_phases(cycle4[0] / "phases"), "4D-CT")
    before = _scene_nodes(hs.scene)
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    run = bg.BackgroundSequence(hs.scene, seq, out, "affine", options=FAST_AFFINE, reference=2, workdir=work)
    _wait_until(lambda: (out / "phase_00" / "metrics.json").exists(), run)
    assert run.state == "running" and run.fraction < 0.9
    run.cancel()
    assert run.state == "cancelled" and run.worker.returncode is not None
    assert _scene_nodes(hs.scene) == before and not list(work.iterdir())
    folders = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert "phase_00" in folders and "sequence.json" not in folders and len(folders) < 3
    for name in folders:  # every phase folder is complete: the one under way went
        assert name.startswith("phase_") and all((out / name / f).is_file() for f in PHASE_FILES), sorted(p.name for p in (out / name).iterdir())
    assert not [p.name for p in out.iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging folder
    with pytest.raises(DeepLungRegError, match="sequence: the registration cancelled"):
        run.finish()
    assert _scene_nodes(hs.scene) == before


def test_a_bad_setting_is_refused_in_one_line_before_the_worker_starts(bg, hs, tmp_path):
    phases = tiny_phases(tmp_path / "in")
    work = tmp_path / "work"
    work.mkdir()
    before = _scene_nodes(hs.scene)
    for kwargs, words in (({"options": {"levels_mm": "x"}}, "levels_mm"), ({"start": "middle"}, "start must be one of"),
                          ({"reference": 4}, "reference phase must be an index from 0 to 3")):
        with pytest.raises(DeepLungRegError, match=words) as err:
            bg.BackgroundSequence(hs.scene, phases, tmp_path / "out", "affine", workdir=work, **kwargs)
        assert "\n" not in str(err.value)
    assert not list(work.iterdir()) and not (tmp_path / "out").exists() and _scene_nodes(hs.scene) == before


@pytest.mark.slow
def test_a_run_that_fails_in_the_worker_gives_one_line_and_no_node(bg, hs, tmp_path):
    """A 4D-CT given by its path, whose phases have no lungs to find the end-exhale phase by: the worker's error."""
    phases = tiny_phases(tmp_path / "in")
    work = tmp_path / "work"
    work.mkdir()
    before = _scene_nodes(hs.scene)
    run = bg.BackgroundSequence(hs.scene, phases, tmp_path / "out", "affine", options=FAST_AFFINE, workdir=work)
    with pytest.raises(DeepLungRegError, match=r"^sequence: no lung mask in phase phase_00 .*choose the reference") as err:
        run.wait()
    assert run.state == "failed" and "\n" not in str(err.value) and run.error == str(err.value)
    assert _scene_nodes(hs.scene) == before and not list(work.iterdir())
    assert not (tmp_path / "out" / "sequence.json").exists()


def test_the_worker_runs_a_request_by_its_kind():
    from DeepLungRegLib import worker

    assert worker.REQUEST_KINDS == {"register": worker.register_request, "sequence": worker.sequence_request}
    with pytest.raises(DeepLungRegError, match="unknown request kind \"pair\""):
        worker.handle_request({"kind": "pair"}, lambda s, f: None)
    with pytest.raises(DeepLungRegError, match="the request lacks 'phases'"):
        worker.handle_request({"kind": "sequence", "output": "x"}, lambda s, f: None)
    with pytest.raises(DeepLungRegError, match="the request lacks 'job'"):
        worker.handle_request({"output": "x"}, lambda s, f: None)
