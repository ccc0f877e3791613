"""Scoring a field: plausibility, and accuracy against a simulated pair."""

from __future__ import annotations

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image
from ..metrics import dice, jacobian_determinant, jacobian_stats, tre, tre_summary
from ..simulation.breathing import SimulatedPair
from ..transforms.warp import warp_image


def field_quality(field: np.ndarray, geometry: Geometry, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Jacobian map and its statistics (inside ``mask`` when given)."""
    jac = jacobian_determinant(field, geometry)
    return jac, jacobian_stats(jac, mask)


def score_field(
    field: np.ndarray,
    geometry: Geometry,
    fixed_mask: Image,
    moving_mask: Image,
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    true_field: np.ndarray | None = None,
    *,
    per_landmark: bool = False,
) -> dict:
    """Score a field ``(Z, Y, X, 3)`` on the fixed grid ``geometry``.

    Returns TRE before/after (summaries, and per landmark when asked), the dense
    error in the fixed lung against ``true_field`` (mean, 95th percentile, max)
    when one is given, lung Dice before and after warping the moving mask,
    folding % and SD log J (inside the fixed lung).
    """
    lung = np.asarray(fixed_mask.array, bool)
    before = tre(fixed_points, moving_points)
    after = tre(fixed_points, moving_points, field, geometry)
    out: dict = {"tre_before": tre_summary(before).to_dict(), "tre_after": tre_summary(after).to_dict()}
    if true_field is not None:
        err = np.linalg.norm(field[lung] - true_field[lung], axis=-1)
        out["dense_error_lung"] = {"mean": float(err.mean()), "p95": float(np.percentile(err, 95)), "max": float(err.max())}
    moving_lung = moving_mask.array.astype(np.uint8)
    warped_mask = warp_image(moving_mask.with_array(moving_lung), field, geometry, mode="nearest").array
    _, jstats = field_quality(field, geometry, lung)
    out["lung_dice_before"] = dice(lung.astype(np.uint8), moving_lung, [1])[1]
    out["lung_dice_after"] = dice(lung.astype(np.uint8), warped_mask, [1])[1]
    out.update(jstats)
    if per_landmark:
        out["tre_before_per_landmark"] = np.round(before, 4).tolist()
        out["tre_after_per_landmark"] = np.round(after, 4).tolist()
    return out


def evaluate_field(pair: SimulatedPair, field: np.ndarray, geometry: Geometry | None = None) -> dict:
    """Score ``field`` (on the pair's fixed grid) against the pair's ground truth (see :func:`score_field`)."""
    g = pair.fixed.geometry
    if geometry is not None and not geometry.same_as(g):
        raise DeepLungRegError("evaluate: the field is not on the pair's fixed grid")
    field = np.asarray(field)
    if field.shape != pair.field.shape:
        raise DeepLungRegError(f"evaluate: field shape {field.shape} does not match the pair's grid {pair.field.shape}")
    return score_field(field, g, pair.fixed_mask, pair.moving_mask, pair.fixed_landmarks, pair.moving_landmarks, pair.field)
