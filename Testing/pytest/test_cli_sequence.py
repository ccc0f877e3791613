"""``deeplungreg sequence`` end to end on a simulated 4-phase cycle at 8 mm (end-exhale found from the lung volumes,
TRE per phase against the simulator's landmarks improves, the volume curve), and bad input in one line with
nothing written."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from DeepLungRegLib.cli import main
from DeepLungRegLib.io.fields import read_field
from helpers_sequence import FAST_AFFINE, cycle4, tiny_phases  # noqa: F401  (a fixture)


def _fast(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in ("-O", f"{k}={json.dumps(v)}")]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.slow
def test_sequence_registers_every_phase_to_end_exhale(cycle4, tmp_path, capsys):
    folder, cycle = cycle4
    out = tmp_path / "out"
    rc = main(["sequence", str(folder / "phases"), "-o", str(out), "--method", "affine", *_fast(FAST_AFFINE),
               "--landmarks", str(folder / "landmarks"), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reference phase phase_02" in printed and "tidal volume" in printed
    summary = json.loads((out / "sequence.json").read_text())
    assert summary["reference"] == 2 and summary["reference_rule"].startswith("smallest lung volume")
    # the volume curve: the automatic masks' volumes follow the simulator's (its Jacobian integral)
    truth = [p["lung_volume_ml"] for p in json.loads((folder / "cycle.json").read_text())["phases"]]
    with open(out / "volume_curve.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "name", "lung_volume_ml"] and rows[-1][1] == "tidal_volume_ml"
    vols = [float(r[2]) for r in rows[1:-1]]
    assert int(np.argmin(vols)) == int(np.argmin(truth)) == 2
    np.testing.assert_allclose(vols, truth, rtol=0.06)
    assert float(rows[-1][2]) == pytest.approx(max(vols) - min(vols), abs=1e-2)
    # one folder per registered phase, none for the reference; TRE per phase improves
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["phase_00", "phase_01", "phase_03"]
    for row in summary["phases"]:
        if row.get("reference"):
            continue
        assert row["tre_after"]["mean"] < 0.6 * row["tre_before"]["mean"], row
        assert row["jacobian"]["folding_percent"] == 0.0
        field, geom = read_field(out / row["folder"] / "displacement.nii.gz")
        assert geom.same_as(cycle.reference.geometry)
        # against the ground truth: the simulator's landmarks of the reference phase, moved by the field, land on its
        # landmarks of the phase (the TRE above uses the cycle's landmark files, the same points)
        np.testing.assert_allclose(row["tre_before"]["mean"], np.linalg.norm(cycle.landmarks(row["index"]) - cycle.landmarks(2), axis=1).mean(),
                                   rtol=1e-3)
    # a second run into the same folder is refused without --overwrite, in one line, and then replaces its own files
    assert main(["sequence", str(folder / "phases"), "-o", str(out), "--method", "affine", "-q"]) == 2
    assert "sequence: " in _error_line(capsys)


@pytest.mark.parametrize("make, args, match", [
    ("empty", [], "is empty"),
    ("single", [], "a single phase"),
    ("cycle", ["--reference", "7"], "--reference must be a phase index from 0 to 3, got 7"),
    ("cycle", ["--landmarks", "NOWHERE"], "the landmark folder .* does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, make, args, match):
    src = tmp_path / "in"
    if make == "empty":
        src.mkdir()
    else:
        tiny_phases(src, 1 if make == "single" else 4)
    out = tmp_path / "out"
    args = [a if a != "NOWHERE" else str(tmp_path / "nowhere") for a in args]
    assert main(["sequence", str(src), "-o", str(out), "--method", "affine", "-q", *args]) == 2
    line = _error_line(capsys)
    assert line.startswith("deeplungreg: error: ") and re.search(match, line), line
    assert not out.exists()
