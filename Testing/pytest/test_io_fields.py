"""Tests of DeepLungRegLib/io/fields.py: displacement fields on disk, whole and damaged."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import DeepLungRegError, read_field, write_field
from DeepLungRegLib.io.fields import read_field, write_field
from DeepLungRegLib.io.images import image_to_sitk
from DeepLungRegLib.simulation import read_pair

from helpers_inputs import cut, one_line_error, pair_dir, run_cli


@pytest.mark.slow
def test_damaged_fields_are_refused_by_evaluate_and_tre(pair_dir, tmp_path):
    pair = read_pair(pair_dir)
    field = pair.field.copy()
    bad = tmp_path / "nan_field.nii.gz"
    field[2, 3, 4, 1] = np.nan
    write_field(np.nan_to_num(field), pair.fixed.geometry, tmp_path / "ok.nii.gz")
    # write the NaN through ITK (our writer refuses non-finite fields)
    import SimpleITK as sitk

    from DeepLungRegLib.io.images import image_to_sitk

    sitk.WriteImage(image_to_sitk(field, pair.fixed.geometry), str(bad), useCompression=True)
    data = (tmp_path / "ok.nii.gz").read_bytes()
    cut = tmp_path / "cut_field.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    for path, match in ((bad, "NaN/Inf"), (cut, "truncated")):
        with pytest.raises(DeepLungRegError, match=match):
            read_field(path)
        one_line_error(run_cli("evaluate", pair_dir, path), match)
        one_line_error(run_cli("tre", pair_dir / "fixed_landmarks.csv", pair_dir / "moving_landmarks.csv", "--field", path), match)


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


def test_field_shape_is_checked(tmp_path, oblique):
    with pytest.raises(DeepLungRegError, match="does not match"):
        write_field(np.zeros((2, 2, 2, 3), np.float32), oblique, tmp_path / "f.nii.gz")
    with pytest.raises(DeepLungRegError, match="unsupported"):
        write_field(np.zeros((*oblique.shape, 3), np.float32), oblique, tmp_path / "f.png")
