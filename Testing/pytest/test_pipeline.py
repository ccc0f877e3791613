"""Tests of DeepLungRegLib/pipeline.py: the registration job, its run into an output folder and metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, read_image, write_image
from DeepLungRegLib.cli import main
from DeepLungRegLib.pipeline import RegistrationJob, run_registration
from DeepLungRegLib.simulation import read_pair

from helpers_inputs import FAST_CFG, pair_dir, register_args, tiny


# ------------------------------------------------------------------ float images
@pytest.mark.slow
def test_a_float32_moving_image_registers_and_keeps_float_output(pair_dir, tmp_path):
    """Float NIfTI is what most pipelines write; it used to crash after the whole registration."""
    moving = read_image(pair_dir / "moving.nii.gz")
    write_image(moving.with_array(moving.array.astype(np.float32) + 0.25), tmp_path / "moving_f32.nii.gz")
    out = tmp_path / "out"
    assert main(register_args(pair_dir, out, moving=tmp_path / "moving_f32.nii.gz")) == 0
    warped = read_image(out / "warped.nii.gz")
    assert warped.array.dtype == np.float32 and np.any(warped.array != np.round(warped.array))
    # an integer moving image keeps its type
    assert main(register_args(pair_dir, tmp_path / "int")) == 0
    assert read_image(tmp_path / "int" / "warped.nii.gz").array.dtype == moving.array.dtype


@pytest.mark.slow
def test_landmarks_far_outside_the_image_and_an_all_ones_mask_are_warned_about(pair_dir, tmp_path, caplog):
    pair = read_pair(pair_dir)
    far = pair.fixed_landmarks.copy()
    far[:5] += 500.0
    ones = pair.fixed_mask.with_array(np.ones_like(pair.fixed_mask.array))
    with caplog.at_level("WARNING"):
        run_registration(RegistrationJob(pair.fixed, pair.moving, "adam", config=FAST_CFG, fixed_mask=ones, moving_mask=pair.moving_mask,
                                         fixed_landmarks=far, moving_landmarks=pair.moving_landmarks, device="cpu"), tmp_path / "o")
    text = caplog.text
    assert "5 of" in text and "fixed landmarks lie more than" in text
    assert "fixed mask covers 100 %" in text and "Is it a lung mask" in text


def test_metrics_json_refuses_non_finite_values_naming_the_field():
    from DeepLungRegLib.io.runs import metrics_json

    assert json.loads(metrics_json({"tre_after": {"max": 1.5}})) == {"tre_after": {"max": 1.5}}
    with pytest.raises(DeepLungRegError, match=r"non-finite number in tre_per_landmark\[1\]\.after"):
        metrics_json({"method": "convex", "tre_per_landmark": [{"after": 1.0}, {"after": float("inf")}]})


def test_landmark_arrays_out_of_range_are_refused_by_the_job():
    """Points from Python or Slicer (not a file) with 1e308 reached metrics.json as Infinity."""
    from DeepLungRegLib.pipeline import RegistrationJob

    good = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(DeepLungRegError, match=r"register: moving landmark point 2 \(1e\+308, 5, 6\)"):
        RegistrationJob(tiny(), tiny(seed=1), fixed_mask=None, moving_mask=None, fixed_landmarks=good,
                        moving_landmarks=good * [[1, 1, 1], [1e308 / 4, 1, 1]])


# ------------------------------------------------------------------ memory: the fixed-grid field is never whole
@pytest.mark.slow
def test_run_registration_writes_what_compute_outputs_holds_without_making_the_whole_field(pair_dir, tmp_path, monkeypatch):
    """run_registration reads the field on the fixed grid a slab at a time (a SlabField: 1.9 GB saved on a
    512x512x600 CT); its files equal what compute_outputs (the Slicer module's path, the whole field in
    memory) returns, and its metrics the same numbers."""
    from DeepLungRegLib.io.fields import read_field
    from DeepLungRegLib.methods.base import GridField
    from DeepLungRegLib.pipeline import IMAGE_OUTPUTS, compute_outputs

    pair = read_pair(pair_dir)
    job = RegistrationJob(pair.fixed, pair.moving, "adam", config=FAST_CFG, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                          fixed_landmarks=pair.fixed_landmarks, moving_landmarks=pair.moving_landmarks, device="cpu")
    kept = compute_outputs(job)

    def whole(self, geometry):
        raise AssertionError("run_registration made the whole field on the fixed grid")

    with monkeypatch.context() as m:
        m.setattr(GridField, "on", whole)
        metrics = run_registration(job, tmp_path / "out")
    field, geometry = read_field(tmp_path / "out" / "displacement.nii.gz")
    assert geometry.same_as(pair.fixed.geometry) and np.array_equal(field, kept.result.field)
    written = [name for name in IMAGE_OUTPUTS if getattr(kept, name) is not None]
    assert {"warped", "jacobian", "ventilation", "ventilation_hu"} <= set(written)
    for name in written:
        assert np.array_equal(read_image(tmp_path / "out" / IMAGE_OUTPUTS[name]).array, getattr(kept, name).array), name
    for key in ("tre_after", "jacobian", "jacobian_whole_image", "ventilation"):
        assert metrics[key] == kept.metrics[key], key
