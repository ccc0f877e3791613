"""Tests of DeepLungRegLib/io/nifti.py: NIfTI header checks and the streamed NIfTI writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_field, read_image, write_field, write_image
from DeepLungRegLib.io.fields import read_field, write_field
from DeepLungRegLib.io.images import image_to_sitk

from helpers_inputs import cut, one_line_error, run_cli


# -------------------------------------------------------------- damaged files
def _nifti(tmp_path: Path, name: str, array: np.ndarray, compress: bool) -> Path:
    g = Geometry(array.shape[::-1], (2.0, 2.0, 3.0), (5.0, -3.0, 10.0))
    path = tmp_path / name
    write_image(Image(array, g), path, compress=compress)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_truncated_nifti_is_refused_in_one_line(tmp_path, suffix):
    arr = np.random.default_rng(0).normal(-500, 200, (20, 24, 28)).astype(np.int16)
    whole = _nifti(tmp_path, "whole" + suffix, arr, suffix.endswith(".gz"))
    cut = tmp_path / ("cut" + suffix)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(DeepLungRegError, match="truncated"):
        read_image(cut)
    assert np.array_equal(read_image(whole).array, arr)
    r = run_cli("simulate", cut, "-o", tmp_path / "p")
    one_line_error(r, "truncated")


def test_nan_and_inf_voxels_in_nifti_are_refused(tmp_path):
    """ITK's NIfTI reader turns NaN and Inf into 0; the project must see them."""
    arr = np.random.default_rng(1).normal(-500, 200, (12, 14, 16)).astype(np.float32)
    arr[3, 4, 5], arr[7, 1, 2] = np.nan, np.inf
    for suffix in (".nii", ".nii.gz"):
        path = _nifti(tmp_path, "nan" + suffix, arr, suffix.endswith(".gz"))
        with pytest.raises(DeepLungRegError, match="2 NaN/Inf voxels"):
            read_image(path)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]])])
def test_streamed_nifti_is_byte_for_byte_what_itk_writes(tmp_path, oblique, direction):
    """write_image and write_field stream NIfTI (no full copy); the file must be ITK's own."""
    for d in (direction, oblique.direction_matrix):
        g = Geometry((7, 5, 4), (1.5, 2.0, 3.0), (10.0, -20.0, 30.0), tuple(np.asarray(d).ravel()))
        for dtype in (np.int16, np.uint16, np.float32, np.float64, bool):
            a = np.random.default_rng(1).normal(0, 300, g.shape).astype(dtype)
            write_image(Image(a, g), tmp_path / "ours.nii", compress=False)
            sitk.WriteImage(image_to_sitk(Image(a, g)), str(tmp_path / "itk.nii"))
            assert (tmp_path / "ours.nii").read_bytes() == (tmp_path / "itk.nii").read_bytes(), np.dtype(dtype).name
        f = np.random.default_rng(0).normal(0, 3, (*g.shape, 3)).astype(np.float32)
        write_field(f, g, tmp_path / "ours.nii")
        sitk.WriteImage(image_to_sitk(f, g), str(tmp_path / "itk.nii"))
        assert (tmp_path / "ours.nii").read_bytes() == (tmp_path / "itk.nii").read_bytes()
        write_field(f, g, tmp_path / "ours.nii.gz")
        back, gb = read_field(tmp_path / "ours.nii.gz")
        assert np.array_equal(back, f) and gb.same_as(g, tol=1e-6)
