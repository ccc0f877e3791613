"""Smoothness penalties of displacement fields."""

from __future__ import annotations

import torch

from .similarity import neighbours_along


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


def jacobian_determinant_torch(field: torch.Tensor, index_to_world: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of ``x -> x + u(x)`` by central differences (differentiable).

    Args:
        field: ``(N, Z, Y, X, 3)`` displacement in mm along the world axes.
        index_to_world: ``(3, 3)`` matrix ``D diag(spacing)`` of the grid (columns: i, j, k axes).

    Returns:
        ``(N, Z-2, Y-2, X-2)`` determinants at the interior voxels.
    """
    gk = (field[:, 2:, 1:-1, 1:-1] - field[:, :-2, 1:-1, 1:-1]) / 2  # d u / d k, (N, Z-2, Y-2, X-2, 3 components)
    gj = (field[:, 1:-1, 2:, 1:-1] - field[:, 1:-1, :-2, 1:-1]) / 2
    gi = (field[:, 1:-1, 1:-1, 2:] - field[:, 1:-1, 1:-1, :-2]) / 2
    inv = torch.linalg.inv(index_to_world.detach().to("cpu", torch.float64)).tolist()  # rows: i, j, k; columns: world axes
    # m[c][w] = delta_cw + d u_c / d x_w = delta_cw + sum_a g_a[c] inv[a][w], as separate tensors: building a
    # (..., 3, 3) tensor and indexing it makes every backward of an element allocate and fill the whole
    # (..., 3, 3) array, which dominated the refinement's time.
    cols = [(gi * inv[0][w] + gj * inv[1][w] + gk * inv[2][w]).unbind(-1) for w in range(3)]
    m = [[cols[w][c] + 1.0 if c == w else cols[w][c] for w in range(3)] for c in range(3)]
    # the 3x3 determinant written out (faster than torch.linalg.det's batched LU, forward and backward)
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def folding_penalty(field: torch.Tensor, index_to_world: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Mean of ``relu(margin - J)^2``: zero where the map keeps volume above ``margin``, growing as it folds."""
    return torch.relu(margin - jacobian_determinant_torch(field, index_to_world)).pow(2).mean()


def curvature(displacement: torch.Tensor, spacing: tuple[float, ...] | None = None) -> torch.Tensor:
    """Curvature regulariser (Fischer & Modersitzki): mean over voxels and components of ``(Laplace u)^2 / 2``.

    Args:
        displacement: ``(N, D, *S)`` with ``D`` = 2 or 3 spatial dimensions ``S`` (channels first).
        spacing: voxel size along the spatial axes (default 1).

    Returns:
        A scalar; 0 for any affine field (away from the border, which is replicated).
    """
    dims = displacement.ndim - 2
    spacing = spacing or (1.0,) * dims
    lap = torch.zeros_like(displacement)
    for d in range(dims):
        prev, nxt = neighbours_along(displacement, d)
        lap = lap + (nxt - 2 * displacement + prev) / spacing[d] ** 2
    inner = tuple(slice(1, -1) for _ in range(dims))
    return 0.5 * lap[(slice(None), slice(None), *inner)].pow(2).mean()
