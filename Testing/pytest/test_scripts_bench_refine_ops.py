"""scripts/bench_refine_ops.py on a tiny field: one row per operation, and each pair of forms computes the same
values and gradients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from DeepLungRegLib.worker import child_environment

ROOT = Path(__file__).resolve().parents[2]


def test_bench_refine_ops_prints_the_same_values_for_both_forms():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_refine_ops.py"), "--size", "12", "13", "14", "--points", "400",
           "--repeat", "1"]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, env=child_environment(), cwd=ROOT, timeout=300).stdout
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| operation")]
    assert len(rows) == 4, text
    for row in rows:
        assert float(row.strip("| ").split("|")[-1]) < 1e-5, row  # the largest relative difference of values and gradients
    assert "import torch._dynamo" in text
