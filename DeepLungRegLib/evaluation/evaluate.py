"""Scoring a field: plausibility, and accuracy against a simulated pair."""

from __future__ import annotations

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..metrics import dice, jacobian_determinant, jacobian_stats, tre, tre_summary
from ..simulation.breathing import SimulatedPair
from ..transforms.warp import warp_image


def field_quality(field: np.ndarray, geometry: Geometry, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Jacobian map and its statistics (inside ``mask`` when given)."""
    jac = jacobian_determinant(field, geometry)
    return jac, jacobian_stats(jac, mask)


def evaluate_field(pair: SimulatedPair, field: np.ndarray, geometry: Geometry | None = None) -> dict:
    """Score ``field`` (on the pair's fixed grid) against the pair's ground truth.

    Returns TRE before/after, the dense error in the fixed lung (mean, 95th
    percentile, max), lung Dice after warping the moving mask, folding % and
    SD log J (inside the lung).
    """
    g = pair.fixed.geometry
    if geometry is not None and not geometry.same_as(g):
        raise DeepLungRegError("evaluate: the field is not on the pair's fixed grid")
    field = np.asarray(field)
    if field.shape != pair.field.shape:
        raise DeepLungRegError(f"evaluate: field shape {field.shape} does not match the pair's grid {pair.field.shape}")
    lung = np.asarray(pair.fixed_mask.array, bool)
    err = np.linalg.norm(field[lung] - pair.field[lung], axis=-1)
    warped_mask = warp_image(pair.moving_mask.with_array(pair.moving_mask.array.astype(np.uint8)), field, g, mode="nearest").array
    _, jstats = field_quality(field, g, lung)
    return {
        "tre_before": tre_summary(tre(pair.fixed_landmarks, pair.moving_landmarks)).to_dict(),
        "tre_after": tre_summary(tre(pair.fixed_landmarks, pair.moving_landmarks, field, g)).to_dict(),
        "dense_error_lung": {"mean": float(err.mean()), "p95": float(np.percentile(err, 95)), "max": float(err.max())},
        "lung_dice_before": dice(lung.astype(np.uint8), pair.moving_mask.array.astype(np.uint8), [1])[1],
        "lung_dice_after": dice(lung.astype(np.uint8), warped_mask, [1])[1],
        **jstats,
    }
