"""Tests of DeepLungRegLib/batch/run.py's output safety: refusals before any work, and a quiet run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from DeepLungRegLib import DeepLungRegError

from helpers_outputs import AFFINE, NoCluster, listing, tiny_pair


ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ 4: batch overwrites a user's files
@pytest.fixture
def cohort(tmp_path):
    fixed, moving = tiny_pair(tmp_path / "pair")
    path = tmp_path / "cohort.csv"
    path.write_text(f"id,fixed,moving,fixed_mask,moving_mask\ncase1,{fixed},{moving},none,none\n")
    return path


@pytest.mark.parametrize("where", ["report.html in OUTDIR/<id>", "results.csv in OUTDIR", "results.md in OUTDIR",
                                   "the cohort file is OUTDIR/results.csv"])
def test_4_batch_refuses_before_any_work_a_cohort_whose_outputs_would_land_on_a_users_file(tmp_path, cohort, where):
    from DeepLungRegLib.batch import run_cohort

    out = tmp_path / "out"
    (out / "case1").mkdir(parents=True)
    if where.startswith("report.html"):
        (out / "case1" / "report.html").write_text("my report")
    elif where.startswith("results"):
        (out / where.split()[0]).write_text("my table")
    else:
        cohort = Path(cohort.replace(out / "results.csv"))
    before = listing(out)
    with pytest.raises(DeepLungRegError) as e:
        run_cohort(cohort, out, method="affine", options=AFFINE, client=NoCluster())
    msg = str(e.value)
    assert "\n" not in msg and "nothing was run" in msg
    assert ("is an input" in msg) if where.startswith("the cohort") else ("not written by a run of ours" in msg)
    assert listing(out) == before


@pytest.mark.slow
@pytest.mark.dask
def test_15_batch_is_quiet_without_verbose(tmp_path, cohort):
    pytest.importorskip("distributed", reason="deeplungreg batch needs Dask distributed (pip install '.[batch]')")
    r = subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", "batch", str(cohort), "-o", str(tmp_path / "out"),
                        "--method", "affine", "--workers", "1", "--device", "cpu", "-q", "-O", "levels_mm=[8]",
                        "-O", "iterations=[30]"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    noise = [ln for ln in r.stderr.splitlines() if "INFO" in ln or "Traceback" in ln or "distributed" in ln or "Error" in ln]
    assert noise == [], r.stderr[-2000:]  # a method's own warning (no lung mask here) may stay
    assert "1 registered, 0 failed" in r.stdout and (tmp_path / "out" / "case1" / "warped.nii.gz").is_file()
