"""Tests of DeepLungRegLib/io/headers.py: damaged and oversized image files are refused from their headers."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, read_image
from DeepLungRegLib.io.landmarks import read_landmarks

from helpers_inputs import cut, write_sitk


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


def test_reading_a_vtk_file_leaves_the_locale_as_it_was(tmp_path):
    """ITK's legacy-VTK reader sets the process locale to "C": Python's default text encoding became ASCII."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    read_image(write_sitk(tmp_path, "a.vtk"))
    assert locale.setlocale(locale.LC_ALL) == before
