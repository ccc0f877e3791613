"""Distinctive keypoints."""

from .foerstner import foerstner_keypoints

__all__ = ["foerstner_keypoints"]
