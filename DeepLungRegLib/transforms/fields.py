"""Operations on displacement fields (mm, LPS, on a grid; ``x' = x + u(x)``)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DeepLungRegError
from ..geometry import Geometry
from .warp import GridSampler, sample_on_grid


def field_to_tensor(field: np.ndarray, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(Z, Y, X, 3)`` array -> ``(1, Z, Y, X, 3)`` tensor."""
    return torch.tensor(np.asarray(field), dtype=dtype, device=device)[None]


def tensor_to_field(t: torch.Tensor) -> np.ndarray:
    """``(1, Z, Y, X, 3)`` tensor -> ``(Z, Y, X, 3)`` float32 array."""
    return t.detach()[0].to("cpu", torch.float32).numpy()


def affine_to_field(matrix: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Dense field of an LPS affine point map ``x' = M[:3,:3] x + M[:3,3]``.

    Args:
        matrix: 4x4 (or 3x4) homogeneous matrix in LPS mm, fixed -> moving.
        geometry: grid to sample the field on.

    Returns:
        ``(Z, Y, X, 3)`` float32 field ``u(x) = M x + t - x``, computed a slab of
        slices at a time (float64 inside a slab).
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
        raise DeepLungRegError(f"affine_to_field: matrix must be a finite 3x4 or 4x4 array, got shape {m.shape}")
    # u(ijk) = (A - I)(o + D S ijk) + t, linear in the index
    lin = (m[:3, :3] - np.eye(3)) @ geometry.scaled_direction
    off = (m[:3, :3] - np.eye(3)) @ np.asarray(geometry.origin) + m[:3, 3]
    out = np.empty((*geometry.shape, 3), np.float32)
    nz, ny, nx = geometry.shape
    j = np.arange(ny, dtype=float)[:, None, None]
    i = np.arange(nx, dtype=float)[None, :, None]
    plane = i * lin[:, 0] + j * lin[:, 1] + off  # (Y, X, 3)
    for k in range(nz):
        out[k] = plane + k * lin[:, 2]
    return out


def field_to_grid(field: torch.Tensor | np.ndarray, src: Geometry, dst: Geometry) -> np.ndarray:
    """A field ``(1, Z, Y, X, 3)`` tensor or ``(Z, Y, X, 3)`` array on ``src`` trilinearly
    resampled onto grid ``dst`` (border-extended outside ``src``), a slab at a time.

    Returns:
        ``(Z', Y', X', 3)`` float32 on ``dst``; the vectors stay in world mm.
    """
    t = torch.as_tensor(field).detach()
    if t.ndim == 5:
        t = t[0]
    if t.ndim != 4 or t.shape[-1] != 3 or tuple(t.shape[:3]) != src.shape:
        raise DeepLungRegError(f"field_to_grid: field shape {tuple(t.shape)} does not match its grid {(*src.shape, 3)}")
    vol = t.permute(3, 0, 1, 2).to(torch.float32)
    with torch.no_grad():
        return sample_on_grid(vol, src, dst, fill=None, channels_last=True)


def resample_field(field: torch.Tensor, src: Geometry, dst: Geometry) -> torch.Tensor:
    """Trilinear resampling of a field tensor ``(1, Z, Y, X, 3)`` from grid ``src`` to ``dst``
    (border-extended outside ``src``), differentiable and on the field's device and dtype.

    Returns:
        ``(1, Z', Y', X', 3)`` on ``dst``; the vectors stay in world mm.
    """
    sampler = GridSampler(dst, src, field.device, field.dtype)
    return sampler(_field_volume(field), None, fill=None).permute(0, 2, 3, 4, 1)  # float32 coordinates at least


def _field_volume(field: torch.Tensor) -> torch.Tensor:
    """``(N, Z, Y, X, 3)`` -> ``(N, 3, Z, Y, X)`` for grid sampling."""
    return field.permute(0, 4, 1, 2, 3)


def compose_fields(first: np.ndarray, first_geometry: Geometry, second: np.ndarray, second_geometry: Geometry) -> np.ndarray:
    """Compose two fields: apply ``first`` then ``second``.

    With ``y = x + u1(x)`` and ``z = y + u2(y)`` the result is
    ``u(x) = u1(x) + u2(x + u1(x))`` on ``first_geometry``. ``second`` is
    extended by its border values outside its grid.
    """
    u1 = field_to_tensor(first, dtype=torch.float64)
    u2 = _field_volume(field_to_tensor(second, dtype=torch.float64))
    sampler = GridSampler(first_geometry, second_geometry, dtype=torch.float64)
    grid = sampler.grid(u1)
    u2_at = torch.nn.functional.grid_sample(u2, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return tensor_to_field(u1 + u2_at.permute(0, 2, 3, 4, 1))


def compose_tensors(u1: torch.Tensor, u2: torch.Tensor, sampler: GridSampler) -> torch.Tensor:
    """Torch version of :func:`compose_fields` with both fields on ``sampler``'s grids."""
    u2_at = torch.nn.functional.grid_sample(_field_volume(u2), sampler.grid(u1), mode="bilinear", padding_mode="border", align_corners=True)
    return u1 + u2_at.permute(0, 2, 3, 4, 1)


def invert_field(
    field: np.ndarray, geometry: Geometry, *, iterations: int = 50, tolerance_mm: float = 1e-3, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, float]:
    """Invert a displacement field on its own grid by fixed-point iteration.

    Solves ``v(y) = -u(y + v(y))`` so that ``(id + u) o (id + v) = id``.
    Converges for invertible fields whose Jacobian stays away from 0.

    Returns:
        ``(inverse, residual_mm)``: the inverse field ``(Z, Y, X, 3)`` and the
        largest remaining ``|v(y) + u(y + v(y))|`` in mm.
    """
    if iterations < 1:
        raise DeepLungRegError(f"invert_field: iterations must be >= 1, got {iterations}")
    u = field_to_tensor(field, device, torch.float32)
    uvol = _field_volume(u)
    sampler = GridSampler(geometry, geometry, device, torch.float32)
    v = -u.clone()
    # reading the residual stops a GPU until it has caught up: there, it is read every few iterations
    # (the extra iterations only bring v closer to the fixed point)
    check_every = 1 if u.device.type == "cpu" else 5
    with torch.no_grad():
        for it in range(iterations):
            u_at = torch.nn.functional.grid_sample(uvol, sampler.grid(v), mode="bilinear", padding_mode="border", align_corners=True)
            r = v + u_at.permute(0, 2, 3, 4, 1)
            v = v - r
            if (it + 1) % check_every == 0 and float(r.norm(dim=-1).max()) < tolerance_mm:
                break
        u_at = torch.nn.functional.grid_sample(uvol, sampler.grid(v), mode="bilinear", padding_mode="border", align_corners=True)
        residual = float((v + u_at.permute(0, 2, 3, 4, 1)).norm(dim=-1).max())
    return tensor_to_field(v), residual
