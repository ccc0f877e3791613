"""scripts/bench_sequence.py end to end on a tiny cycle: both starts run, and the tables it prints hold TRE per phase,
the volume curve against the simulator's and each start's time and peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from DeepLungRegLib.worker import child_environment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_sequence_prints_tre_per_phase_volume_curve_and_memory(sample_path, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_sequence.py"), "--ct", str(sample_path), "--spacing", "8", "--phases", "4",
           "--landmarks", "40", "--method", "affine", "-O", "levels_mm=[8]", "-O", "iterations=[40]", "-o", str(out)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, env=child_environment(), cwd=ROOT, timeout=900).stdout
    lines = text.splitlines()
    phase_rows = [ln for ln in lines if ln.startswith("| phase_0")]
    assert len(phase_rows) == 8, text  # 4 phases in the TRE table and 4 in the volume table
    assert "| phase_02 | reference |" in text and "(from phase_03)" in text  # phase 0 started from its neighbour
    for start in ("reference", "neighbour"):
        summary = json.loads((out / f"run-{start}" / "sequence.json").read_text())
        assert summary["start"] == start and summary["peak_rss_mb"] > 100
        row = next(ln for ln in lines if ln.startswith(f"| {start} |"))
        assert f"| {summary['peak_rss_mb']:.0f} |" in row
    truth = json.loads((out / "cycle" / "cycle.json").read_text())
    assert f"| phase_00 | {truth['phases'][0]['lung_volume_ml']:.0f} |" in text
    assert any(ln.startswith("| tidal volume |") for ln in lines)
    # a second call reuses the runs (nothing registered again) and prints the same tables
    again = subprocess.run(cmd, check=True, capture_output=True, text=True, env=child_environment(), cwd=ROOT, timeout=300).stdout
    assert again == text
