"""Tests of DeepLungRegLib/evaluation/evaluate.py: the Jacobian map and statistics of a field."""

from __future__ import annotations

import numpy as np

from DeepLungRegLib.evaluation.evaluate import field_quality
from DeepLungRegLib.transforms import affine_to_field


def test_field_quality_of_an_affine_field_is_its_determinant_everywhere(oblique):
    m = np.eye(4)
    m[:3, :3] = [[1.1, 0.2, 0.0], [0.05, 0.9, 0.1], [0.0, 0.1, 1.2]]
    det = float(np.linalg.det(m[:3, :3]))
    jac, stats = field_quality(affine_to_field(m, oblique), oblique)
    assert jac.shape == oblique.shape and np.allclose(jac, det, atol=1e-4)
    assert stats["folding_percent"] == 0.0 and stats["sd_log_j"] < 1e-4
    assert abs(stats["min_j"] - det) < 1e-4 and abs(stats["max_j"] - det) < 1e-4 and abs(stats["mean_j"] - det) < 1e-4
    mask = np.zeros(oblique.shape, bool)
    mask[2:6, 3:9, 4:12] = True
    _, inside = field_quality(affine_to_field(m, oblique), oblique, mask)
    assert abs(inside["mean_j"] - det) < 1e-4 and inside["folding_percent"] == 0.0
