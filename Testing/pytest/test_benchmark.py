"""DIR-Lab readers, the benchmark runner and the baselines' field conversions."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.benchmark import dirlab
from DeepLungRegLib.benchmark.dirlab import (
    DIRLAB_4DCT, DIRLAB_4DCT_INITIAL_TRE, dirlab_files, find_cases, load_dirlab_case, read_dirlab_img,
    read_dirlab_landmarks, write_dirlab_img,
)
from DeepLungRegLib.cli import main as cli


def _write_case(root, files, rng, n=30, offset=0):
    """Synthetic images in DIR-Lab's layout with a marker voxel at every landmark (1-based indices)."""
    nx, ny, nz = files.size
    idx_in = np.stack([rng.integers(1, nx + 1, n), rng.integers(1, ny + 1, n), rng.integers(1, nz + 1, n)], 1)
    idx_ex = np.clip(idx_in + rng.integers(-3, 4, size=(n, 3)), 1, [nx, ny, nz])
    for img_path, pts_path, idx, value in ((files.inhale_image, files.inhale_points, idx_in, 1000),
                                           (files.exhale_image, files.exhale_points, idx_ex, 2000)):
        arr = np.full((nz, ny, nx), offset - 900, np.int16)
        arr[idx[:, 2] - 1, idx[:, 1] - 1, idx[:, 0] - 1] = value + offset
        write_dirlab_img(arr, img_path)
        pts_path.parent.mkdir(parents=True, exist_ok=True)
        pts_path.write_text("\n".join(f"{i}\t{j}\t{k}" for i, j, k in idx) + "\n")
    return idx_in, idx_ex


def test_dirlab_4dct_layout_geometry_matches_landmarks(tmp_path):
    rng = np.random.default_rng(0)
    files = dirlab_files(tmp_path, 1, "4dct")
    assert files.inhale_image == tmp_path / "Case1Pack" / "Images" / "case1_T00_s.img"
    assert files.exhale_points == tmp_path / "Case1Pack" / "ExtremePhases" / "Case1_300_T50_xyz.txt"
    idx_in, idx_ex = _write_case(tmp_path, files, rng)
    fixed, moving, fp, mp = load_dirlab_case(files)
    assert fixed.geometry.size == DIRLAB_4DCT[1][0] and fixed.geometry.spacing == DIRLAB_4DCT[1][1]
    assert fixed.array.shape == (94, 256, 256) and fixed.array.dtype == np.int16
    # Landmark mm = (index - 1) * spacing, and the image holds its marker exactly there.
    assert np.allclose(fp, (idx_in - 1) * np.array(DIRLAB_4DCT[1][1]))
    for img, pts, value in ((fixed, fp, 1000), (moving, mp, 2000)):
        ijk = np.round(img.geometry.world_to_index(pts)).astype(int)
        assert np.allclose(img.geometry.world_to_index(pts), ijk, atol=1e-9)
        assert np.all(img.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]] == value)
    # Exhale as fixed swaps images and points.
    f2, m2, fp2, mp2 = load_dirlab_case(files, fixed="exhale")
    assert np.array_equal(f2.array, moving.array) and np.array_equal(fp2, mp) and np.array_equal(mp2, fp)
    assert [c.case for c in find_cases(tmp_path, "4dct")] == [1]


def test_dirlab_copd_layout_and_hu_offset(tmp_path, monkeypatch):
    monkeypatch.setitem(dirlab.DIRLAB_COPD, 3, ((40, 32, 12), (0.652, 0.652, 2.5)))
    files = dirlab_files(tmp_path, 3, "copd")
    assert files.inhale_image == tmp_path / "copd3" / "copd3_iBHCT.img"
    assert files.exhale_points == tmp_path / "copd3" / "copd3_300_eBH_xyz_r1.txt"
    _write_case(tmp_path, files, np.random.default_rng(1), n=10, offset=1024)  # stored as HU + 1024
    fixed, moving, fp, mp = load_dirlab_case(files)
    assert fixed.array.min() == -900 and fixed.array.max() == 1000  # the offset is removed
    assert read_dirlab_img(files.inhale_image, files.size, files.spacing, hu_offset=0).array.min() == 124


def test_dirlab_errors_name_the_problem(tmp_path):
    files = dirlab_files(tmp_path, 2, "4dct")
    with pytest.raises(DeepLungRegError, match="does not exist"):
        read_dirlab_img(files.inhale_image, files.size, files.spacing)
    write_dirlab_img(np.zeros((5, 5, 5), np.int16), files.inhale_image)
    with pytest.raises(DeepLungRegError, match="250 bytes.*wrong case"):
        read_dirlab_img(files.inhale_image, files.size, files.spacing)
    with pytest.raises(DeepLungRegError, match="case 11 does not exist"):
        dirlab_files(tmp_path, 11)
    with pytest.raises(DeepLungRegError, match="unknown dataset"):
        dirlab_files(tmp_path, 1, "ct")


def test_initial_tre_of_the_real_dirlab_landmarks_matches_the_paper(shared_data):
    """Paper 002, Table 1, 'Initial' column, to 0.01 mm (mean and standard deviation)."""
    cases = find_cases(shared_data / "dirlab4dct", "4dct", need_images=False)
    assert [c.case for c in cases] == list(range(1, 11))
    for files in cases:
        a, b = read_dirlab_landmarks(files)
        err = np.linalg.norm(a - b, axis=1)
        mean, std = DIRLAB_4DCT_INITIAL_TRE[files.case]
        assert len(err) == 300
        assert abs(err.mean() - mean) <= 0.005 + 1e-9, (files.case, err.mean(), mean)
        assert abs(err.std() - std) <= 0.005 + 1e-9, (files.case, err.std(), std)


def test_copd_landmarks_read(shared_data):
    files = dirlab_files(shared_data / "dirlabcopd", 1, "copd")
    a, b = read_dirlab_landmarks(files)
    assert a.shape == (300, 3) and 20 < np.linalg.norm(a - b, axis=1).mean() < 35  # COPD motion is large


@pytest.mark.slow
def test_benchmark_command_end_to_end(tmp_path, sample_path, capsys):
    out = tmp_path / "bench"
    rc = cli(["benchmark", "--methods", "affine", "--simulated", str(sample_path), "--amplitudes", "small,large",
              "--spacing", "5", "--quick", "-o", str(out), "-q"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1 and rows[0]["method"] == "affine" and rows[0]["pair"].startswith("popi00_demo_small_s1")
    r = rows[0]
    assert float(r["tre_after_mean"]) < float(r["tre_before_mean"]) and float(r["registration_s"]) > 0
    assert 50 < float(r["peak_rss_mb"]) < 4000 and r["error"] == ""
    md = (out / "results.md").read_text()
    assert "| Pair | Initial | affine |" in md and "All landmarks" in md
    assert (out / "tre_boxplot.png").stat().st_size > 5000
    raw = json.loads((out / "results.json").read_text())
    assert len(next(iter(raw.values()))["tre_after_per_landmark"]) == int(r["n_landmarks"])
    # Refuses to overwrite; a rerun with --overwrite reuses the simulated pair.
    assert cli(["benchmark", "--methods", "affine", "--pairs", str(next((out / "pairs").iterdir())), "-o", str(out), "-q"]) == 2
    assert "already holds results.csv" in capsys.readouterr().err
    # --resume: what an earlier (e.g. interrupted) run measured is kept per run and reused, not measured again
    again = ["benchmark", "--methods", "affine", "--simulated", str(sample_path), "--amplitudes", "small,large", "--spacing", "5",
             "--quick", "-o", str(out), "--resume"]
    assert cli(again) == 0
    assert "affine on popi00_demo_small_s1_5mm: measured by an earlier run (--resume)" in capsys.readouterr().err
    assert list(csv.DictReader(open(out / "results.csv"))) == rows
    kept = next((out / "runs").glob("*/result.json"))
    record = json.loads(kept.read_text())
    record["method"] = "adam"  # not this run's measurement: measured again
    kept.write_text(json.dumps(record))
    assert cli(again) == 0
    assert "measured by an earlier run" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["--methods", "nope", "--pairs", "x"], "not a simulated pair folder"),
    (["--methods", "affine"], "exactly one of"),
    (["--methods", "affine", "--dirlab", "/nonexistent"], "is not a folder"),
    (["--methods", "affine", "--simulated", "x.nrrd", "--seeds", "1,a"], "--seeds takes whole numbers"),
    (["--methods", "affine", "--dirlab", "/nonexistent", "--cases", "1,x"], "--cases takes DIR-Lab case numbers"),
])
def test_benchmark_command_errors(tmp_path, capsys, argv, match):
    assert cli(["benchmark", *argv, "-o", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err


def test_benchmark_rejects_unknown_methods(tmp_path, sample_path):
    from DeepLungRegLib.benchmark.runner import run_benchmark

    with pytest.raises(DeepLungRegError, match="unknown method"):
        run_benchmark([{"kind": "simulated", "path": str(tmp_path), "name": "x"}], ["nope"], tmp_path)


@pytest.mark.parametrize("name, module", [("convexadam", "convexAdam"), ("convexadam-best", "convexAdam"), ("elastix", "itk")])
def test_baseline_field_conversion_on_a_known_translation(sample_path, name, module, tmp_path, monkeypatch):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"baseline {name} is not installed (optional: pip install 'DeepLungRegLib[bench]')")
    from DeepLungRegLib import read_image
    from DeepLungRegLib.benchmark.baselines import check_conversion
    from DeepLungRegLib.transforms import resample_to_spacing

    image = resample_to_spacing(read_image(sample_path), 5.0, fill=-1024.0)
    monkeypatch.chdir(tmp_path)
    check = check_conversion(name, image, shift_mm=(5.0, -4.0, 6.0), device="cpu")
    assert check["error_mm"] < 2.5
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working folder


def test_peak_rss_is_the_workers_own():
    """A child process reports its own peak, not the parent's (ru_maxrss is inherited on Linux)."""
    import subprocess
    import sys

    big = bytearray(300 * 2**20)  # make this process's peak clearly larger than a fresh interpreter's
    code = "from DeepLungRegLib.benchmark.worker import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    from DeepLungRegLib.benchmark.worker import peak_rss_mb

    assert peak_rss_mb() > 300 and child < peak_rss_mb() - 150
    del big


def test_method_variants_and_their_splitting():
    from DeepLungRegLib.benchmark.runner import method_variant, split_methods

    assert split_methods("adam, convex:refine_levels_mm=[3,2.5]:regularisation=0.5,mlvirnet:refine_iterations=30") == [
        "adam", "convex:refine_levels_mm=[3,2.5]:regularisation=0.5", "mlvirnet:refine_iterations=30"]
    assert method_variant("convex:refine_levels_mm=[3,2.5]:regularisation=0.5") == (
        "convex", {"refine_levels_mm": [3, 2.5], "regularisation": 0.5})
    assert method_variant("adam") == ("adam", {})
    # a variant naming a weights file still gives one flat file name per run
    from DeepLungRegLib.benchmark.runner import _file_safe

    assert _file_safe("mlvirnet:weights=/runs/a b/w.pt:refine_iterations=30") == "mlvirnet_weights=_runs_a_b_w.pt_refine_iterations=30"


def test_benchmark_refuses_bad_variants_before_running(tmp_path):
    from DeepLungRegLib.benchmark.runner import run_benchmark

    spec = [{"kind": "pairdir", "path": str(tmp_path), "name": "x"}]
    with pytest.raises(DeepLungRegError, match="unknown option"):
        run_benchmark(spec, ["convex:nonsense=1"], tmp_path / "out", check_baselines=False)
    with pytest.raises(DeepLungRegError, match="unknown method"):
        run_benchmark(spec, ["nomethod:refine_iterations=1"], tmp_path / "out", check_baselines=False)


@pytest.mark.slow
def test_benchmark_runs_both_directions_and_reports_each(tmp_path, sample_path, capsys):
    """The same simulated pair with the CT fixed and the other way round (the simulated exhale fixed):
    one table per direction, and the seconds of each stage."""
    from DeepLungRegLib.simulation import read_pair

    out = tmp_path / "bench"
    rc = cli(["benchmark", "--methods", "affine", "--simulated", str(sample_path), "--amplitudes", "small",
              "--spacing", "6", "--directions", "inhale,exhale", "-o", str(out), "-q"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["direction"] for r in rows] == ["inhale fixed", "exhale fixed"]
    assert rows[1]["pair"] == rows[0]["pair"] + "_exhale-fixed" and "affine" in rows[0]["stages_s"]
    forward, backward = (read_pair(out / "pairs" / r["pair"]) for r in rows)
    assert np.array_equal(backward.fixed.array, forward.moving.array) and np.array_equal(backward.moving.array, forward.fixed.array)
    assert np.allclose(backward.fixed_landmarks, forward.moving_landmarks)
    assert float(rows[0]["tre_before_mean"]) == pytest.approx(float(rows[1]["tre_before_mean"]), abs=1e-3)
    md = (out / "results.md").read_text()
    assert md.index("## Inhale fixed") < md.index("## Exhale fixed") < md.index("## Time per stage")
    assert md.count("| Pair | Initial | affine |") == 2
    capsys.readouterr()
    assert cli(["benchmark", "--methods", "affine", "--simulated", str(sample_path), "--directions", "sideways",
                "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "directions are inhale and exhale, not sideways" in capsys.readouterr().err
