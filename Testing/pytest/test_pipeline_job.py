"""``pipeline.RegistrationJob``'s JSON form (to_json / save / from_json), checked once, and
``io.runs.RunFolder``: the one reader and writer of ``metrics.json``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image, write_image
from DeepLungRegLib.io.landmarks import write_landmarks
from DeepLungRegLib.io.runs import JOB_KEY, METRICS_FILE, RunFolder
from DeepLungRegLib.pipeline import JOB_FIELDS, RegistrationJob, check_job_json, run_registration

AFFINE = {"levels_mm": [8.0], "iterations": [20]}


def blob_pair(n: int = 32) -> tuple[Image, Image]:
    """A blob and the same blob shifted by two voxels along x, 4 mm voxels (int16)."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    g = Geometry((n, n, n), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    c = n / 2
    f = (1000 * np.exp(-((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) / 60)).astype(np.int16)
    m = (1000 * np.exp(-((x - c - 2) ** 2 + (y - c) ** 2 + (z - c) ** 2) / 60)).astype(np.int16)
    return Image(f, g), Image(m, g)


def points(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(30, 90, size=(n, 3))


@pytest.fixture
def files(tmp_path):
    f, m = blob_pair()
    d = tmp_path / "in"
    d.mkdir()
    mask = f.with_array((np.asarray(f.array) > 100).astype(np.uint8))
    return {"fixed": write_image(f, d / "f.nii.gz"), "moving": write_image(m, d / "m.nii.gz"),
            "mask": write_image(mask, d / "mask.nrrd"), "fl": write_landmarks(points(seed=1), d / "fl.csv"),
            "ml": write_landmarks(points(seed=2), d / "ml.csv")}


def same_job(a: RegistrationJob, b: RegistrationJob) -> None:
    assert a.method == b.method and a.config.to_dict() == b.config.to_dict() and a.device == b.device
    np.testing.assert_array_equal(a.fixed.array, b.fixed.array)
    np.testing.assert_array_equal(a.moving.array, b.moving.array)
    assert a.fixed.geometry.same_as(b.fixed.geometry) and a.moving.geometry.same_as(b.moving.geometry)
    np.testing.assert_allclose(a.fixed_landmarks, b.fixed_landmarks, atol=1e-3)
    np.testing.assert_allclose(a.moving_landmarks, b.moving_landmarks, atol=1e-3)
    assert a.landmark_labels == b.landmark_labels


def test_a_job_from_files_round_trips_through_its_json_form(files):
    job = RegistrationJob.from_files(files["fixed"], files["moving"], method="affine", fixed_mask=str(files["mask"]),
                                     moving_mask="none", fixed_landmarks=str(files["fl"]), moving_landmarks=str(files["ml"]),
                                     options=AFFINE, device="cpu")
    data = job.to_json()
    assert set(data) == set(JOB_FIELDS)
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert data["fixed_mask"] == str(files["mask"]) and data["moving_mask"] == "none"
    again = RegistrationJob.from_json(json.loads(json.dumps(data)))
    same_job(job, again)
    assert again.to_json() == data


def test_a_job_in_memory_saves_its_images_masks_and_landmarks_and_loads_back(tmp_path):
    f, m = blob_pair()
    mask = f.with_array(np.asarray(f.array) > 100)
    job = RegistrationJob(f, m, "affine", mask, None, points(seed=1), points(seed=2), ["a", "", "c", "d", "e"], AFFINE, "cpu")
    with pytest.raises(DeepLungRegError, match=r"fixed, moving, fixed_mask, fixed_landmarks, moving_landmarks exist only in memory"):
        job.to_json()
    assert job.to_json(require_files=False)["fixed"] is None
    data = job.save(tmp_path)
    assert all(Path(data[k]).parent == tmp_path for k in ("fixed", "moving", "fixed_mask", "fixed_landmarks", "moving_landmarks"))
    assert data["moving_mask"] == "none" and data["landmark_labels"] == ["a", "P-2", "c", "d", "e"]
    again = RegistrationJob.from_json(data)
    same_job(job, again)
    saved_mask = RegistrationJob.from_json(data).to_json()["fixed_mask"]
    from DeepLungRegLib.io.images import read_image

    np.testing.assert_array_equal(read_image(saved_mask).array > 0, np.asarray(mask.array))


def test_relative_paths_of_a_job_are_taken_from_its_base(files):
    base = files["fixed"].parent
    job = RegistrationJob.from_json({"fixed": files["fixed"].name, "moving": files["moving"].name, "method": "affine",
                                     "options": AFFINE, "fixed_mask": "none", "moving_mask": "none"}, base=base)
    assert job.to_json()["fixed"] == str(files["fixed"].resolve())


@pytest.mark.parametrize("data, match", [
    ([1, 2], r"job: a job is a JSON object"),
    ({"moving": "m.nii.gz"}, r"job: the job names no fixed image \(field 'fixed'\)"),
    ({"fixed": "f", "moving": "m", "speed": 3}, r"unknown field\(s\) 'speed'"),
    ({"fixed": "f", "moving": "m", "options": [1]}, r"the job's 'options' must be an object"),
    ({"fixed": "f", "moving": 5}, r"the job's 'moving' must be a file path"),
    ({"fixed": "f", "moving": "m", "fixed_landmarks": "a.csv"}, r"both fixed_landmarks and moving_landmarks, or neither"),
])
def test_a_bad_job_is_one_line_that_names_the_field(data, match):
    with pytest.raises(DeepLungRegError, match=match) as e:
        check_job_json(data)
    assert "\n" not in str(e.value)


def test_a_job_is_checked_once_when_made_and_not_again_when_it_runs(files, tmp_path, monkeypatch):
    """check_image runs twice (fixed and moving) for the whole run, mask_on_image once per mask; a job
    read back with check=False (the Slicer worker's) is not checked again."""
    import DeepLungRegLib.methods.base as base

    calls = {"check_image": 0, "mask_on_image": 0}
    real_check, real_mask = base.check_image, base.mask_on_image

    def count_check(*a, **k):
        calls["check_image"] += 1
        return real_check(*a, **k)

    def count_mask(mask, *a, **k):
        calls["mask_on_image"] += mask is not None
        return real_mask(mask, *a, **k)

    monkeypatch.setattr(base, "check_image", count_check)
    monkeypatch.setattr(base, "mask_on_image", count_mask)
    job = RegistrationJob.from_files(files["fixed"], files["moving"], method="affine", fixed_mask=str(files["mask"]),
                                     moving_mask=str(files["mask"]), options=AFFINE, device="cpu")
    assert calls == {"check_image": 2, "mask_on_image": 0}
    run_registration(job, tmp_path / "out", report=False)
    assert calls == {"check_image": 2, "mask_on_image": 2}
    RegistrationJob.from_json(job.to_json(), check=False)
    assert calls["check_image"] == 2


def test_metrics_json_records_the_job_and_the_run_folder_reads_it_back(files, tmp_path):
    job = RegistrationJob.from_files(files["fixed"], files["moving"], method="affine", fixed_mask="none", moving_mask="none",
                                     fixed_landmarks=str(files["fl"]), moving_landmarks=str(files["ml"]), options=AFFINE,
                                     device="cpu")
    metrics = run_registration(job, tmp_path / "out", report=False)
    run = RunFolder.read(tmp_path / "out")
    assert run.metrics == json.loads(json.dumps(metrics)) and run.job == job.to_json() == metrics[JOB_KEY]
    assert run.complete and set(run.files) == {p.name for p in (tmp_path / "out").iterdir()}
    assert set(run.records) == set(run.files) - {METRICS_FILE}
    same_job(job, RegistrationJob.from_json(run.job))  # the job runs again from its record
    fl, ml, labels = run.landmarks
    np.testing.assert_allclose(fl, job.fixed_landmarks, atol=1e-3)
    before, after = run.tre
    assert before.shape == (5,) and np.all(after >= 0)
    assert run.input_path("fixed") == str(files["fixed"].resolve())


def test_the_run_folder_refuses_a_damaged_record_in_one_line_and_finds_only_whole_outputs(files, tmp_path):
    job = RegistrationJob.from_files(files["fixed"], files["moving"], method="affine", fixed_mask="none", moving_mask="none",
                                     options=AFFINE, device="cpu")
    out = tmp_path / "out"
    run_registration(job, out, report=False)
    assert RunFolder.find(out) is not None
    (out / "jacobian.nii.gz").unlink()  # a run cut short
    assert RunFolder.find(out) is None and not RunFolder.read(out).complete
    path = out / METRICS_FILE
    metrics = json.loads(path.read_text())
    metrics["jacobian"]["folding_percent"] = "lots"
    path.write_text(json.dumps(metrics))
    with pytest.raises(DeepLungRegError, match=r"field 'jacobian.folding_percent' should be a number") as e:
        RunFolder.read(out, owner="register")
    assert str(e.value).startswith("register: ") and "\n" not in str(e.value)
    path.write_text("{not json")
    with pytest.raises(DeepLungRegError, match="is damaged"):
        RunFolder.read(out)
    assert RunFolder.find(out) is None and RunFolder.find(tmp_path / "nowhere") is None


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_updating_a_run_keeps_its_mode_its_records_and_refuses_nan(files, tmp_path):
    job = RegistrationJob.from_files(files["fixed"], files["moving"], method="affine", fixed_mask="none", moving_mask="none",
                                     options=AFFINE, device="cpu")
    out = tmp_path / "out"
    run_registration(job, out, report=False)
    path = out / METRICS_FILE
    os.chmod(path, 0o640)
    run = RunFolder.read(out)
    records = run.records
    run.update(batch={"id": "case1", "seconds": 3.5})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    again = RunFolder.read(out)
    assert again.metrics["batch"] == {"id": "case1", "seconds": 3.5} and again.records == records
    before = path.read_bytes()
    with pytest.raises(DeepLungRegError, match=r"non-finite number in batch.seconds"):
        again.update(batch={"seconds": float("nan")})
    assert path.read_bytes() == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_cohort_row_is_a_job_in_its_json_form(files, tmp_path):
    from DeepLungRegLib.batch.cohort import read_cohort

    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"id,fixed,moving,fixed_mask,fixed_landmarks,moving_landmarks\n"
                      f"p1,{files['fixed']},{files['moving']},{files['mask']},{files['fl']},{files['ml']}\n")
    (row,) = read_cohort(cohort)
    data = row.job("affine", AFFINE, "cpu")
    check_job_json(data)
    job = RegistrationJob.from_json(data)
    again = job.to_json()
    assert {k: v for k, v in again.items() if k not in ("options", "landmark_labels")} == \
        {k: v for k, v in data.items() if k not in ("options", "landmark_labels")}
    assert again["landmark_labels"] == [f"P-{i}" for i in range(1, 6)]
    assert {k: again["options"][k] for k in AFFINE} == AFFINE


def test_an_older_folder_names_its_images_under_inputs(files, tmp_path):
    job = RegistrationJob.from_files(files["fixed"], files["moving"], method="affine", fixed_mask="none", moving_mask="none",
                                     options=AFFINE, device="cpu")
    out = tmp_path / "out"
    run_registration(job, out, report=False)
    metrics = json.loads((out / METRICS_FILE).read_text())
    metrics["inputs"] = {"fixed": metrics[JOB_KEY]["fixed"], "moving": metrics[JOB_KEY]["moving"]}
    del metrics[JOB_KEY]
    (out / METRICS_FILE).write_text(json.dumps(metrics))
    run = RunFolder.read(out)
    assert run.input_path("fixed") == str(files["fixed"].resolve()) and run.job["method"] == "affine"
