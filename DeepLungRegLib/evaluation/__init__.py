"""Scoring registrations: ventilation maps and evaluation against ground truth."""

from .ventilation import hu_ventilation, jacobian_ventilation, lung_map_stats, summarise_ventilation, ventilation_summary
from .evaluate import evaluate_field, field_quality, score_field

__all__ = ["hu_ventilation", "jacobian_ventilation", "lung_map_stats", "summarise_ventilation", "ventilation_summary", "evaluate_field", "field_quality", "score_field"]
