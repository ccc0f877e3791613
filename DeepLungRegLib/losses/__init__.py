"""Registration losses on torch tensors."""

from .regularisers import curvature, diffusion, folding_penalty, jacobian_determinant_torch
from .similarity import masked_mse, ngf

__all__ = ["curvature", "diffusion", "folding_penalty", "jacobian_determinant_torch", "masked_mse", "ngf"]
