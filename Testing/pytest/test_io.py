import json

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_field, read_image, read_landmarks, write_field, write_image, write_landmarks
from DeepLungRegLib.io.images import image_to_sitk


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha", "mhd"])
def test_image_round_trip(tmp_path, oblique, ext):
    arr = np.random.default_rng(1).integers(-1024, 1000, oblique.shape).astype(np.int16)
    path = write_image(Image(arr, oblique), tmp_path / f"img.{ext}")
    back = read_image(path)
    assert np.array_equal(back.array, arr)
    assert back.geometry.same_as(oblique, tol=1e-5)


@pytest.mark.parametrize("ext", ["nii.gz", "mha", "nrrd", "h5"])
def test_field_round_trip_and_itk_semantics(tmp_path, oblique, ext):
    field = np.random.default_rng(2).normal(0, 3, (*oblique.shape, 3)).astype(np.float32)
    path = write_field(field, oblique, tmp_path / f"field.{ext}")
    back, geom = read_field(path)
    assert np.allclose(back, field)
    assert geom.same_as(oblique, tol=1e-5)
    # ITK reads the file as the fixed -> moving transform p -> p + u(p)
    if ext == "h5":
        tx = sitk.ReadTransform(str(path)).Downcast()
    else:
        tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    for ijk in ([3, 4, 5], [10, 2, 7], [0, 0, 0]):
        p = oblique.index_to_world(np.array([ijk], float))[0]
        u = field[ijk[2], ijk[1], ijk[0]]
        assert np.allclose(np.array(tx.TransformPoint(tuple(p))), p + u, atol=1e-4)


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


def test_field_shape_is_checked(tmp_path, oblique):
    with pytest.raises(DeepLungRegError, match="does not match"):
        write_field(np.zeros((2, 2, 2, 3), np.float32), oblique, tmp_path / "f.nii.gz")
    with pytest.raises(DeepLungRegError, match="unsupported"):
        write_field(np.zeros((*oblique.shape, 3), np.float32), oblique, tmp_path / "f.png")


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
