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
    if torch.is_grad_enabled() and field.requires_grad:
        return _Diffusion.apply(field, tuple(float(s) for s in spacing_zyx))
    return _diffusion(field, spacing_zyx)[0]


def _diffusion(field: torch.Tensor, spacing_zyx) -> tuple[torch.Tensor, list[torch.Tensor]]:
    diffs = [(field.narrow(d, 1, field.shape[d] - 1) - field.narrow(d, 0, field.shape[d] - 1)) / s
             for d, s in zip((1, 2, 3), spacing_zyx)]
    return sum(g.pow(2).mean() * 3 for g in diffs), diffs


class _Diffusion(torch.autograd.Function):
    """:func:`diffusion` with its gradient written out: ``6 g / (numel(g) s)`` onto the later voxel of each
    difference ``g`` and minus that onto the earlier one (no padded copy per slice, as autograd's slices make).
    First derivatives only."""

    @staticmethod
    def forward(ctx, field: torch.Tensor, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        value, diffs = _diffusion(field, spacing_zyx)
        ctx.save_for_backward(*diffs)
        ctx.spacing = spacing_zyx
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        diffs = ctx.saved_tensors
        out = None
        for d, g, s in zip((1, 2, 3), diffs, ctx.spacing):
            part = g * (grad * 6.0 / (g.numel() * s))
            if out is None:
                out = torch.zeros((*g.shape[:d], g.shape[d] + 1, *g.shape[d + 1:]), dtype=g.dtype, device=g.device)
            out.narrow(d, 1, g.shape[d]).add_(part)
            out.narrow(d, 0, g.shape[d]).sub_(part)
        return out, None


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


def folding_penalty(field: torch.Tensor, index_to_world: torch.Tensor, margin: float = 0.1,
                    box: tuple[tuple[int, int], ...] | None = None) -> torch.Tensor:
    """Mean of ``relu(margin - J)^2`` over the interior voxels: zero where the map keeps volume above ``margin``,
    growing as it folds.

    Args:
        field, index_to_world: as for :func:`jacobian_determinant_torch`.
        box: ``((z0, z1), (y0, y1), (x0, x1))``, ranges (end exclusive) of the interior voxels (the indices of
            :func:`jacobian_determinant_torch`'s output) outside which every ``J`` is known to be at least ``margin``:
            ``J`` is computed inside the box only, and the sum is still divided by the number of all interior voxels
            (the same value and gradient as without the box, for a fraction of the work when the box is small).
    """
    if box is None:
        return torch.relu(margin - jacobian_determinant_torch(field, index_to_world)).pow(2).mean()
    (z0, z1), (y0, y1), (x0, x1) = box
    count = field.shape[0] * (field.shape[1] - 2) * (field.shape[2] - 2) * (field.shape[3] - 2)
    jac = jacobian_determinant_torch(field[:, z0:z1 + 2, y0:y1 + 2, x0:x1 + 2], index_to_world)
    return torch.relu(margin - jac).pow(2).sum() / count


def folding_penalty_where_low(field: torch.Tensor, index_to_world: torch.Tensor, jac: torch.Tensor,
                              margin: float = 0.1) -> torch.Tensor | None:
    """:func:`folding_penalty` (the same value and gradient) computed only in the box of the voxels where ``J < margin``,
    the penalty's support; None where there is none (the penalty is zero).

    Args:
        jac: the field's :func:`jacobian_determinant_torch`, computed without gradients.
    """
    box = low_jacobian_box(jac, margin, grow=0)
    return None if box is None else folding_penalty(field, index_to_world, margin, box=box)


def low_jacobian_box(jac: torch.Tensor, below: float, grow: int = 2) -> tuple[tuple[int, int], ...] | None:
    """The box around every voxel of ``jac (N, Z, Y, X)`` with a value below ``below``, grown by ``grow`` voxels
    and clipped to the array: ``((z0, z1), (y0, y1), (x0, x1))``, ends exclusive (the ``box`` of
    :func:`folding_penalty`); None where there is none."""
    low = torch.nonzero((jac < below).any(0))
    if len(low) == 0:
        return None
    lo, hi = low.min(0).values.tolist(), low.max(0).values.tolist()
    return tuple((max(0, a - grow), min(n, b + 1 + grow)) for a, b, n in zip(lo, hi, jac.shape[1:]))


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
