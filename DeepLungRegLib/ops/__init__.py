"""Low-level tensor operations shared by features, losses and methods (nothing here imports them)."""

from .filters import box_mean3d, box_mean_along

__all__ = ["box_mean3d", "box_mean_along"]
