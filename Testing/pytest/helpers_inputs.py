"""Helpers shared by the tests of inputs as users have them (io, pipeline, cli, methods)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib import Geometry, Image
from DeepLungRegLib.cli import main


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


def write_sitk(tmp_path, name, array=None, compress=False, **geometry) -> "os.PathLike":
    img = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 7, 8)).astype(np.float32) if array is None else array)
    for key, value in geometry.items():
        getattr(img, f"Set{key}")(value)
    path = tmp_path / name
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def cut(path, n: int = 200):
    """Drop the last ``n`` bytes of a file (a copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[:-n])
    return path


# ------------------------------------------------------------------ registration inputs
def tiny(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), seed: int = 0) -> Image:
    array = np.random.default_rng(seed).normal(0.0, 100.0, (8, 8, 8)).astype(np.float32)
    return Image(array, Geometry((8, 8, 8), spacing, origin))


# ------------------------------------------------------------------ the command line: one line, not a traceback
def one_line(capsys, code: int, match: str) -> str:
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deeplungreg: error:") and match in lines[0], err.err
    return err.out
