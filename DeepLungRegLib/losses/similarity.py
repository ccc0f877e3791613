"""Image similarity terms."""

from __future__ import annotations

import torch

from ..ops.filters import box_mean3d


def masked_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of ``a`` and ``b`` ``(N, C, Z, Y, X)``, weighted by ``weight (N, 1, Z, Y, X)``."""
    sq = (a - b).pow(2).mean(dim=1, keepdim=True)
    if weight is None:
        return sq.mean()
    return (sq * weight).sum() / weight.sum().clamp_min(1e-6)


def neighbours_along(t: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous and next values of ``(N, C, *S)`` along spatial axis ``d`` (replicate border)."""
    dims, ax, n = t.ndim - 2, 2 + d, t.shape[2 + d]
    pad = [0, 0] * dims
    pad[2 * (dims - 1 - d)] = pad[2 * (dims - 1 - d) + 1] = 1
    p = torch.nn.functional.pad(t, pad, mode="replicate")
    return p.narrow(ax, 0, n), p.narrow(ax, 2, n)


def _central_gradient(img: torch.Tensor, spacing: tuple[float, ...] | None) -> list[torch.Tensor]:
    """Central differences (replicate border) of ``(N, C, *S)`` along each spatial axis."""
    dims = img.ndim - 2
    spacing = spacing or (1.0,) * dims
    out = []
    for d in range(dims):
        prev, nxt = neighbours_along(img, d)
        out.append((nxt - prev) / (2.0 * spacing[d]))
    return out


def ngf(fixed: torch.Tensor, warped: torch.Tensor, eps: float = 0.1, spacing: tuple[float, ...] | None = None,
        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised gradient fields distance (Haber & Modersitzki), used by papers 002 and 004.

    ``mean(1 - ((grad F . grad M) / (|grad F|_eps |grad M|_eps))^2)`` with
    ``|g|_eps = sqrt(g . g + eps^2)``: 0 where the edges are parallel.

    Args:
        fixed, warped: ``(N, 1, Z, Y, X)`` or ``(N, 1, Y, X)`` images.
        eps: edge parameter in image units per mm (noise level of the gradients).
        spacing: voxel size along the spatial axes (default 1).
        weight: optional ``(N, 1, ...)`` voxel weights.
    """
    gf = _central_gradient(fixed, spacing)
    gm = _central_gradient(warped, spacing)
    dot = sum(a * b for a, b in zip(gf, gm))
    nf = torch.sqrt(sum(a * a for a in gf) + eps ** 2)
    nm = torch.sqrt(sum(b * b for b in gm) + eps ** 2)
    d = 1.0 - (dot / (nf * nm)) ** 2
    if weight is None:
        return d.mean()
    return (d * weight).sum() / weight.sum().clamp_min(1e-6)


def local_ncc_distance(fixed: torch.Tensor, warped: torch.Tensor, radius: int = 4, eps: float = 1e-5,
                       reduce: bool = True) -> torch.Tensor:
    """``1 - local normalised cross-correlation`` over ``(2 radius + 1)^3`` windows.

    Args:
        fixed, warped: ``(N, 1, Z, Y, X)`` images.
        radius: window radius in voxels (replicate border).
        eps: added to the local variances (flat regions give 0 correlation, not NaN).
        reduce: return the mean (a scalar) instead of the ``(N, 1, Z, Y, X)`` map.

    Returns:
        0 where the images are locally an increasing affine function of each other,
        up to 2 where they are anti-correlated.
    """
    mf, mw = box_mean3d(fixed, radius), box_mean3d(warped, radius)
    cov = box_mean3d(fixed * warped, radius) - mf * mw
    vf = (box_mean3d(fixed * fixed, radius) - mf * mf).clamp_min(0) + eps
    vw = (box_mean3d(warped * warped, radius) - mw * mw).clamp_min(0) + eps
    d = 1.0 - cov / torch.sqrt(vf * vw)
    return d.mean() if reduce else d
