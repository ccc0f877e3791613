"""Registration losses on torch tensors."""

from .regularisers import diffusion, folding_penalty, jacobian_determinant_torch
from .similarity import masked_mse

__all__ = ["diffusion", "folding_penalty", "jacobian_determinant_torch", "masked_mse"]
