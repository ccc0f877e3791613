"""Inputs as users have them: float volumes, damaged files, untrusted weights, outputs
that must not clobber anything, other platforms, and the small mistakes of a first run."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError, Geometry, Image, read_image, write_image
from DeepLungRegLib.cli import main
from DeepLungRegLib.io.fields import read_field, write_field
from DeepLungRegLib.pipeline import ALL_OUTPUT_FILES, RegistrationJob, run_registration
from DeepLungRegLib.simulation import read_pair

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--method", "adam", "-O", "refine_levels_mm=[8]", "-O", "refine_iterations=[20]", "-O", "refine_learning_rates=[1]", "-O", "affine_init=false"]
FAST_CFG = {"refine_levels_mm": [8.0], "refine_iterations": [20], "refine_learning_rates": [1.0], "affine_init": False}  # adam's options


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", *map(str, args)], capture_output=True, text=True, **kw)


def one_line_error(r, match: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("deeplungreg: error:") and match in lines[0], r.stderr


@pytest.fixture(scope="module")
def pair_dir(sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs") / "pair"
    assert main(["simulate", str(sample_path), "-o", str(out), "--spacing", "6", "--seed", "4", "-q"]) == 0
    return out


def register_args(pair_dir, out, *extra, moving=None, fixed=None):
    return ["register", str(fixed or pair_dir / "fixed.nii.gz"), str(moving or pair_dir / "moving.nii.gz"), "-o", str(out),
            "--fixed-mask", str(pair_dir / "fixed_mask.nii.gz"), "--moving-mask", str(pair_dir / "moving_mask.nii.gz"),
            "--device", "cpu", "-q", *FAST, *map(str, extra)]


# ------------------------------------------------------------------ float images
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


# -------------------------------------------------------------- damaged files
def _nifti(tmp_path: Path, name: str, array: np.ndarray, compress: bool) -> Path:
    g = Geometry(array.shape[::-1], (2.0, 2.0, 3.0), (5.0, -3.0, 10.0))
    path = tmp_path / name
    write_image(Image(array, g), path, compress=compress)
    return path


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


# --------------------------------------------------------------- safe weights
class _Evil:
    """Unpickling this creates a file: what a crafted .pt could do."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_weights_file_that_would_run_code_is_refused(pair_dir, tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = _Evil()
    evil.target = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"method": "mlvirnet", "config": {}, "model": {}, "payload": evil}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the file is what we claim: plain torch.load would run it
        torch.load(path, weights_only=True)
    from DeepLungRegLib.networks.mindnet import load_feature_net
    from DeepLungRegLib.networks import load_checkpoint

    for load in (load_checkpoint, load_feature_net):
        with pytest.raises(DeepLungRegError, match="refused"):
            load(path)
    r = run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "o", "--method", "mlvirnet",
                "-O", f"weights={path}", "--fixed-mask", "none", "--moving-mask", "none")
    one_line_error(r, "refused")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_the_shipped_weights_load_with_weights_only():
    for name in ("lindef", "mlvirnet", "labeldriven", "mindnet"):
        assert isinstance(torch.load(ROOT / "DeepLungRegLib" / "data" / "weights" / f"{name}.pt", weights_only=True), dict)


# --------------------------------------------------------------- safe outputs
def test_a_users_file_of_an_output_name_is_never_overwritten(pair_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlay.png").write_text("my own picture")
    r = run_cli(*register_args(pair_dir, out))
    one_line_error(r, "already holds results")
    assert (out / "overlay.png").read_text() == "my own picture" and sorted(p.name for p in out.iterdir()) == ["overlay.png"]


def test_an_interrupted_run_leaves_nothing(pair_dir, tmp_path):
    pair = read_pair(pair_dir)
    out = tmp_path / "out"

    def stop(stage, fraction):
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_registration(RegistrationJob(pair.fixed, pair.moving, "adam", config=FAST_CFG, fixed_mask=pair.fixed_mask,
                                         moving_mask=pair.moving_mask, device="cpu"), out, progress=stop)
    assert not out.exists() and not list(tmp_path.iterdir())  # no half set, no staging folder
    # the same into a folder that holds other files: they stay, nothing is added
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        run_registration(RegistrationJob(pair.fixed, pair.moving, "adam", config=FAST_CFG, fixed_mask=pair.fixed_mask,
                                         moving_mask=pair.moving_mask, device="cpu"), out, progress=stop)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and len(list(tmp_path.iterdir())) == 1


def test_overwrite_removes_the_earlier_runs_own_files_and_only_those(pair_dir, tmp_path):
    out = tmp_path / "out"
    lm = ["--fixed-landmarks", pair_dir / "fixed_landmarks.csv", "--moving-landmarks", pair_dir / "moving_landmarks.csv"]
    assert main(register_args(pair_dir, out, *lm)) == 0
    first = json.loads((out / "metrics.json").read_text())["output_files"]
    assert "tre.png" in first and "ventilation_hu.nii.gz" in first
    assert set(first) == {p.name for p in out.iterdir()} and set(first) <= set(ALL_OUTPUT_FILES)
    (out / "notes.txt").write_text("mine")
    # a rerun without landmarks and without masks' HU ventilation: tre.png must not survive as a stale file
    args = register_args(pair_dir, out, "--overwrite")
    assert main(args) == 0
    names = {p.name for p in out.iterdir()}
    assert "tre.png" not in names and "notes.txt" in names and (out / "notes.txt").read_text() == "mine"
    assert names - {"notes.txt"} == set(json.loads((out / "metrics.json").read_text())["output_files"])


def test_an_output_folder_that_cannot_be_created_fails_before_registering(pair_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    r = run_cli(*register_args(pair_dir, blocker / "out"))
    one_line_error(r, "is a file")
    r = run_cli(*register_args(pair_dir, blocker))
    one_line_error(r, "is a file")
    assert time.perf_counter() - t0 < 60 and blocker.read_text() == "x"


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGTERM")
def test_sigterm_ends_with_a_message_and_leaves_nothing(pair_dir, tmp_path):
    out = tmp_path / "out"
    args = register_args(pair_dir, out)
    i = args.index("-O")
    args = args[:i]  # adam with its default, slower settings: time to be stopped
    proc = subprocess.Popen([sys.executable, "-m", "DeepLungRegLib.cli", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_dir() and any(p.name.startswith(".deeplungreg-partial-") for p in out.iterdir())):
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------- portable
UNIX_ONLY = {"resource", "fcntl", "termios", "tty", "pty", "pwd", "grp", "posix", "crypt", "syslog", "spwd", "nis", "curses",
             "readline", "posixpath"}


def test_no_unix_only_module_is_imported_anywhere_in_the_library():
    import ast

    offenders = []
    for path in [*(ROOT / "DeepLungRegLib").rglob("*.py"), *(ROOT / "DeepLungReg").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in UNIX_ONLY]
    assert not offenders, offenders


def test_the_library_imports_and_registers_where_resource_does_not_exist(pair_dir):
    """As on Windows: ``import resource`` fails. Peak memory then comes from the portable call."""
    code = f"""
import sys
sys.modules['resource'] = None  # any 'import resource' now raises ImportError
import DeepLungRegLib
from DeepLungRegLib.methods import register
from DeepLungRegLib.simulation import read_pair
from DeepLungRegLib.memory import peak_rss_mb
p = read_pair({str(pair_dir)!r})
r = register(p.fixed, p.moving, 'adam', config={FAST_CFG!r}, device='cpu')
print(r.field.shape, peak_rss_mb())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shape, peak = r.stdout.split(") ")
    assert peak.strip() == "None" or float(peak) > 50  # from /proc where there is one; never an error


def test_peak_memory_is_in_megabytes():
    code = """
import numpy as np
from DeepLungRegLib.memory import peak_rss_mb
before = peak_rss_mb()
block = np.ones(200 * 2**20 // 8)  # 200 MB touched
print(before, peak_rss_mb())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    before, after = map(float, r.stdout.split())
    assert 10 < before < 2000 and 150 < after - before < 260


# ------------------------------------------------------ the smaller mistakes
def test_a_tiny_image_gives_one_line(tmp_path):
    g = Geometry((3, 3, 3), (1.0, 1.0, 1.0))
    arr = np.random.default_rng(0).normal(-500, 300, g.shape).astype(np.int16)
    write_image(Image(arr, g), tmp_path / "tiny.nii.gz")
    one_line_error(run_cli("register", tmp_path / "tiny.nii.gz", tmp_path / "tiny.nii.gz", "-o", tmp_path / "o", "-q"), "too small")


def test_simulate_refuses_a_zero_spacing(sample_path, tmp_path):
    one_line_error(run_cli("simulate", sample_path, "-o", tmp_path / "p", "--spacing", "0"), "--spacing must be between")
    assert not (tmp_path / "p").exists()


def test_whole_number_options_refuse_fractions(pair_dir, tmp_path):
    one_line_error(run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "o",
                           "--method", "adam", "-O", "iterations=2.5"), "iterations must be a whole number")
    one_line_error(run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "o",
                           "-O", "regularisation=strong"), "regularisation must be a number")


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


def test_the_report_shows_the_same_slices_however_the_fixed_image_is_stored(pair_dir):
    """Axial slices stay axial (superior up, left on the right) for a fixed image stored RAS or with permuted axes."""
    from DeepLungRegLib.report import ReportSlices
    from DeepLungRegLib.simulation.storage import restore, signed_permutation

    pair = read_pair(pair_dir)
    ref = ReportSlices(pair.fixed.geometry, pair.fixed_mask.array)
    ref.add("fixed", pair.fixed.array)
    for axes, signs in (((0, 1, 2), (-1, -1, 1)), ((1, 2, 0), (1, -1, 1))):
        t = signed_permutation(pair.fixed.geometry, axes, signs)
        img, mask = restore(pair.fixed, t), restore(pair.fixed_mask, t, label=True)
        sl = ReportSlices(t, mask.array)
        sl.add("fixed", img.array)
        assert sl.centre == ref.centre and sl.geometry.same_as(ref.geometry, tol=1e-6)
        for view in ("axial", "coronal"):
            assert np.array_equal(sl.views["fixed"][view], ref.views["fixed"][view])
