"""Registration losses on torch tensors."""

from .regularisers import curvature, diffusion, folding_penalty, jacobian_determinant_torch
from .similarity import local_ncc_distance, masked_mse, ngf

__all__ = ["curvature", "diffusion", "folding_penalty", "jacobian_determinant_torch", "local_ncc_distance",
           "masked_mse", "ngf"]
