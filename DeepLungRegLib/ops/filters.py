"""Separable box filters with replicate padding.

A ``k^3`` box mean is the product of three 1D ``k``-point means, so it is
computed as shifted-slice sums along each axis: several times faster on the CPU
than :func:`torch.nn.functional.avg_pool3d` with stride 1, also under autograd.
"""

from __future__ import annotations

import torch


def box_mean_along(t: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Mean over the window ``[i - before, i + after]`` along ``dim``, the ends replicated.

    Args:
        t: any tensor; ``dim`` its axis to filter.
        before, after: window extent (voxels, >= 0) on each side.

    Returns:
        A tensor of the shape of ``t``.
    """
    if before < 0 or after < 0:
        raise ValueError(f"box_mean_along: window extents must be >= 0, got {before}, {after}")
    k = before + after + 1
    if k == 1:
        return t
    n = t.shape[dim]
    parts = [t.narrow(dim, 0, 1)] * before + [t] + [t.narrow(dim, n - 1, 1)] * after
    padded = torch.cat(parts, dim)
    out = padded.narrow(dim, 0, n) + padded.narrow(dim, 1, n)
    for s in range(2, k):
        out += padded.narrow(dim, s, n)
    return out.mul_(1.0 / k)


def box_mean3d(t: torch.Tensor, before: int, after: int | None = None) -> torch.Tensor:
    """Box mean of ``(N, C, Z, Y, X)`` over ``[i - before, i + after]`` on each spatial axis.

    Args:
        t: ``(N, C, Z, Y, X)``.
        before: window extent before each voxel; ``after`` defaults to the same (a centred box).

    Returns:
        ``(N, C, Z, Y, X)``.
    """
    after = before if after is None else after
    for dim in (2, 3, 4):
        t = box_mean_along(t, dim, before, after)
    return t
