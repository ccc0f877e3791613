"""The library as a user installs it: a wheel built from the repository, installed with pip into a
fresh virtual environment (no system site-packages, no source tree on the path), runs the demo and
finds its shipped weights and sample data (package data, found with importlib.resources).

It builds a venv and installs torch and the wheel's dependencies with pip (from pip's cache or the
registry), then runs ``deeplungreg demo``: minutes, so it is marked slow. Where no venv can be made
or pip cannot install (offline, no ensurepip) it skips with pip's reason; with
DEEPLUNGREG_REQUIRE_SHARED=1 (CI) it fails instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"
#: Left out of the copy that the wheel is built from (a build writes build/ and *.egg-info beside the sources).
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                "demo-output", "bench-output", "train-runs", "out")


def _cannot(msg: str) -> None:
    if os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
        pytest.fail(msg + "; DEEPLUNGREG_REQUIRE_SHARED=1 forbids skipping")
    pytest.skip(msg)


def _run(cmd: list, *, cwd: Path, env: dict, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tail(r: subprocess.CompletedProcess, n: int = 1500) -> str:
    return (r.stdout + r.stderr)[-n:]


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_runs_the_demo_and_finds_its_data(tmp_path):
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    wheels = tmp_path / "wheels"
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", ".", "-w", wheels], cwd=src, env=env)
    if r.returncode != 0:
        _cannot(f"cannot build the wheel: {_tail(r, 300)}")
    (wheel,) = wheels.glob("deeplungreglib-*.whl")

    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    if r.returncode != 0:
        _cannot(f"cannot make a virtual environment: {_tail(r, 300)}")
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / ("python.exe" if os.name == "nt" else "python")
    for what in ([TORCH], [wheel]):
        r = _run([py, "-m", "pip", "install", "-q", *what], cwd=tmp_path, env=env)
        if r.returncode != 0:
            _cannot(f"pip cannot install {what[0]} into a fresh venv (offline?): {_tail(r, 300)}")
    t_install = time.perf_counter() - t0

    # The installed package, not the source tree: weights and sample files found by importlib.resources.
    work = tmp_path / "work"
    work.mkdir()
    check = (
        "import json, DeepLungRegLib, DeepLungRegLib.data as d\n"
        "from DeepLungRegLib.networks import network_names\n"
        "from DeepLungRegLib.networks.registry import shipped_weights\n"
        "from DeepLungRegLib.networks.mindnet import load_feature_net\n"
        "load_feature_net()\n"
        "print(json.dumps({'package': DeepLungRegLib.__file__, 'weights': [str(shipped_weights(n)) for n in network_names()],\n"
        "                  'sample': [str(d.sample_path(f)) for f, _, _ in d.SAMPLE_PAIR]}))\n"
    )
    r = _run([py, "-c", check], cwd=work, env=env)
    assert r.returncode == 0, _tail(r)
    found = json.loads(r.stdout.strip().splitlines()[-1])
    site = venv.resolve()
    assert Path(found["package"]).resolve().is_relative_to(site), found["package"]
    for path in found["weights"] + found["sample"]:
        assert Path(path).resolve().is_relative_to(site) and Path(path).is_file(), path
    assert len(found["weights"]) >= 3

    t1 = time.perf_counter()
    r = _run([bindir / "deeplungreg", "demo", "-o", work / "demo", "--quiet", "--device", "cpu"], cwd=work, env=env)
    assert r.returncode == 0, _tail(r)
    assert "demo finished" in r.stdout and "TRE reduced by" in r.stdout, _tail(r)
    metrics = json.loads((work / "demo" / "metrics.json").read_text())
    assert metrics["tre_after"]["mean"] < 0.5 * metrics["tre_before"]["mean"]
    t_demo = time.perf_counter() - t1

    # A network method with its shipped weights, on the demo's pair.
    pair = work / "demo" / "pair"
    r = _run([bindir / "deeplungreg", "register", pair / "fixed.nii.gz", pair / "moving.nii.gz", "--method", "lindef",
              "--fixed-landmarks", pair / "fixed_landmarks.csv", "--moving-landmarks", pair / "moving_landmarks.csv",
              "-o", work / "lindef", "--quiet", "--device", "cpu"], cwd=work, env=env)
    assert r.returncode == 0, _tail(r)
    lindef = json.loads((work / "lindef" / "metrics.json").read_text())
    assert lindef["tre_after"]["mean"] < lindef["tre_before"]["mean"]
    print(f"\nwheel test: build and install {t_install:.0f} s, demo {t_demo:.0f} s, "
          f"total {time.perf_counter() - t0:.0f} s")
