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
