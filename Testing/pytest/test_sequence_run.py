"""Registering a 4D-CT phase by phase (DeepLungRegLib.sequence.run): landmark files matched to phases (POPI's
names too), an interrupt or a cancel leaves no partial phase folder and no summary, bad arguments refused
before any work."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib.errors import DeepLungRegError, RegistrationCancelled
from DeepLungRegLib.io.phases import read_phases
from DeepLungRegLib.sequence import match_landmark_files, read_phase_landmarks, register_sequence
from helpers_sequence import FAST_AFFINE, cycle4, tiny_phases  # noqa: F401  (a fixture)


def _touch(folder, names):
    folder.mkdir()
    for n in names:
        (folder / n).write_text("0 0 0\n")
    return folder


def test_landmark_files_named_after_the_phases(tmp_path):
    folder = _touch(tmp_path / "lm", ["phase_01.csv", "phase_00.csv", "phase_10.csv", "notes.md"])
    m = match_landmark_files(folder, ("phase_00", "phase_01", "phase_02", "phase_10"))
    assert {i: p.name for i, p in m.items()} == {0: "phase_00.csv", 1: "phase_01.csv", 3: "phase_10.csv"}


def test_landmark_files_numbered_like_popi_or_in_order(tmp_path):
    folder = _touch(tmp_path / "lm", [f"{t:02d}-Landmarks.pts" for t in range(0, 100, 10)])
    by_number = match_landmark_files(folder, tuple(f"{t:02d}" for t in range(0, 100, 10)))
    assert by_number[1].name == "10-Landmarks.pts" and by_number[9].name == "90-Landmarks.pts"
    by_order = match_landmark_files(folder, tuple(f"phase_{t:02d}" for t in range(10)))  # 0..9 vs 0..90: natural order
    assert [by_order[i].name for i in range(10)] == [f"{t:02d}-Landmarks.pts" for t in range(0, 100, 10)]
    with pytest.raises(DeepLungRegError, match="the 10 landmark files in .* do not match the 4 phases"):
        match_landmark_files(folder, ("a", "b", "c", "d"))


def test_popi_landmarks_10_phases_of_41_points(shared_data):
    lm = read_phase_landmarks(shared_data / "popi" / "landmarks", tuple(f"{t:02d}" for t in range(0, 100, 10)))
    assert sorted(lm) == list(range(10))
    assert all(v.shape == (41, 3) for v in lm.values())
    assert np.abs(lm[5] - lm[0]).max() > 1.0  # the points move over the cycle


def test_landmark_files_of_different_lengths(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "p0.csv").write_text("x,y,z\n0,0,0\n1,1,1\n")
    (folder / "p1.csv").write_text("x,y,z\n0,0,0\n")
    with pytest.raises(DeepLungRegError, match=r"different numbers of points \(p1.csv: 1, p0.csv: 2\)"):
        read_phase_landmarks(folder, ("p0", "p1"))


def test_bad_reference_and_options_before_any_work(tmp_path):
    phases = read_phases(tiny_phases(tmp_path / "in"))
    with pytest.raises(DeepLungRegError, match="--reference must be a phase index from 0 to 3, got 4"):
        register_sequence(phases, tmp_path / "out", reference=4, method="affine")
    with pytest.raises(DeepLungRegError):
        register_sequence(phases, tmp_path / "out", method="affine", options={"no_such_option": 1})
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cancel_during_the_lung_volumes_writes_nothing(cycle4, tmp_path):
    phases = read_phases(cycle4[0] / "phases")
    seen = []
    with pytest.raises(RegistrationCancelled):
        register_sequence(phases, tmp_path / "out", method="affine", progress=lambda s, f: seen.append(s), cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2  # it stopped at the second phase's lung volume
    assert not (tmp_path / "out").exists()


def _leftovers(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".deeplungreg"))


@pytest.mark.slow
def test_an_interrupt_mid_phase_leaves_the_finished_phases_and_no_partial_one(cycle4, tmp_path):
    """Ctrl-C while the second phase writes its outputs: the first phase's folder is complete, the second's is
    gone (not half written), no summary, no staging folder or lock."""
    phases = read_phases(cycle4[0] / "phases")
    out = tmp_path / "out"
    stages = []

    def progress(stage: str, fraction: float) -> None:
        stages.append(stage)
        if stage.startswith("phase phase_01") and stage.endswith("Jacobian"):  # the field and warped image are staged
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        register_sequence(phases, out, method="affine", options=FAST_AFFINE, progress=progress)
    assert any(s.startswith("phase phase_00") for s in stages)  # progress per phase
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["phase_00"]
    assert (out / "phase_00" / "metrics.json").is_file() and (out / "phase_00" / "displacement.nii.gz").is_file()
    assert _leftovers(out) == [] and _leftovers(out / "phase_00") == []
    # a cancel between phases likewise
    out2 = tmp_path / "out2"
    with pytest.raises(RegistrationCancelled):
        register_sequence(phases, out2, method="affine", options=FAST_AFFINE, cancel=lambda: (out2 / "phase_00" / "metrics.json").exists())
    assert sorted(p.name for p in out2.iterdir() if not p.name.startswith(".")) == ["phase_00"]
    assert _leftovers(out2) == []
    # a rerun with --overwrite and phase 0 as the reference: the earlier run's phase_00 (a registration to phase 2)
    # goes, the user's file stays, the summary appears
    (out2 / "notes.txt").write_text("the user's")
    summary = register_sequence(phases, out2, reference=0, method="affine", options=FAST_AFFINE, overwrite=True)
    assert summary["reference"] == 0 and summary["reference_rule"] == "given"
    assert sorted(p.name for p in out2.iterdir() if p.is_dir()) == ["phase_01", "phase_02", "phase_03"]
    assert (out2 / "notes.txt").read_text() == "the user's" and (out2 / "sequence.json").is_file()


def test_the_input_folder_is_not_the_output_folder(tmp_path):
    """-o the 4D-CT's own folder wrote phase_XX/ into it (into the user's DICOM phase folders, where named phase_XX)."""
    src = tiny_phases(tmp_path / "in")
    before = sorted(p.name for p in src.iterdir())
    for out in (src, tmp_path / "in" / "."):
        with pytest.raises(DeepLungRegError, match="the output folder .* is the 4D-CT's own folder; choose another"):
            register_sequence(read_phases(src), out, reference=0, method="affine")
    assert sorted(p.name for p in src.iterdir()) == before


def test_one_phase_with_two_landmark_files_is_refused(tmp_path):
    """phase_00.csv beside its conversion phase_00.pts: one of them was taken silently (the later in name order)."""
    folder = _touch(tmp_path / "lm", ["phase_00.csv", "phase_00.pts", "phase_01.csv"])
    with pytest.raises(DeepLungRegError, match=r"holds phase_00.csv and phase_00.pts; keep one file per phase"):
        match_landmark_files(folder, ("phase_00", "phase_01"))


def test_registration_order_outward_from_the_reference_around_the_cycle():
    from DeepLungRegLib.sequence.run import registration_order

    assert registration_order(4, 2, "reference") == [(0, None), (1, None), (3, None)]
    # 10 phases, reference 5: 6 and 4 from scratch, then each from its neighbour nearer 5; 0 is reached both ways
    order = registration_order(10, 5, "neighbour")
    assert order == [(6, None), (4, None), (7, 6), (3, 4), (8, 7), (2, 3), (9, 8), (1, 2), (0, 9)]
    # the cycle closes: with reference 0, phase 9 is a neighbour of the reference
    assert registration_order(4, 0, "neighbour") == [(1, None), (3, None), (2, 1)]
    for n, ref in ((2, 1), (7, 3), (10, 0)):
        got = registration_order(n, ref, "neighbour")
        assert sorted(i for i, _ in got) == [i for i in range(n) if i != ref]  # every phase once
        done = {ref}
        for i, begin in got:  # each starts from a phase already registered, one step away around the cycle
            assert begin is None or (begin in done and min((i - begin) % n, (begin - i) % n) == 1)
            done.add(i)
    with pytest.raises(DeepLungRegError, match="start must be one of reference, neighbour"):
        registration_order(4, 0, "previous")


@pytest.mark.slow
def test_neighbour_start_and_landmark_trajectories(cycle4, tmp_path):
    """Each phase starts from its neighbour's field (recorded in sequence.json and the phase's metrics.json), the result
    still maps the reference's landmarks onto the phase's, and trajectories.csv holds, per landmark and phase, the true
    and registered positions whose distances are the phases' TRE."""
    import csv
    import json

    folder, cycle = cycle4
    phases = read_phases(folder / "phases")
    landmarks = read_phase_landmarks(folder / "landmarks", phases.names)
    fractions = []
    summary = register_sequence(phases, tmp_path / "out", method="affine", options=FAST_AFFINE, landmarks=landmarks,
                                start="neighbour", report=True, progress=lambda stage, f: fractions.append(f))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # the progress bar never goes back
    assert summary["reference"] == 2 and summary["start"] == "neighbour"
    # the report: volume curve, TRE per phase and the trajectories, a table row per phase with a link to its folder
    out = tmp_path / "out"
    assert summary["report"] == ["volume_curve.png", "tre_per_phase.png", "trajectories.png", "report.html"]
    for name in summary["report"]:
        assert (out / name).stat().st_size > 1000, name
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<tr><td>phase_0") == 4 and "href='phase_00/'" in page and "(tidal volume" not in page
    assert (out / "phase_00" / "report.html").is_file()
    starts = {r["index"]: r.get("start") for r in summary["phases"] if not r.get("reference")}
    assert starts == {3: None, 1: None, 0: "phase_03"}  # 0 is two steps from 2 both ways: the + way first
    metrics = json.loads((tmp_path / "out" / "phase_00" / "metrics.json").read_text())
    assert metrics["sequence"]["start"] == "phase_03"
    rows = {r["index"]: r for r in summary["phases"]}
    assert rows[0]["tre_after"]["mean"] < 0.6 * rows[0]["tre_before"]["mean"]
    # the ventilation pair: end-inhale (largest lung volume) against the end-exhale reference
    assert summary["end_exhale"] == 2 and summary["ventilation_folder"] == f"phase_{summary['end_inhale']:02d}"
    with open(tmp_path / "out" / "trajectories.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    n = len(landmarks[2])
    assert len(table) == 4 * n and summary["trajectories"] == "trajectories.csv"
    for i in range(4):
        mine = [r for r in table if int(r["index"]) == i]
        truth = np.array([[float(r[f"true_{a}"]) for a in "xyz"] for r in mine])
        np.testing.assert_allclose(truth, landmarks[i], atol=1e-3)
        errors = np.array([float(r["error_mm"]) for r in mine])
        if i == 2:
            assert np.all(errors == 0.0)  # the reference's own points
        else:
            assert errors.mean() == pytest.approx(rows[i]["tre_after"]["mean"], abs=1e-3)


def test_the_report_files_are_known_without_matplotlib():
    """register_sequence names the report's files for its overwrite check without importing the report (matplotlib)."""
    from DeepLungRegLib.report.sequence import SEQUENCE_REPORT_FILES
    from DeepLungRegLib.sequence.run import REPORT_FILES

    assert REPORT_FILES == SEQUENCE_REPORT_FILES


def test_the_report_draws_the_curve_the_tre_and_the_trajectories(tmp_path):
    """The 4D-CT report from a summary and trajectory rows alone (no registration): every figure and a page with one
    row per phase; a phase without a lung volume and a run without landmarks still give a page."""
    from DeepLungRegLib.report.sequence import write_sequence_report

    def row(i, ref=False):
        r = {"index": i, "name": f"phase_{i:02d}", "folder": None if ref else f"phase_{i:02d}", "lung_volume_ml": 4000.0 + 300 * abs(i - 2)}
        if ref:
            return {**r, "reference": True}
        return {**r, "start": None, "registration_s": 12.0, "jacobian": {"folding_percent": 0.0, "sd_log_j": 0.1},
                "tre_before": {"mean": 5.0 * abs(i - 2), "p95": 9.0}, "tre_after": {"mean": 0.5, "p95": 1.2}}

    phases = [row(i, ref=(i == 2)) for i in range(4)]
    summary = {"phases": phases, "n_phases": 4, "reference": 2, "reference_name": "phase_02", "reference_rule": "given",
               "lung_volume_ml": [p["lung_volume_ml"] for p in phases], "tidal_volume_ml": 600.0, "end_inhale": 0,
               "ventilation_folder": "phase_00", "source": "cycle/phases", "method": "convex", "start": "reference"}
    traj = [{"landmark": k, "index": i, "name": f"phase_{i:02d}",
             **{f"true_{a}": 10.0 * k + (i - 2) * (1 + j) for j, a in enumerate("xyz")},
             **{f"registered_{a}": 10.0 * k + (i - 2) * (1 + j) + 0.3 for j, a in enumerate("xyz")}} for k in range(8) for i in range(4)]
    written = write_sequence_report(lambda name: tmp_path / name, summary, traj)
    assert written == ["volume_curve.png", "tre_per_phase.png", "trajectories.png", "report.html"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in written)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("<tr><td>phase_0") == 4 and "href='phase_00/'" in page and "reference" in page
    # no landmarks, one phase's lung volume unknown: the curve and the page only
    for p in phases:
        p.pop("tre_after", None)
    summary["lung_volume_ml"][3] = phases[3]["lung_volume_ml"] = None
    assert write_sequence_report(lambda name: tmp_path / f"b_{name}", summary, []) == ["volume_curve.png", "report.html"]
    assert ">?<" in (tmp_path / "b_report.html").read_text(encoding="utf-8")
