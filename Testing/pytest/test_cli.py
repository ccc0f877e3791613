"""End-to-end runs of the ``deeplungreg`` command line on CPU."""

import json
import subprocess
import sys

import numpy as np
import pytest

from DeepLungRegLib.cli import main
from DeepLungRegLib.pipeline import OUTPUT_FILES
from DeepLungRegLib.simulation import read_pair
from DeepLungRegLib.transforms import sample_field_at_points

FAST = ["--method", "adam", "-O", "refine_levels_mm=[8,4]", "-O", "refine_iterations=[60,40]", "-O", "refine_learning_rates=[1,0.5]"]  # adam's options


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def pair_dir(sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "pair"
    assert main(["simulate", str(sample_path), "-o", str(out), "--spacing", "4", "--seed", "2", "-q"]) == 0
    return out


@pytest.mark.slow
def test_simulate_writes_the_pair(pair_dir):
    for name in ("fixed.nii.gz", "moving.nii.gz", "fixed_mask.nii.gz", "moving_mask.nii.gz", "ground_truth_field.nii.gz",
                 "fixed_landmarks.csv", "moving_landmarks.csv", "simulation.json"):
        assert (pair_dir / name).exists(), name
    info = json.loads((pair_dir / "simulation.json").read_text())
    assert info["min_jacobian"] > 0 and 6.5 < info["mean_lung_displacement_mm"] < 9.5


@pytest.mark.slow
def test_simulate_reverse_writes_the_exhale_as_the_fixed_image(pair_dir, sample_path, tmp_path):
    out = tmp_path / "reversed"
    assert main(["simulate", str(sample_path), "-o", str(out), "--spacing", "4", "--seed", "2", "--reverse", "-q"]) == 0
    fwd, rev = read_pair(pair_dir), read_pair(out)
    assert np.array_equal(rev.fixed.array, fwd.moving.array) and np.array_equal(rev.moving.array, fwd.fixed.array)
    assert np.allclose(rev.fixed_landmarks, fwd.moving_landmarks, atol=1e-3) and rev.info["reversed"]
    # its ground truth takes the exhale landmarks back to the inhale ones
    moved = rev.fixed_landmarks + sample_field_at_points(rev.field, rev.fixed.geometry, rev.fixed_landmarks)
    assert np.linalg.norm(moved - rev.moving_landmarks, axis=1).mean() < 0.1


@pytest.mark.slow
def test_register_evaluate_tre(pair_dir, tmp_path, capsys):
    out = tmp_path / "reg"
    args = ["register", str(pair_dir / "fixed.nii.gz"), str(pair_dir / "moving.nii.gz"), "-o", str(out),
            "--fixed-mask", str(pair_dir / "fixed_mask.nii.gz"), "--moving-mask", str(pair_dir / "moving_mask.nii.gz"),
            "--fixed-landmarks", str(pair_dir / "fixed_landmarks.csv"), "--moving-landmarks", str(pair_dir / "moving_landmarks.csv"),
            "--device", "cpu", "-q", *FAST]
    assert main(args) == 0
    for name in OUTPUT_FILES + ("overlay.png", "checkerboard.png", "grid.png", "jacobian.png", "tre.png"):
        assert (out / name).exists() == (name != "uncertainty.nii.gz"), name  # the map: only convex with uncertainty on
    m = json.loads((out / "metrics.json").read_text())
    assert m["tre_after"]["mean"] < 0.5 * m["tre_before"]["mean"]
    assert set(m["ventilation"]) >= {"left", "right", "both"}
    assert m["ventilation"]["both"]["volume_change_ml"] < 0  # exhale loses volume
    capsys.readouterr()
    # evaluate against the ground truth
    assert main(["evaluate", str(pair_dir), str(out / "displacement.nii.gz"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["tre_after"]["mean"] == pytest.approx(m["tre_after"]["mean"], abs=1e-3)
    assert ev["dense_error_lung"]["mean"] < ev["tre_before"]["mean"]
    assert ev["lung_dice_after"] > ev["lung_dice_before"]
    # tre with and without the field
    assert main(["tre", str(pair_dir / "fixed_landmarks.csv"), str(pair_dir / "moving_landmarks.csv"), "--field", str(out / "displacement.nii.gz"), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert t["after"]["mean"] == pytest.approx(m["tre_after"]["mean"], abs=1e-3)
    # a second run does not overwrite silently
    r = run_cli(*args)
    assert r.returncode == 2 and "already holds results" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, match", [
    (["register", "missing_fixed.nii.gz", "missing_moving.nii.gz", "-o", "{tmp}/o"], "does not exist"),
    (["register", "{pair}/fixed.nii.gz", "{pair}/moving.nii.gz", "-o", "{tmp}/o", "--method", "nope"], "unknown method"),
    (["register", "{pair}/fixed.nii.gz", "{pair}/moving.nii.gz", "-o", "{tmp}/o", "--method", "adam", "-O", "refine_iterations=[-3,2,2]"], "refine_iterations must be between"),
    (["register", "{pair}/fixed.nii.gz", "{pair}/moving.nii.gz", "-o", "{tmp}/o", "--fixed-landmarks", "{pair}/fixed_landmarks.csv"], "both"),
    (["register", "{pair}/fixed.nii.gz", "{pair}/moving.nii.gz", "-o", "{tmp}/o", "--device", "tpu"], "unknown device"),
    (["tre", "{pair}/fixed_landmarks.csv", "{tmp}/none.txt"], "does not exist"),
    (["simulate", "{pair}/fixed_landmarks.csv", "-o", "{tmp}/p"], "cannot read"),
    (["evaluate", "{tmp}", "{pair}/ground_truth_field.nii.gz"], "not a simulated pair"),
])
@pytest.mark.slow
def test_bad_input_gives_one_line_error(pair_dir, tmp_path, args, match):
    r = run_cli(*[a.format(tmp=tmp_path, pair=pair_dir) for a in args])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeplungreg: error:") and match in lines[0], r.stderr


def test_methods_command(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "adam" in out and "affine" in out


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    """The README's main job: TRE must fall by at least 80 % with < 0.1 % folding."""
    assert main(["demo", "-o", str(tmp_path / "demo"), "--device", "cpu", "-q"]) == 0
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert m["tre_after"]["mean"] <= 0.2 * m["tre_before"]["mean"]
    assert m["jacobian"]["folding_percent"] < 0.1
    assert (tmp_path / "demo" / "report.html").exists()
    assert "TRE reduced by" in capsys.readouterr().out


@pytest.mark.slow
def test_config_file_is_read_and_checked(pair_dir, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"config": {"refine_levels_mm": [8], "refine_iterations": [5], "refine_learning_rates": [1.0], "affine_init": false}}')
    out = tmp_path / "o"
    r = run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", out, "--config", cfg, "-q", "--method", "adam",
                "--fixed-mask", pair_dir / "fixed_mask.nii.gz", "--moving-mask", pair_dir / "moving_mask.nii.gz")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["refine_iterations"] == [5]
    cfg.write_text("[1, 2]")
    r = run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "p", "--config", cfg)
    assert r.returncode == 2 and "JSON object" in r.stderr
    # a file saved by version 1 (old option names) is read, and the installed command (not __main__, where Python
    # would hide a DeprecationWarning) says so in one line per name
    from DeepLungRegLib.methods import get_method

    v1 = {new: old for old, new in get_method("adam").config_cls.aliases().items()}  # version 1's names
    cfg.write_text(json.dumps({"method": "adam", "config": {v1["refine_levels_mm"]: [8], v1["refine_iterations"]: [5],
                                                            v1["refine_learning_rates"]: [1.0], "affine_init": False}}))
    r = subprocess.run([sys.executable, "-c", "import sys; from DeepLungRegLib.cli import main; sys.exit(main(sys.argv[1:]))",
                        "register", str(pair_dir / "fixed.nii.gz"), str(pair_dir / "moving.nii.gz"), "-o", str(tmp_path / "old"),
                        "--config", str(cfg), "-q", "--method", "adam"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("deeplungreg: warning:")]
    assert len(warned) == 3 and f"option '{v1['refine_iterations']}' is now called 'refine_iterations'" in r.stderr, r.stderr


@pytest.mark.slow
def test_simulate_refuses_to_overwrite_a_pair(pair_dir, sample_path):
    r = run_cli("simulate", sample_path, "-o", pair_dir, "-q")
    assert r.returncode == 2 and "already holds a pair" in r.stderr and len(r.stderr.strip().splitlines()) == 1
