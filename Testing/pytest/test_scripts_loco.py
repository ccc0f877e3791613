"""scripts/loco.py: per-CT tables and the leave-one-CT-out choice, from benchmark run folders (also partial ones)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("loco", ROOT / "scripts" / "loco.py")
loco = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loco)


def _run(folder: Path, results: dict) -> Path:
    """A benchmark folder as ``run_benchmark`` keeps it while it runs: one runs/*/result.json per measurement."""
    for (pair, method), errors in results.items():
        d = folder / "runs" / f"{pair}__{method}"
        d.mkdir(parents=True)
        r = {"tre_after_per_landmark": list(errors), "folding_percent": 0.0, "registration_s": 10.0}
        (d / "result.json").write_text(json.dumps({"pair": pair, "path": str(d), "method": method, "result": r}))
    return folder


def test_the_method_better_on_the_other_cts_is_chosen_and_compared_on_shared_pairs_only(tmp_path):
    good, bad = np.full(10, 0.5), np.full(10, 1.0)
    results = {}
    for ct in ("ctA", "ct_b_image"):  # a CT name with underscores
        for d in ("", "_exhale-fixed"):
            results[(f"{ct}_large_s5_2mm{d}", "convex")] = good
            results[(f"{ct}_large_s5_2mm{d}", "embed")] = bad
    results[("ctA_small_s6_2mm", "embed")] = np.full(10, 0.1)  # only embed has this pair: not counted in the choice
    results[("ctA_small_s6_2mm", "convexadam")] = np.full(10, 2.0)  # a baseline is never a candidate
    recs = loco.read_runs([_run(tmp_path / "run", results)])
    assert {(r["ct"], r["amp"], r["seed"], r["direction"]) for r in recs} >= {("ct_b_image", "large", 5, "exhale fixed")}
    lines, chosen = loco.loco_table(recs, ["convex", "embed"])
    assert chosen == {"ctA": "convex", "ct_b_image": "convex"}
    assert any("| ctA | convex (0.50) | large 0.50 / 0.50 |" in ln for ln in lines)
    table = "\n".join(loco.per_ct_table(recs, ["convex", "embed", "convexadam"]))
    assert "| ctA | small | inhale | 6 | nan / nan | 0.10 / 0.10 | 2.00 / 2.00 |" in table
