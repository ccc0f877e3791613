"""Tests of DeepLungRegLib/evaluation/tuning.py: the candidate grid, ranking and the tune command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.cli import main
from DeepLungRegLib.evaluation.tuning import candidate_grid, rank_candidates, tune, write_tune_result
from DeepLungRegLib.methods.convex import ConvexConfig
from DeepLungRegLib.simulation import write_pair

from helpers_convex import FAST, small_pair


def test_candidate_grid_defaults_first_subset_and_errors():
    c = candidate_grid("convex")
    d = ConvexConfig()
    assert len(c) == 12 and c[0] == {"convex_smoothing_passes": d.convex_smoothing_passes, "regularisation": d.regularisation,
                                      "refine_levels_mm": d.refine_levels_mm}  # the defaults come first
    assert len({json.dumps(x, sort_keys=True) for x in c}) == 12
    sub = candidate_grid("convex", {"regularisation": [0.25, 0.5, 1.0, 2.0, 4.0]}, max_candidates=3, seed=1)
    assert len(sub) == 3 and sub[0] == {"regularisation": 1.0}
    with pytest.raises(DeepLungRegError, match="no option 'nonsense'"):
        candidate_grid("convex", {"nonsense": [1, 2]})
    with pytest.raises(DeepLungRegError, match="regularisation"):
        candidate_grid("convex", {"regularisation": [1.0, -5.0]})
    with pytest.raises(DeepLungRegError, match="non-empty list"):
        candidate_grid("convex", {"regularisation": []})
    with pytest.raises(DeepLungRegError, match="no default search grid"):
        candidate_grid("affine")


def test_rank_candidates_orders_by_weighted_mean_rank():
    # 3 candidates, 2 pairs, criteria (TRE mean, TRE p95, SD log J)
    s = np.array([[[1.0, 2.0, 0.1], [1.0, 2.0, 0.1]],
                  [[2.0, 3.0, 0.05], [2.0, 3.0, 0.05]],
                  [[0.5, 1.0, 0.2], [0.5, 1.0, 0.2]]])
    failed = np.zeros((3, 2), bool)
    r = rank_candidates(s, failed)
    assert np.argsort(r).tolist() == [2, 0, 1]
    assert r[2] == pytest.approx((1 + 1 + 0.5 * 3) / 2.5)
    failed[2] = True  # a folding or failing candidate ranks last
    assert np.argmax(rank_candidates(s, failed)) == 2


@pytest.mark.slow
def test_tune_writes_a_config_that_register_accepts(small_pair, tmp_path, capsys):
    res = tune("convex", [small_pair], {"regularisation": [1.0, 4.0]}, base=FAST, names=["small"], device="cpu")
    assert len(res.rows) == 2 and {r["regularisation"] for r in res.rows} == {1.0, 4.0}
    assert res.ranking[0]["mean_rank"] <= res.ranking[1]["mean_rank"]
    assert res.config["regularisation"] == res.best["regularisation"] and res.config["feature_spacing_mm"] == 4.0
    files = write_tune_result(res, tmp_path / "tuned.json")
    assert [f.name for f in files] == ["tuned.json", "tuned_tuning.md", "tuned_tuning.json"]
    assert "| rank | regularisation |" in files[1].read_text()
    with pytest.raises(DeepLungRegError, match="exists"):
        write_tune_result(res, tmp_path / "tuned.json")
    # the CLI reads it back
    pairdir = write_pair(small_pair, tmp_path / "pair")
    out = tmp_path / "reg"
    rc = main(["register", str(pairdir / "fixed.nii.gz"), str(pairdir / "moving.nii.gz"), "-o", str(out), "--method", "convex",
               "--config", str(tmp_path / "tuned.json"), "--fixed-mask", str(pairdir / "fixed_mask.nii.gz"),
               "--moving-mask", str(pairdir / "moving_mask.nii.gz"), "-q"])
    assert rc == 0
    used = json.loads((out / "metrics.json").read_text())
    assert used["config"]["regularisation"] == res.best["regularisation"]
    # a config written for another method is refused, with the reason
    rc = main(["register", str(pairdir / "fixed.nii.gz"), str(pairdir / "moving.nii.gz"), "-o", str(tmp_path / "reg2"),
               "--method", "adam", "--config", str(tmp_path / "tuned.json"), "-q"])
    assert rc == 2 and "holds options of method 'convex'" in capsys.readouterr().err


def test_tune_cli_errors(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "nowhere"), "-o", str(tmp_path / "c.json"), "-q"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["tune", str(tmp_path), "-o", str(tmp_path / "c.txt"), "-q"]) == 2
    assert "must end in .json" in capsys.readouterr().err
    (tmp_path / "c.json").write_text("{}")
    assert main(["tune", str(tmp_path), "-o", str(tmp_path / "c.json"), "-q"]) == 2
    assert "exists" in capsys.readouterr().err
