"""Registration losses on torch tensors."""

from .regularisers import diffusion
from .similarity import masked_mse

__all__ = ["diffusion", "masked_mse"]
