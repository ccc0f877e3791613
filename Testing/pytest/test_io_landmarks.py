"""Tests of DeepLungRegLib/io/landmarks.py: landmark files of every format, round trips and damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, read_landmarks, write_landmarks
from DeepLungRegLib.io.landmarks import read_landmarks


# ------------------------------------------------------------------ strict landmark files
def landmarks(tmp_path, text: str, name: str = "l.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    """Excel writes one; the header's 'x' became '\\ufeffx' and the file was refused."""
    assert np.allclose(read_landmarks(landmarks(tmp_path, "x,y,z\n1,2,3\n", encoding="utf-8-sig")), [[1, 2, 3]])


def test_a_row_with_extra_values_is_refused_with_its_line(tmp_path):
    """It was cut to the first three values."""
    with pytest.raises(DeepLungRegError, match="line 3 has 4 values for the 3 columns x,y,z"):
        read_landmarks(landmarks(tmp_path, "x,y,z\n1,2,3\n4,5,6,7\n"))


def test_decimal_commas_are_refused_with_a_hint(tmp_path):
    """'80,5,80,2,80,1' was read as the point (80, 5, 80)."""
    with pytest.raises(DeepLungRegError, match=r"line 2 has 6 values.*decimal commas"):
        read_landmarks(landmarks(tmp_path, "x,y,z\n80,5,80,2,80,1\n"))
    with pytest.raises(DeepLungRegError, match=r"line 1 has 6 values, expected 3; are decimal commas"):
        read_landmarks(landmarks(tmp_path, "80,5 80,2 80,1\n", "l.pts"))
    with pytest.raises(DeepLungRegError, match=r"line 3 has 17 values, expected 14 \(its columns line\); are decimal commas"):
        read_landmarks(landmarks(tmp_path, "# CoordinateSystem = LPS\n# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                                           "1,80,5,80,2,80,1,0,0,0,1,1,1,0,F-1,,\n", "l.fcsv"))


@pytest.mark.parametrize("value", ["1e308", "1e309", "nan", "inf", "-inf"])
def test_non_finite_or_overflowing_coordinates_are_refused(tmp_path, value):
    """1e308 was accepted and metrics.json then held Infinity/NaN (not JSON)."""
    with pytest.raises(DeepLungRegError, match=r"point 2 \(.*\) has a coordinate that is NaN, infinite or beyond"):
        read_landmarks(landmarks(tmp_path, f"x,y,z\n1,2,3\n{value},1,1\n"))


def test_a_markups_point_without_three_numbers_is_refused(tmp_path):
    doc = {"markups": [{"coordinateSystem": "LPS", "controlPoints": [{"position": [1, 2, 3]}, {"position": [1, 2, 3, 4]}]}]}
    with pytest.raises(DeepLungRegError, match="control point 2 has no position of three numbers"):
        read_landmarks(landmarks(tmp_path, json.dumps(doc), "l.mrk.json"))


# ------------------------------------------------------------------ landmarks
PTS = np.array([[10.5, -20.25, 33.0], [-4.0, 5.0, 6.5], [0.0, 100.0, -50.0]])


@pytest.mark.parametrize("name, kw", [("p.csv", {}), ("p.fcsv", {}), ("p.mrk.json", {}), ("p.txt", {}), ("p.pts", {}),
                                      ("r.fcsv", {"coordinate_system": "RAS"}), ("r.mrk.json", {"coordinate_system": "RAS"})])
def test_landmark_round_trip(tmp_path, name, kw):
    path = write_landmarks(PTS, tmp_path / name, **kw)
    assert np.allclose(read_landmarks(path), PTS, atol=1e-4)


def test_markups_json_ras_is_converted(tmp_path):
    doc = {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [{"position": [1.0, 2.0, 3.0]}]}]}
    (tmp_path / "a.mrk.json").write_text(json.dumps(doc))
    assert np.allclose(read_landmarks(tmp_path / "a.mrk.json"), [[-1.0, -2.0, 3.0]])


def test_fcsv_old_numeric_coordinate_system(tmp_path):
    (tmp_path / "a.fcsv").write_text("# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\nvtkMRMLMarkupsFiducialNode_0,1,2,3,0,0,0,1,1,1,0,F-1,,\n")
    assert np.allclose(read_landmarks(tmp_path / "a.fcsv"), [[-1.0, -2.0, 3.0]])


def test_dirlab_reader_is_one_based(tmp_path):
    (tmp_path / "d.txt").write_text("1\t1\t1\n11 21 5\n")
    pts = read_landmarks(tmp_path / "d.txt", spacing=(0.5, 1.0, 2.5))
    assert np.allclose(pts, [[0, 0, 0], [5.0, 20.0, 10.0]])
    assert np.allclose(read_landmarks(write_landmarks(pts, tmp_path / "e.txt", fmt="dirlab", spacing=(0.5, 1.0, 2.5)), spacing=(0.5, 1.0, 2.5)), pts)


def test_elastix_index_needs_geometry(tmp_path, oblique):
    (tmp_path / "i.txt").write_text("index\n2\n1 2 3\n4 5 6\n")
    with pytest.raises(DeepLungRegError, match="geometry"):
        read_landmarks(tmp_path / "i.txt")
    pts = read_landmarks(tmp_path / "i.txt", geometry=oblique)
    assert np.allclose(pts, oblique.index_to_world(np.array([[1, 2, 3], [4, 5, 6]], float)))


def test_real_dirlab_landmarks(shared_data):
    spacing = (0.97, 0.97, 2.5)
    base = shared_data / "dirlab4dct" / "Case1Pack" / "ExtremePhases"
    a = read_landmarks(base / "Case1_300_T00_xyz.txt", spacing=spacing)
    b = read_landmarks(base / "Case1_300_T50_xyz.txt", spacing=spacing)
    assert a.shape == b.shape == (300, 3)
    raw = np.loadtxt(base / "Case1_300_T00_xyz.txt")
    assert np.allclose(a, (raw - 1) * spacing)


def test_real_elastix_point_files(shared_data):
    pts = read_landmarks(shared_data / "elastix-lung" / "CT_3D_lung_fixed_point_set.txt")
    assert pts.shape == (100, 3)
    assert np.allclose(pts[0], [-36.351, -36.974, -1204.5])


def test_dirlab_without_spacing(tmp_path):
    (tmp_path / "d.txt").write_text("1 2 3\n")
    with pytest.raises(DeepLungRegError, match="spacing must be given"):
        read_landmarks(tmp_path / "d.txt")


def test_landmarks_bad_files(tmp_path):
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DeepLungRegError, match="x,y,z"):
        read_landmarks(tmp_path / "a.csv")
    (tmp_path / "e.txt").write_text("point\n3\n1 2 3\n")
    with pytest.raises(DeepLungRegError, match="announces 3"):
        read_landmarks(tmp_path / "e.txt")
    (tmp_path / "x.csv").write_text("x,y,z\n")
    with pytest.raises(DeepLungRegError, match="no landmarks"):
        read_landmarks(tmp_path / "x.csv")
