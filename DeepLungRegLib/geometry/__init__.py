"""Image geometry (LPS world frame) and the one place index <-> world is defined."""

from .grid import Geometry, LPS_TO_RAS, lps_to_ras, ras_to_lps

__all__ = ["Geometry", "LPS_TO_RAS", "lps_to_ras", "ras_to_lps"]
