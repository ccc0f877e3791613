"""MIND-SSC: the self-similarity-context variant of the modality independent
neighbourhood descriptor (Heinrich et al.; used throughout the talk 003).

For every voxel, 12 patch distances are taken between pairs of its six
face neighbours (at ``dilation`` voxels) that are not opposite each other.
The distances are turned into a 12-channel descriptor by
``exp(-D / V)`` with ``V`` the local mean distance, and normalised by the
per-voxel maximum.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..errors import DeepLungRegError
from ..ops.filters import box_mean3d

# six face neighbours as (dz, dy, dx)
_SIX = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
# the 12 pairs at squared distance 2 (neighbours on different axes)
_PAIRS = [(a, b) for a, b in itertools.combinations(range(6), 2) if sum((x - y) ** 2 for x, y in zip(_SIX[a], _SIX[b])) == 2]


def _shift(padded: torch.Tensor, offset: tuple[int, int, int], pad: int, shape: tuple[int, int, int]) -> torch.Tensor:
    z, y, x = (pad + o for o in offset)
    return padded[:, :, z : z + shape[0], y : y + shape[1], x : x + shape[2]]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> torch.Tensor:
    """MIND-SSC descriptor.

    Args:
        image: ``(N, 1, Z, Y, X)`` intensities (any scale).
        radius: patch radius in voxels (box of side ``2 * radius + 1``).
        dilation: neighbour distance in voxels.

    Returns:
        ``(N, 12, Z, Y, X)`` descriptor in ``[0, 1]``, same dtype and device.
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise DeepLungRegError(f"mind_ssc: image must be (N, 1, Z, Y, X), got {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise DeepLungRegError(f"mind_ssc: radius must be >= 0 and dilation >= 1, got {radius}, {dilation}")
    shape = tuple(image.shape[2:])
    pad = dilation
    padded = F.pad(image, (pad,) * 6, mode="replicate")
    shifted = [_shift(padded, tuple(dilation * o for o in off), pad, shape) for off in _SIX]
    diffs = torch.cat([(shifted[a] - shifted[b]) ** 2 for a, b in _PAIRS], dim=1)  # (N, 12, Z, Y, X)
    if radius > 0:
        diffs = box_mean3d(diffs, radius)
    diffs = diffs - diffs.min(dim=1, keepdim=True).values
    var = diffs.mean(dim=1, keepdim=True)
    mean_var = var.mean()
    var = var.clamp(min=float(mean_var) * 1e-3 + eps, max=float(mean_var) * 1e3 + eps)
    desc = torch.exp(-diffs / var)
    return desc / desc.max(dim=1, keepdim=True).values.clamp_min(eps)
