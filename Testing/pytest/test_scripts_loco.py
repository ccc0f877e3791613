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
    # a run still going: embed has not reached ctA yet, so ctA's fold has no row; the other CTs keep theirs
    third = {(f"ctC_large_s5_2mm{d}", m): e for d in ("", "_exhale-fixed") for m, e in (("convex", good), ("embed", bad))}
    recs3 = loco.read_runs([_run(tmp_path / "run3", {**results, **third})])
    partial = [r for r in recs3 if not (r["ct"] == "ctA" and r["method"] == "embed")]
    assert loco.loco_table(partial, ["convex", "embed"])[1] == {"ct_b_image": "convex", "ctC": "convex"}
    assert loco.loco_table([r for r in recs if not (r["ct"] == "ctA" and r["method"] == "embed")], ["convex", "embed"])[1] == {}
    assert any("| ctA | convex (0.50) | large 0.50 / 0.50 |" in ln for ln in lines)
    table = "\n".join(loco.per_ct_table(recs, ["convex", "embed", "convexadam"]))
    assert "| ctA | small | inhale | 6 | nan / nan | 0.10 / 0.10 | 2.00 / 2.00 |" in table
    results[("ctA_large_s6_2mm", "embed")] = bad  # a method with fewer seeds than the row says which it has
    table = "\n".join(loco.per_ct_table(loco.read_runs([_run(tmp_path / "run2", results)]), ["convex", "embed"]))
    assert "| ctA | large | inhale | 5,6 | 0.50 / 0.50 (seed 5) | 1.00 / 1.00 |" in table


def test_two_runs_that_used_one_name_are_told_apart_and_a_ratio_is_taken_on_shared_pairs(tmp_path):
    """``--rename FOLDER:METHOD=NAME`` (empty: left out) and ``--ratio A/B``: A's mean TRE and seconds over B's."""
    old = _run(tmp_path / "old", {("ctA_large_s5_2mm", "convex"): np.full(10, 1.0)})
    new = _run(tmp_path / "new", {("ctA_large_s5_2mm", "convex"): np.full(10, 0.6),
                                  ("ctA_large_s5_2mm", "convexadam-best"): np.full(10, 1.2),
                                  ("ctA_large_s6_2mm", "convexadam-best"): np.full(10, 5.0)})  # convex lacks it: not compared
    recs = loco.read_runs([old, new], {(str(old), "convex"): "old convex"})
    assert sorted({r["method"] for r in recs}) == ["convex", "convexadam-best", "old convex"]
    assert loco.read_runs([old], {(str(old), "convex"): ""}) == []
    table = "\n".join(loco.ratio_table(recs, "convex", "convexadam-best"))
    assert "| ctA | large | inhale | 1 | 0.60 / 1.20 | 0.50 | 1 | 10 / 10 | 1.00 |" in table
    assert "| **all** |  |  | 1 | 0.60 / 1.20 | 0.50 |" in table


def test_a_pair_given_twice_counts_once_and_seconds_compare_only_within_one_run(tmp_path, capsys):
    """A pair re-run in a later folder (e.g. to be timed beside a baseline) is taken from the first folder only;
    the ratio's seconds use only the pairs both methods ran in one folder."""
    first = _run(tmp_path / "first", {("ctA_large_s5_2mm", "convex"): np.full(10, 0.6),
                                      ("ctA_large_s6_2mm", "convex"): np.full(10, 0.6)})
    baseline = _run(tmp_path / "baseline", {("ctA_large_s5_2mm", "convexadam"): np.full(10, 1.0)})
    timed = tmp_path / "timed"
    _run(timed, {("ctA_large_s6_2mm", "convex"): np.full(10, 9.9), ("ctA_large_s6_2mm", "convexadam"): np.full(10, 1.0)})
    r = json.loads((timed / "runs" / "ctA_large_s6_2mm__convex" / "result.json").read_text())
    r["result"]["registration_s"] = 5.0
    (timed / "runs" / "ctA_large_s6_2mm__convex" / "result.json").write_text(json.dumps(r))
    recs = loco.read_runs([first, baseline, timed])
    assert len([x for x in recs if x["method"] == "convex"]) == 2  # the timed folder's repeat is left out
    assert "1 result(s) of convex left out" in capsys.readouterr().err
    table = "\n".join(loco.ratio_table(recs, "convex", "convexadam"))
    # TRE over both shared pairs; seconds over none: convex's results come from another folder than the baseline's
    assert "| ctA | large | inhale | 2 | 0.60 / 1.00 | 0.60 | 0 | – | – |" in table
    failed = tmp_path / "failed"  # a failed result in an earlier folder does not hide a later folder's good one
    d = failed / "runs" / "ctA_large_s5_2mm__convex"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"pair": "ctA_large_s5_2mm", "path": str(d), "method": "convex",
                                                "result": {"error": "timed out"}}))
    assert len([x for x in loco.read_runs([failed, first]) if x["method"] == "convex"]) == 2
    recs = loco.read_runs([timed, first, baseline])  # the timed folder first: its seed-6 pair is timed beside the baseline
    table = "\n".join(loco.ratio_table(recs, "convex", "convexadam"))
    assert "| ctA | large | inhale | 2 | 5.25 / 1.00 | 5.25 | 1 | 5 / 10 | 0.50 |" in table
