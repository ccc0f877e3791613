"""Förstner interest operator in 3D (as used for lung keypoints in paper 000).

Distinctiveness = ``1 / trace(T^-1)`` = ``det(T) / trace(adj(T))`` of the
Gaussian-weighted structure tensor ``T`` of the image gradient. Keypoints are
local maxima (non-maximum suppression), restricted to a mask, then thinned to
a minimum distance in mm, strongest first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..errors import DeepLungRegError
from ..io.images import Image


def _gauss_kernel(sigma_vox: float) -> torch.Tensor:
    r = max(1, int(np.ceil(2.5 * sigma_vox)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma_vox, 1e-3)) ** 2)
    return k / k.sum()


def _smooth(vol: torch.Tensor, sigmas_vox: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian on ``(N, C, Z, Y, X)`` with per-axis sigma (z, y, x) in voxels."""
    c = vol.shape[1]
    for axis, s in enumerate(sigmas_vox):
        if s <= 0:
            continue
        k = _gauss_kernel(s).to(vol)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = k.numel() // 2
        vol = F.conv3d(F.pad(vol, pad, mode="replicate"), k.view(shape).expand(c, 1, *shape[2:]).contiguous(), groups=c)
    return vol


def foerstner_distinctiveness(image: torch.Tensor, spacing_zyx: tuple[float, float, float], sigma_mm: float = 1.5) -> torch.Tensor:
    """Förstner distinctiveness map ``(N, 1, Z, Y, X)`` of ``image (N, 1, Z, Y, X)``."""
    sm = _smooth(image, tuple(0.5 * sigma_mm / s for s in spacing_zyx))
    pad = F.pad(sm, (1,) * 6, mode="replicate")
    gz = (pad[:, :, 2:, 1:-1, 1:-1] - pad[:, :, :-2, 1:-1, 1:-1]) / (2 * spacing_zyx[0])
    gy = (pad[:, :, 1:-1, 2:, 1:-1] - pad[:, :, 1:-1, :-2, 1:-1]) / (2 * spacing_zyx[1])
    gx = (pad[:, :, 1:-1, 1:-1, 2:] - pad[:, :, 1:-1, 1:-1, :-2]) / (2 * spacing_zyx[2])
    t = torch.cat([gz * gz, gy * gy, gx * gx, gz * gy, gz * gx, gy * gx], dim=1)
    t = _smooth(t, tuple(sigma_mm / s for s in spacing_zyx))
    a, b, c, d, e, f = t.unbind(1)
    det = a * (b * c - f * f) - d * (d * c - f * e) + e * (d * f - b * e)
    adj_trace = (b * c - f * f) + (a * c - e * e) + (a * b - d * d)
    return (det / (adj_trace + 1e-8)).unsqueeze(1)


def foerstner_keypoints(
    image: Image, mask: np.ndarray | None = None, *, count: int = 2000, min_distance_mm: float = 3.0, sigma_mm: float = 1.5, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Distinctive points of ``image`` inside ``mask``.

    Args:
        image: scalar image (e.g. CT in HU).
        mask: optional boolean ``(Z, Y, X)`` region; keypoints lie inside it.
        count: maximal number of keypoints.
        min_distance_mm: no two keypoints are closer than this.
        sigma_mm: scale of the structure tensor.

    Returns:
        ``(K, 3)`` LPS mm points, strongest first, ``K <= count``.
    """
    if count < 1:
        raise DeepLungRegError(f"foerstner_keypoints: count must be >= 1, got {count}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.array.shape:
            raise DeepLungRegError(f"foerstner_keypoints: mask shape {mask.shape} does not match the image {image.array.shape}")
        if not mask.any():
            raise DeepLungRegError("foerstner_keypoints: the mask is empty")
    sp = image.geometry.spacing_zyx
    vol = torch.as_tensor(image.array.astype(np.float32), device=device)[None, None]
    with torch.no_grad():
        dist = foerstner_distinctiveness(vol, sp, sigma_mm)
        k = tuple(max(3, 2 * int(round(min_distance_mm / 2 / s)) + 1) for s in sp)
        peaks = (dist == F.max_pool3d(dist, k, stride=1, padding=tuple(x // 2 for x in k))) & (dist > 0)
    peaks = peaks[0, 0].cpu().numpy()
    if mask is not None:
        peaks &= mask
    kk, jj, ii = np.nonzero(peaks)
    if kk.size == 0:
        raise DeepLungRegError("foerstner_keypoints: no distinctive points found")
    strength = dist[0, 0].cpu().numpy()[kk, jj, ii]
    order = np.argsort(strength)[::-1]
    pts = image.geometry.index_to_world(np.stack([ii, jj, kk], 1)[order].astype(float))
    # greedy thinning to the minimum distance, strongest first
    tree = cKDTree(pts)
    taken = np.zeros(len(pts), bool)
    blocked = np.zeros(len(pts), bool)
    for n in range(len(pts)):
        if blocked[n]:
            continue
        taken[n] = True
        if taken.sum() >= count:
            break
        blocked[tree.query_ball_point(pts[n], min_distance_mm)] = True
    return pts[taken]
