"""Operations on displacement fields (mm, LPS, on a grid; ``x' = x + u(x)``)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DeepLungRegError
from ..geometry import Geometry
from .warp import SLAB_VOXELS, GridSampler, sample_at_indices, sample_on_grid


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
    # u(ijk) = (A - I)(o + D S ijk) + t, linear in the index
    lin, off = _affine_parts(matrix, geometry)
    return _affine_slab(lin, off, geometry, 0, geometry.shape[0])


def _affine_parts(matrix: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(lin, off)`` with ``u(ijk) = lin @ ijk + off`` for an LPS affine ``matrix`` on ``geometry``."""
    m = np.asarray(matrix, dtype=float)
    if m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
        raise DeepLungRegError(f"affine_to_field: matrix must be a finite 3x4 or 4x4 array, got shape {m.shape}")
    lin = (m[:3, :3] - np.eye(3)) @ geometry.scaled_direction
    return lin, (m[:3, :3] - np.eye(3)) @ np.asarray(geometry.origin) + m[:3, 3]


def _affine_slab(lin: np.ndarray, off: np.ndarray, geometry: Geometry, z0: int, z1: int) -> np.ndarray:
    """Slices ``z0:z1`` of :func:`affine_to_field` ``(z1-z0, Y, X, 3)`` float32 (float64 inside a slice)."""
    out = np.empty((z1 - z0, *geometry.shape[1:], 3), np.float32)
    _, ny, nx = geometry.shape
    j = np.arange(ny, dtype=float)[:, None, None]
    i = np.arange(nx, dtype=float)[None, :, None]
    plane = i * lin[:, 0] + j * lin[:, 1] + off  # (Y, X, 3)
    for k in range(z0, z1):
        out[k - z0] = plane + k * lin[:, 2]
    return out


class SlabField:
    """A displacement field ``(Z, Y, X, 3)`` (mm, LPS) on ``geometry`` that is never held whole: the slices
    asked for are made from its source (a coarser field, or an affine) when they are read, each voxel with
    the value the whole field would hold (:func:`field_to_grid`, :func:`affine_to_field`).

    A 512x512x600 field is 1.9 GB as an array; this needs a slab at a time. It reads like the array where
    the slab-wise code reads one: ``f[z0:z1]`` (``(z1-z0, Y, X, 3)``), ``f[z0:z1, :, :, c]`` (one
    component, the only one made), ``f[k, j, i]`` with integer index arrays (``(N, 3)``, those voxels
    only); ``shape``, ``dtype`` (float32) and ``ndim``. :func:`~DeepLungRegLib.transforms.warp.warp_image`,
    :func:`~DeepLungRegLib.transforms.warp.sample_field_at_points`, the Jacobian and
    :func:`~DeepLungRegLib.io.fields.write_field` take it instead of an array. Make one with
    :meth:`resampled` or :meth:`affine`.

    Attributes:
        geometry: the grid the field is on.
    """

    def __init__(self, geometry: Geometry, slab, at_voxels, on, finite):
        self.geometry = geometry
        self.shape = (*geometry.shape, 3)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4
        self._slab, self._at_voxels, self._on, self._finite = slab, at_voxels, on, finite

    @classmethod
    def resampled(cls, field: torch.Tensor | np.ndarray, src: Geometry, dst: Geometry, *, slab_voxels: int = SLAB_VOXELS) -> "SlabField":
        """The field ``(1, Z, Y, X, 3)`` tensor or ``(Z, Y, X, 3)`` array on ``src`` as :func:`field_to_grid` puts it on
        ``dst`` (a tensor stays on its device)."""
        vol = _field_channels(field, src)

        def slab(z0: int, z1: int, components: slice | int) -> np.ndarray:
            c = slice(components, components + 1) if isinstance(components, (int, np.integer)) else components
            with torch.no_grad():
                return sample_on_grid(vol[c], src, dst, fill=None, channels_last=True, slab_voxels=slab_voxels, z_range=(z0, z1))

        def at_voxels(kji: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return sample_at_indices(vol, src, dst, kji)

        def finite() -> bool:
            return bool(torch.isfinite(vol).all())

        return cls(dst, slab, at_voxels, lambda g: field_to_grid(field, src, g), finite)

    @classmethod
    def affine(cls, matrix: np.ndarray, geometry: Geometry) -> "SlabField":
        """:func:`affine_to_field` of ``matrix`` on ``geometry``."""
        lin, off = _affine_parts(matrix, geometry)

        def slab(z0: int, z1: int, components: slice | int) -> np.ndarray:
            c = slice(components, components + 1) if isinstance(components, (int, np.integer)) else components
            return _affine_slab(lin, off, geometry, z0, z1)[..., c]

        def at_voxels(kji: np.ndarray) -> np.ndarray:
            k, j, i = (np.asarray(kji, dtype=float).reshape(-1, 3)[:, a, None] for a in range(3))
            return ((i * lin[:, 0] + j * lin[:, 1] + off) + k * lin[:, 2]).astype(np.float32)

        return cls(geometry, slab, at_voxels, lambda g: affine_to_field(matrix, g), lambda: True)

    def slab(self, z0: int, z1: int, components: slice | int = slice(None)) -> np.ndarray:
        """Slices ``z0:z1``: ``(z1-z0, Y, X, C)`` float32 (``components`` an int: that one, ``(z1-z0, Y, X)``)."""
        z0, z1 = max(0, int(z0)), min(self.geometry.shape[0], int(z1))
        out = self._slab(z0, max(z0, z1), components)
        return out[..., 0] if isinstance(components, (int, np.integer)) else out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple) and len(key) == 3 and all(isinstance(k, np.ndarray) for k in key):
            k, j, i = np.broadcast_arrays(*key)
            return self._at_voxels(np.stack([k.ravel(), j.ravel(), i.ravel()], 1)).reshape(*k.shape, 3)
        key = key if isinstance(key, tuple) else (key,)
        z, rest = key[0], key[1:]
        if isinstance(z, (int, np.integer)):
            z = slice(int(z) % self.shape[0], int(z) % self.shape[0] + 1)
            squeeze = True
        else:
            squeeze = False
        full = slice(None)
        if not isinstance(z, slice) or z.step not in (None, 1) or len(rest) > 3 or any(r != full for r in rest[:2]):
            raise DeepLungRegError(f"SlabField: reads slices f[z0:z1], f[z0:z1, :, :, c] or voxels f[k, j, i], not {key!r}")
        z0, z1, _ = z.indices(self.shape[0])
        out = self.slab(z0, z1, rest[2] if len(rest) == 3 else slice(None))
        return out[0] if squeeze else out

    def on(self, geometry: Geometry) -> np.ndarray:
        """The field sampled at the voxels of another grid ``(Z', Y', X', 3)`` float32 (e.g. a slice's)."""
        return self._on(geometry)

    def all_finite(self) -> bool:
        """Whether every value is finite (checked on the source: interpolation keeps finite values finite)."""
        return self._finite()

    def full(self) -> np.ndarray:
        """The whole field as an array ``(Z, Y, X, 3)`` float32."""
        return self.slab(0, self.geometry.shape[0])


def _field_channels(field: torch.Tensor | np.ndarray, src: Geometry) -> torch.Tensor:
    """A field ``(1, Z, Y, X, 3)`` tensor or ``(Z, Y, X, 3)`` array on ``src`` as float32 ``(3, Z, Y, X)`` (a view where it can be)."""
    t = torch.as_tensor(field).detach()
    if t.ndim == 5:
        t = t[0]
    if t.ndim != 4 or t.shape[-1] != 3 or tuple(t.shape[:3]) != src.shape:
        raise DeepLungRegError(f"field_to_grid: field shape {tuple(t.shape)} does not match its grid {(*src.shape, 3)}")
    return t.permute(3, 0, 1, 2).to(torch.float32)


def field_to_grid(field: torch.Tensor | np.ndarray, src: Geometry, dst: Geometry) -> np.ndarray:
    """A field ``(1, Z, Y, X, 3)`` tensor or ``(Z, Y, X, 3)`` array on ``src`` trilinearly
    resampled onto grid ``dst`` (border-extended outside ``src``), a slab at a time.

    Returns:
        ``(Z', Y', X', 3)`` float32 on ``dst``; the vectors stay in world mm.
    """
    vol = _field_channels(field, src)
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
