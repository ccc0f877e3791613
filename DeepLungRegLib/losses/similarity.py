"""Image similarity terms."""

from __future__ import annotations

import torch


def masked_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of ``a`` and ``b`` ``(N, C, Z, Y, X)``, weighted by ``weight (N, 1, Z, Y, X)``."""
    sq = (a - b).pow(2).mean(dim=1, keepdim=True)
    if weight is None:
        return sq.mean()
    return (sq * weight).sum() / weight.sum().clamp_min(1e-6)
