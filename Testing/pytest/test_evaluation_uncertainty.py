"""DeepLungRegLib.evaluation.uncertainty: the per-lung summary of an uncertainty map, the predictor scores of the
validation, and the summary line every front end shows."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib.evaluation.uncertainty import calibration, predictor_scores, spearman, uncertainty_summary
from DeepLungRegLib.pipeline import summary_lines


def test_the_summary_per_lung_and_the_shares_above_thresholds():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, :, :5] = 1  # right lung
    labels[:, :, 5:] = 2  # left lung
    labels[0] = 0
    values = np.where(labels == 1, 3.0, 7.0).astype(np.float32)  # right 3 mm, left 7 mm
    values[0] = 100.0  # outside the lungs: not counted
    s = uncertainty_summary(values, labels)
    assert s["right"]["n"] == s["left"]["n"] == 150 and s["both"]["n"] == 300
    assert s["right"]["mean_mm"] == pytest.approx(3.0) and s["left"]["median_mm"] == pytest.approx(7.0, abs=0.06)  # to one 0.05 mm bin
    assert s["right"]["percent_above_4mm"] == 0.0 and s["left"]["percent_above_6mm"] == 100.0
    assert s["both"]["percent_above_4mm"] == 50.0 and s["both"]["percent_above_8mm"] == 0.0
    line = next(ln for ln in summary_lines({"jacobian": {"folding_percent": 0.0, "sd_log_j": 0.1, "min_j": 0.5, "max_j": 1.5},
                                             "uncertainty": s}) if ln.startswith("Uncertainty"))
    assert "50.0 % above 4 mm" in line and "0.0 % above 8 mm" in line and "median" in line


def test_the_shares_above_chosen_thresholds_are_exact_at_any_threshold():
    """``uncertainty_above_mm`` may be any value: a sub-millimetre inverse-consistency map, or beyond the percentiles'
    50 mm histogram."""
    labels = np.ones((3, 4, 4), np.uint8)
    values = np.full((3, 4, 4), 70.0, np.float32)
    values[0] = 0.03
    s = uncertainty_summary(values, labels, (0.02, 0.031, 60.0, 80.0))["both"]
    assert s["percent_above_0.02mm"] == 100.0 and s["percent_above_0.031mm"] == pytest.approx(200 / 3, abs=1e-3)
    assert s["percent_above_60mm"] == pytest.approx(200 / 3, abs=1e-3) and s["percent_above_80mm"] == 0.0
    assert uncertainty_summary(np.full((2, 3, 3), 0.25, np.float32), np.ones((2, 3, 3), np.uint8))["both"]["median_mm"] == pytest.approx(0.25, abs=0.011)


def test_predictor_scores_and_calibration_on_a_known_order():
    rng = np.random.default_rng(0)
    error = rng.uniform(0.0, 4.0, 1000)
    perfect = predictor_scores(2.0 * error + 1.0, error)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["large"] == int((error > 2.0).sum())
    assert perfect["large_in_top"] == pytest.approx(100 / perfect["large"])  # the top 10 % are all large errors
    assert abs(predictor_scores(rng.uniform(size=1000), error)["spearman"]) < 0.1
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
    cal = calibration(error, error, bins=4)
    assert len(cal) == 4 and all(abs(p - e) < 1e-9 for p, e, _ in cal) and sum(n for *_, n in cal) == 1000
