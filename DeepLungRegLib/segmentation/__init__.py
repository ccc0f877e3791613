"""Automatic lung segmentation."""

from .lung_mask import lung_mask, split_lungs

__all__ = ["lung_mask", "split_lungs"]
