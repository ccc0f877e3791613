"""Separable box filters with replicate padding.

A ``k^3`` box mean is the product of three 1D ``k``-point means, so it is
computed as shifted-slice sums along each axis: several times faster on the CPU
than :func:`torch.nn.functional.avg_pool3d` with stride 1, also under autograd.
"""

from __future__ import annotations

import torch


def box_mean_along(t: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Mean over the window ``[i - before, i + after]`` along ``dim``, the ends replicated.

    Under autograd the gradient is the filter's adjoint, computed directly (as cheap as the filter itself)
    instead of through the slices' own backward passes (each of which would allocate and fill a padded copy).
    First derivatives only: a second ``backward`` through it (``create_graph=True``) raises.

    Args:
        t: any tensor; ``dim`` its axis to filter.
        before, after: window extent (voxels, >= 0) on each side.

    Returns:
        A tensor of the shape of ``t``.
    """
    if before < 0 or after < 0:
        raise ValueError(f"box_mean_along: window extents must be >= 0, got {before}, {after}")
    if before + after == 0:
        return t
    if torch.is_grad_enabled() and t.requires_grad:
        return _BoxMeanAlong.apply(t, dim % t.ndim, before, after)
    return _box_mean(t, dim, before, after)


def _window_sum(padded: torch.Tensor, dim: int, k: int, n: int) -> torch.Tensor:
    """``out[i] = sum_{s < k} padded[i + s]`` for ``i < n`` along ``dim`` (a new tensor)."""
    out = padded.narrow(dim, 0, n) + padded.narrow(dim, 1, n)
    for s in range(2, k):
        out += padded.narrow(dim, s, n)
    return out


def _box_mean(t: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    k, n = before + after + 1, t.shape[dim]
    parts = [t.narrow(dim, 0, 1)] * before + [t] + [t.narrow(dim, n - 1, 1)] * after
    return _window_sum(torch.cat(parts, dim), dim, k, n).mul_(1.0 / k)


class _BoxMeanAlong(torch.autograd.Function):
    """:func:`box_mean_along` with its adjoint as the backward pass.

    ``out[i] = (1/k) sum_{s<k} p[i + s]`` with ``p[j] = t[clamp(j - before, 0, n - 1)]``, so the gradient of ``p`` is
    the window sum of the gradient zero-padded by ``k - 1`` on both sides, and the gradient of ``t`` is that of ``p``
    with its first ``before`` and last ``after`` entries added onto the first and last element.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
        ctx.args = (dim, before, after)
        return _box_mean(t, dim, before, after)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        dim, before, after = ctx.args
        k, n = before + after + 1, grad.shape[dim]
        shape = list(grad.shape)
        shape[dim] = k - 1
        zeros = grad.new_zeros(shape)
        gp = _window_sum(torch.cat([zeros, grad, zeros], dim), dim, k, n + k - 1).mul_(1.0 / k)  # (.., n + k - 1, ..)
        gt = gp.narrow(dim, before, n).clone()
        if before:
            gt.narrow(dim, 0, 1).add_(gp.narrow(dim, 0, before).sum(dim, keepdim=True))
        if after:
            gt.narrow(dim, n - 1, 1).add_(gp.narrow(dim, before + n, after).sum(dim, keepdim=True))
        return gt, None, None, None


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
