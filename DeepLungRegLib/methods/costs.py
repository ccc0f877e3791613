"""Matching costs over a set of displacements: the dense 3D displacement set, and the SSD of feature patches at
chosen points for each displacement (``embed``'s keypoints, the uncertainty's lung points; ``convex`` builds its own
cost volume on its control grid from the same displacement set)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Geometry


def displacement_offsets(radius: int, step: int) -> np.ndarray:
    """All integer offsets ``(D, 3)`` in ``(z, y, x)`` feature voxels, ``{-radius..radius}^3 * step``, z slowest."""
    r = np.arange(-radius, radius + 1) * step
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1)


def search_offsets(fg: Geometry, range_mm: float, step_mm: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """A local search on the feature grid ``fg``, ``range_mm`` wide in ``step_mm`` steps:
    ``(radius, step, offsets (D, 3) zyx voxels, offsets_mm (D, 3) world)``."""
    step = max(1, int(round(step_mm / max(fg.spacing))))
    radius = max(1, int(round(range_mm / 2 / (step * max(fg.spacing)))))
    offsets = displacement_offsets(radius, step)
    return radius, step, offsets, (offsets[:, ::-1] * np.asarray(fg.spacing)) @ fg.direction_matrix.T


def keypoint_costs(fixed_feat: torch.Tensor, moving_feat: torch.Tensor, kp_zyx: np.ndarray, radius: int, step: int,
                   patch_radius: int, chunk: int = 128, progress=None) -> torch.Tensor:
    """SSD between each keypoint's fixed patch and the moving patches at all displacements.

    Args:
        fixed_feat, moving_feat: ``(1, C, Z, Y, X)`` features on the same grid.
        kp_zyx: ``(K, 3)`` integer voxel indices of the keypoints.
        radius, step: displacements ``{-radius..radius}^3 * step`` voxels.
        patch_radius: patch of ``(2 r + 1)^3`` voxels.

    Returns:
        ``(K, D)`` float32 mean squared feature differences, D = ``(2 radius + 1)^3`` in
        the order of :func:`displacement_offsets` (computed in float32 from features of any dtype).
    """
    _, c, z, y, x = fixed_feat.shape
    pr, reach = patch_radius, radius * step
    pad = reach + pr
    # in float32 whatever the features are stored in: the SSD is |w|^2 - 2 w.f + |f|^2, whose
    # cancellation leaves nothing of a float16/bfloat16 (or TF32) cross term
    mp = F.pad(moving_feat.float(), (pad,) * 6, mode="replicate")[0]  # (C, Zp, Yp, Xp)
    fp = F.pad(fixed_feat.float(), (pr,) * 6, mode="replicate")[0]
    win = 2 * pad + 1
    kw = 2 * pr + 1
    n = 2 * radius + 1
    ar_w = torch.arange(win, device=mp.device)
    ar_k = torch.arange(kw, device=mp.device)
    out = torch.empty((len(kp_zyx), n ** 3), device=mp.device, dtype=torch.float32)
    kp = torch.as_tensor(kp_zyx, device=mp.device, dtype=torch.long)
    norm = float(c * kw ** 3)
    for s in range(0, len(kp), chunk):
        k = kp[s:s + chunk]
        kc = len(k)
        # windows of the moving features around each keypoint (padded coordinates start at kp)
        zi = (k[:, 0, None] + ar_w)[:, :, None, None]
        yi = (k[:, 1, None] + ar_w)[:, None, :, None]
        xi = (k[:, 2, None] + ar_w)[:, None, None, :]
        wins = mp[:, zi, yi, xi]  # (C, Kc, W, W, W)
        wins = wins.permute(1, 0, 2, 3, 4).reshape(1, kc * c, win, win, win)
        zk = (k[:, 0, None] + ar_k)[:, :, None, None]
        yk = (k[:, 1, None] + ar_k)[:, None, :, None]
        xk = (k[:, 2, None] + ar_k)[:, None, None, :]
        patches = fp[:, zk, yk, xk].permute(1, 0, 2, 3, 4).contiguous()  # (Kc, C, kw, kw, kw)
        cross = F.conv3d(wins, patches, stride=step, groups=kc)  # (1, Kc, n, n, n)
        sq = (wins.view(kc, c, win, win, win) ** 2).sum(1, keepdim=True).transpose(0, 1)  # (1, Kc, W, W, W)
        wsum = F.avg_pool3d(sq, kw, stride=step) * kw ** 3
        fsum = (patches ** 2).sum((1, 2, 3, 4))
        cost = (wsum - 2 * cross)[0].reshape(kc, -1) + fsum[:, None]
        out[s:s + kc] = cost / norm
        if progress:
            progress(min(1.0, (s + kc) / len(kp)))
    return out
