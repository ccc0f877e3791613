"""Smoothness penalties of displacement fields."""

from __future__ import annotations

import torch


def diffusion(field: torch.Tensor, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
    """Diffusion regulariser: mean squared forward difference of the field per mm.

    Args:
        field: ``(N, Z, Y, X, 3)`` displacement in mm.
        spacing_zyx: grid spacing along ``(z, y, x)`` in mm.

    Returns:
        Scalar ``mean(|du/dz|^2) + mean(|du/dy|^2) + mean(|du/dx|^2)`` (dimensionless).
    """
    dz = (field[:, 1:] - field[:, :-1]) / spacing_zyx[0]
    dy = (field[:, :, 1:] - field[:, :, :-1]) / spacing_zyx[1]
    dx = (field[:, :, :, 1:] - field[:, :, :, :-1]) / spacing_zyx[2]
    return dz.pow(2).mean() * 3 + dy.pow(2).mean() * 3 + dx.pow(2).mean() * 3
