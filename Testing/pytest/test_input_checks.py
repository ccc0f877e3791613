"""Bad inputs of issue 28 get one clear line, before any large allocation or any work: image
headers that promise more than the file holds, implausible geometry, loose landmark CSVs,
non-finite values bound for metrics.json, and the small mistakes that ended in a traceback."""

from __future__ import annotations

import gzip
import json
import logging
import os

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_image, write_image
from DeepLungRegLib.cli import main
from DeepLungRegLib.io.landmarks import read_landmarks


def write_sitk(tmp_path, name, array=None, compress=False, **geometry) -> "os.PathLike":
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 7, 8)).astype(np.float32) if array is None else array)
    for key, value in geometry.items():
        getattr(img, f"Set{key}")(value)
    path = tmp_path / name
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def cut(path, n: int = 200):
    """Drop the last ``n`` bytes of a file (a copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[:-n])
    return path


# ------------------------------------------------------------------ headers checked before allocating
NRRD_800 = (b"NRRD0004\ntype: float\ndimension: 3\nsizes: 800 800 800\nencoding: %s\nendian: little\n"
            b"space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n\n")


def test_a_small_nrrd_claiming_800_cubed_floats_is_refused_from_its_header(tmp_path):
    """256 KB that claim 2 GB of voxels: ITK allocated the 2 GB before failing."""
    path = tmp_path / "big.nrrd"
    path.write_bytes(NRRD_800 % b"raw" + bytes(256 * 1024))
    with pytest.raises(DeepLungRegError, match=r"promises 800x800x800 voxels \(2.05 GB of voxel data\), the file holds 262144 bytes"):
        read_image(path)


def test_a_gzip_nrrd_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
    path = tmp_path / "big_gz.nrrd"
    path.write_bytes(NRRD_800 % b"gzip" + gzip.compress(bytes(256 * 1024)))
    with pytest.raises(DeepLungRegError, match="of compressed data, which can hold at most"):
        read_image(path)


@pytest.mark.parametrize("name, compress", [("a.mha", False), ("a.nrrd", False), ("a.vtk", False), ("a.gipl", False),
                                            ("a.mha", True), ("a.nrrd", True), ("a.gipl.gz", True)])
def test_a_truncated_file_says_truncated(tmp_path, name, compress):
    """A truncated .mha said 'No such file or directory'; a truncated .vtk or .gipl was read with zeros."""
    path = cut(write_sitk(tmp_path, name, compress=compress), 60)
    with pytest.raises(DeepLungRegError, match="is truncated") as err:
        read_image(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, data", [("a.mhd", "a.raw"), ("a.nhdr", "a.raw")])
def test_a_truncated_detached_data_file_is_named(tmp_path, name, data):
    write_sitk(tmp_path, name)
    cut(tmp_path / data, 60)
    with pytest.raises(DeepLungRegError, match=f"its data file {data} holds"):
        read_image(tmp_path / name)


@pytest.mark.parametrize("name, compress", [("a.mha", False), ("a.mha", True), ("a.mhd", False), ("a.mhd", True), ("a.nrrd", False),
                                            ("a.nrrd", True), ("a.nhdr", True), ("a.vtk", False), ("a.gipl", False), ("a.gipl.gz", True)])
def test_whole_files_of_every_format_still_read(tmp_path, name, compress):
    array = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 100
    assert np.array_equal(read_image(write_sitk(tmp_path, name, array, compress=compress)).array, array)


def test_a_singular_direction_matrix_is_named(tmp_path):
    """ITK's message was the matrix's last row ('0 0 1')."""
    path = write_sitk(tmp_path, "a.mha")
    text = path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1")
    path.write_bytes(text)
    with pytest.raises(DeepLungRegError, match=r"singular direction matrix \([01 ]+\): its index axes"):
        read_image(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX feature")
def test_a_fifo_is_not_an_image(tmp_path):
    """A FIFO 'did not exist' (or the reader waited on it forever)."""
    path = tmp_path / "pipe.nii.gz"
    os.mkfifo(path)
    with pytest.raises(DeepLungRegError, match="is not a regular file"):
        read_image(path)
    with pytest.raises(DeepLungRegError, match="is not a regular file"):
        read_landmarks(path)


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


def test_metrics_json_refuses_non_finite_values_naming_the_field():
    from DeepLungRegLib.io.runs import metrics_json

    assert json.loads(metrics_json({"tre_after": {"max": 1.5}})) == {"tre_after": {"max": 1.5}}
    with pytest.raises(DeepLungRegError, match=r"non-finite number in tre_per_landmark\[1\]\.after"):
        metrics_json({"method": "convex", "tre_per_landmark": [{"after": 1.0}, {"after": float("inf")}]})


# ------------------------------------------------------------------ registration inputs
def tiny(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), seed: int = 0) -> Image:
    array = np.random.default_rng(seed).normal(0.0, 100.0, (8, 8, 8)).astype(np.float32)
    return Image(array, Geometry((8, 8, 8), spacing, origin))


def test_landmark_arrays_out_of_range_are_refused_by_the_job():
    """Points from Python or Slicer (not a file) with 1e308 reached metrics.json as Infinity."""
    from DeepLungRegLib.pipeline import RegistrationJob

    good = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(DeepLungRegError, match=r"register: moving landmark point 2 \(1e\+308, 5, 6\)"):
        RegistrationJob(tiny(), tiny(seed=1), fixed_mask=None, moving_mask=None, fixed_landmarks=good,
                        moving_landmarks=good * [[1, 1, 1], [1e308 / 4, 1, 1]])


def register_until_cancelled(fixed, moving, **kw):
    """Run register()'s input checks only: the cancel flag stops it at the method's first check."""
    from DeepLungRegLib import RegistrationCancelled
    from DeepLungRegLib.methods import register

    with pytest.raises(RegistrationCancelled):
        register(fixed, moving, "adam", device="cpu", cancel=lambda: True, **kw)


def test_a_mask_labelled_minus_one_says_what_it_holds():
    """It was only 'empty'."""
    from DeepLungRegLib.methods import register

    fixed = tiny()
    mask = Image(np.where(np.arange(512).reshape(8, 8, 8) < 200, -1, 0).astype(np.int16), fixed.geometry)
    with pytest.raises(DeepLungRegError, match=r"fixed mask is empty: it holds only the value\(s\) -1, 0; a mask marks its region with values above 0"):
        register(fixed, tiny(seed=1), "adam", fixed_mask=mask, device="cpu")


@pytest.mark.parametrize("spacing", [(1e-6, 1e-6, 1e-6), (1e9, 2.0, 2.0), (0.05, 1.0, 1.0), (25.0, 1.0, 1.0)])
def test_an_implausible_spacing_is_warned_about(caplog, spacing):
    with caplog.at_level(logging.WARNING):
        register_until_cancelled(tiny(), tiny(spacing, seed=1))
    assert any("moving image's voxel spacing" in r.getMessage() and "outside 0.1-20 mm" in r.getMessage() for r in caplog.records)


def test_a_moving_image_covering_little_of_the_fixed_one_is_warned_about(caplog):
    """The overlap is measured on the world boxes, after each image's own direction."""
    with caplog.at_level(logging.WARNING):
        register_until_cancelled(tiny(), tiny(origin=(14.0, 14.0, 14.0), seed=1))  # 2 mm of 16 along each axis: 0.2 %
    assert any("covers 0.2 % of the fixed image's extent" in r.getMessage() for r in caplog.records)
    caplog.clear()
    flipped = Image(tiny(seed=1).array, Geometry((8, 8, 8), (2.0, 2.0, 2.0), (14.0, 14.0, 14.0), (-1, 0, 0, 0, -1, 0, 0, 0, -1)))
    with caplog.at_level(logging.WARNING):
        register_until_cancelled(tiny(), flipped)  # the same voxels stored the other way round: the whole box
    assert not any("covers" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ the command line: one line, not a traceback
def one_line(capsys, code: int, match: str) -> str:
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deeplungreg: error:") and match in lines[0], err.err
    return err.out


def test_cli_a_truncated_mha(tmp_path, capsys):
    """'No such file or directory', after ITK's own two lines on stderr."""
    fixed = write_sitk(tmp_path, "fixed.mha")
    moving = cut(write_sitk(tmp_path, "moving.mha"), 100)
    code = main(["register", str(fixed), str(moving), "-o", str(tmp_path / "out"), "-q"])
    one_line(capsys, code, f"read_image: moving image {moving} is truncated or its header is wrong")


def test_cli_a_config_whose_config_entry_is_not_an_object(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"config": 5}')
    code = main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "out"), "--config", str(cfg)])
    one_line(capsys, code, 'must hold a JSON object of options; its "config" entry is 5')


def test_cli_simulate_with_a_negative_seed(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    write_image(tiny(), ct)
    code = main(["simulate", str(ct), "-o", str(tmp_path / "pair"), "--seed", "-1", "-q"])
    one_line(capsys, code, "simulate: the seed must be a whole number >= 0, got -1")


@pytest.mark.parametrize("field, value, says", [("fixed", 5, "'fixed' must be a file path (text), got 5"), ("options", "fast", "'options' must be an object"),
                                                ("landmark_labels", 3, "'landmark_labels' must be a list")])
def test_cli_worker_request_field_of_the_wrong_type(tmp_path, capsys, field, value, says):
    """A traceback, and no {"error"} line for the Slicer module to show."""
    request = {"job": {"fixed": str(tmp_path / "f.nrrd"), "moving": str(tmp_path / "m.nrrd"), field: value}, "output": str(tmp_path / "out")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    out = one_line(capsys, main(["worker", str(tmp_path / "request.json")]), says)
    assert says in json.loads(out.strip().splitlines()[-1])["error"]


def test_reading_a_vtk_file_leaves_the_locale_as_it_was(tmp_path):
    """ITK's legacy-VTK reader sets the process locale to "C": Python's default text encoding became ASCII."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    read_image(write_sitk(tmp_path, "a.vtk"))
    assert locale.setlocale(locale.LC_ALL) == before
