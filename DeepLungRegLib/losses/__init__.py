"""Registration losses on torch tensors."""

from .regularisers import (curvature, diffusion, folding_penalty, folding_penalty_where_low, jacobian_determinant_torch,
                          low_jacobian_box)
from .similarity import local_ncc_distance, masked_mse, ngf

__all__ = ["curvature", "diffusion", "folding_penalty", "folding_penalty_where_low", "jacobian_determinant_torch",
           "low_jacobian_box", "local_ncc_distance", "masked_mse", "ngf"]
