"""Tests of DeepLungRegLib/io/images.py: images of every format, DICOM series, and the images that are refused."""

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_image, write_field, write_image
from DeepLungRegLib.io.images import image_to_sitk


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha", "mhd"])
def test_image_round_trip(tmp_path, oblique, ext):
    arr = np.random.default_rng(1).integers(-1024, 1000, oblique.shape).astype(np.int16)
    path = write_image(Image(arr, oblique), tmp_path / f"img.{ext}")
    back = read_image(path)
    assert np.array_equal(back.array, arr)
    assert back.geometry.same_as(oblique, tol=1e-5)


def test_real_popi_dicom_series(shared_data):
    img = read_image(shared_data / "popi" / "dicom-phase00")
    assert img.geometry.size == (512, 512, 141)
    assert np.allclose(img.geometry.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-4)
    ref = read_image(shared_data / "popi" / "popi00.nrrd")
    assert np.allclose(img.geometry.direction, ref.geometry.direction, atol=1e-6)
    assert img.array.min() >= -1024 and img.array.max() <= 4000


def test_real_nrrd_geometry(shared_data):
    img = read_image(shared_data / "popi" / "popi00.nrrd")
    assert img.array.shape == (141, 512, 512)
    assert np.allclose(img.geometry.origin, (-250, -164, -164.5))


# ------------------------------------------------------------------ bad input
def test_refuses_2d_image(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "a.nrrd"))
    with pytest.raises(DeepLungRegError, match="2D"):
        read_image(tmp_path / "a.nrrd")


def test_refuses_4d_image(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(tmp_path / "a.nii.gz"))
    with pytest.raises(DeepLungRegError, match="4D"):
        read_image(tmp_path / "a.nii.gz")


def test_refuses_vector_image(tmp_path, oblique):
    write_field(np.zeros((*oblique.shape, 3), np.float32), oblique, tmp_path / "v.nii.gz")
    with pytest.raises(DeepLungRegError, match="components"):
        read_image(tmp_path / "v.nii.gz")


def test_refuses_nan(tmp_path, oblique):
    arr = np.zeros(oblique.shape, np.float32)
    arr[2, 3, 4] = np.nan
    sitk.WriteImage(image_to_sitk(arr, oblique), str(tmp_path / "n.nrrd"))  # NIfTI IO drops NaN
    with pytest.raises(DeepLungRegError, match="NaN"):
        read_image(tmp_path / "n.nrrd")


def test_refuses_missing_and_unreadable(tmp_path):
    with pytest.raises(DeepLungRegError, match="does not exist"):
        read_image(tmp_path / "nothing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DeepLungRegError, match="cannot read"):
        read_image(tmp_path / "junk.nii.gz")


def test_refuses_empty_dicom_folder(tmp_path):
    with pytest.raises(DeepLungRegError, match="no DICOM series"):
        read_image(tmp_path)


def test_looks_like_ct_is_one_test_of_hounsfield_air_for_every_caller(caplog):
    """A CT in HU holds air (1st percentile below -500); the same CT stored as uint16 = HU + 1024 and an MRI do not.
    The pipeline (warp fill, HU ventilation) and register()'s intensity warning ask this one function."""
    import logging

    from DeepLungRegLib import pipeline
    from DeepLungRegLib.io.images import looks_like_ct
    from DeepLungRegLib.methods import base

    rng = np.random.default_rng(0)
    g = Geometry((16, 16, 16), (2.0, 2.0, 2.0))
    hu = np.where(rng.random(g.shape) < 0.3, -1000.0, rng.normal(40.0, 30.0, g.shape)).astype(np.float32)
    ct, offset = Image(hu.astype(np.int16), g), Image((hu + 1024).astype(np.uint16), g)
    mri = Image(rng.uniform(0, 800, g.shape).astype(np.float32), g)
    assert looks_like_ct(ct) and not looks_like_ct(offset) and not looks_like_ct(mri)
    assert pipeline.looks_like_ct is looks_like_ct and not hasattr(base, "_holds_hu_air")
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        base._check_intensities(ct, offset)
    assert "moving image holds no air in Hounsfield units" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        base._check_intensities(ct, ct)
    assert not caplog.text
