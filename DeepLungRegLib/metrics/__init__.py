"""Spacing-aware evaluation metrics (TRE, Dice, Jacobian, inverse consistency)."""

from .tre import tre, tre_summary, tre_vectors, TRESummary
from .overlap import dice
from .jacobian import jacobian_determinant, jacobian_stats, spatial_gradient
from .consistency import inverse_consistency_error

__all__ = ["tre", "tre_summary", "tre_vectors", "TRESummary", "dice", "jacobian_determinant", "jacobian_stats", "spatial_gradient", "inverse_consistency_error"]
