"""Warping images by displacement fields (torch, differentiable, CPU or CUDA).

This module is the only place where world coordinates become the normalised
``[-1, 1]`` coordinates of :func:`torch.nn.functional.grid_sample`
(``align_corners=True``: -1 and +1 are the centres of the first and last
voxels). Everything outside works in LPS millimetres.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image

_MODES = {"linear": "bilinear", "nearest": "nearest"}
_HALF = (torch.float16, torch.bfloat16)


def _coordinate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sampling coordinates are float32 at least: in bfloat16 a normalised coordinate keeps 8 bits, i.e. a
    position ~0.5 voxel off on a 200-voxel axis (float16: ~0.05); half-precision volumes are sampled as float32."""
    return torch.float32 if dtype in _HALF else dtype


def as_coordinates(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is float16/bfloat16 (e.g. a network's output under autocast), else unchanged:
    positions and displacements in voxels need more than 8 bits (bfloat16 resolves 0.25 voxel at 64)."""
    return t.to(_coordinate_dtype(t.dtype))


def _grid_sample(volume: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``grid_sample`` with ``grid`` in float32 or finer whatever ``volume``'s dtype (returned in that dtype)."""
    if volume.dtype in _HALF:
        out = F.grid_sample(volume.float(), grid.float(), mode=mode, padding_mode=padding_mode, align_corners=True)
        return out.to(volume.dtype)
    return F.grid_sample(volume, grid.to(volume.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def _world_to_normalised(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Affine ``(A, b)`` with ``n = x @ A.T + b`` mapping LPS mm to grid_sample coordinates."""
    inv = np.linalg.inv(geometry.scaled_direction)  # world -> ijk
    scale = 2.0 / np.maximum(np.asarray(geometry.size, dtype=float) - 1.0, 1.0)
    a = np.diag(scale) @ inv
    b = -a @ np.asarray(geometry.origin) - 1.0
    return a, b


def world_grid_tensor(geometry: Geometry, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LPS coordinates of every voxel of ``geometry``, shape ``(Z, Y, X, 3)``."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float64) for n in geometry.shape), indexing="ij")
    ijk = torch.stack([xx, yy, zz], dim=-1)
    m = torch.as_tensor(geometry.scaled_direction, device=device, dtype=torch.float64)
    o = torch.as_tensor(geometry.origin, device=device, dtype=torch.float64)
    return (ijk @ m.T + o).to(dtype)


def _sample_filled(volume: torch.Tensor, grid: torch.Tensor, mode: str, fill: float | None) -> torch.Tensor:
    """``grid_sample`` of ``volume`` at normalised ``grid``; outside it ``fill``, or the nearest border value if None."""
    if fill is None:
        return _grid_sample(volume, grid, _MODES[mode], "border")
    if fill == 0.0:
        return _grid_sample(volume, grid, _MODES[mode], "zeros")
    return _grid_sample(volume - fill, grid, _MODES[mode], "zeros") + fill


class GridSampler:
    """Samples a volume on a moving grid at ``x_fixed + u(x_fixed)``.

    Precomputes the normalised coordinates of the fixed grid's voxels in the
    moving grid so that each call only adds ``u @ A.T``. Use one instance per
    (fixed grid, moving grid) pair inside optimisation loops.

    Args:
        fixed: grid on which the field is sampled and the output lives.
        moving: grid of the volume being sampled.
    """

    def __init__(self, fixed: Geometry, moving: Geometry, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.fixed, self.moving = fixed, moving
        a, b = _world_to_normalised(moving)
        world = world_grid_tensor(fixed, device, torch.float64)
        cd = _coordinate_dtype(dtype)  # float32 for float16/bfloat16 volumes
        self._a = torch.as_tensor(a, device=device, dtype=cd)
        self.base = (world @ torch.as_tensor(a, device=device, dtype=torch.float64).T + torch.as_tensor(b, device=device, dtype=torch.float64)).to(cd)

    def grid(self, field: torch.Tensor | None) -> torch.Tensor:
        """Normalised sampling grid ``(N, Z, Y, X, 3)`` for a field ``(N, Z, Y, X, 3)`` in mm (or None)."""
        base = self.base.unsqueeze(0)
        if field is None:
            return base
        if field.shape[-4:-1] != self.base.shape[:3]:
            raise DeepLungRegError(f"GridSampler: field shape {tuple(field.shape)} does not match the fixed grid {self.fixed.shape}")
        return base + field.to(_coordinate_dtype(field.dtype)) @ self._a.T

    def __call__(self, volume: torch.Tensor, field: torch.Tensor | None, mode: str = "linear", fill: float | None = 0.0) -> torch.Tensor:
        """Warp ``volume (N, C, Zm, Ym, Xm)`` by ``field (N, Z, Y, X, 3)`` mm; returns ``(N, C, Z, Y, X)``.

        Points that fall outside the moving grid get ``fill``, or the nearest border
        value when ``fill`` is None (for fields and features).
        """
        if mode not in _MODES:
            raise DeepLungRegError(f"warp: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
        grid = self.grid(field)
        if grid.shape[0] != volume.shape[0]:
            grid = grid.expand(volume.shape[0], -1, -1, -1, -1)
        return _sample_filled(volume, grid, mode, fill)


    def sample_points(self, volume: torch.Tensor, index: torch.Tensor, displacement: torch.Tensor, mode: str = "linear",
                      fill: float | None = 0.0) -> torch.Tensor:
        """Sample ``volume (N, C, Zm, Ym, Xm)`` at a subset of fixed voxels moved by their displacements.

        Args:
            index: ``(M,)`` flat (z, y, x raster) indices of fixed-grid voxels.
            displacement: ``(N, M, 3)`` mm at those voxels.
            fill: the value of points outside the moving grid, or the nearest border value when None
                (as for a full warp).

        Returns:
            ``(N, C, M)``. Cheaper than a full warp when only the voxels of a mask matter.
        """
        if mode not in _MODES:
            raise DeepLungRegError(f"warp: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
        base = self.base.reshape(-1, 3)[index]  # (M, 3)
        grid = base + displacement.to(_coordinate_dtype(displacement.dtype)) @ self._a.T  # (N, M, 3)
        return _sample_filled(volume, grid[:, :, None, None, :], mode, fill)[:, :, :, 0, 0]


def sample_at_voxels(volume: torch.Tensor, positions: torch.Tensor, mode: str = "linear", padding: str = "border") -> torch.Tensor:
    """Sample ``volume`` at continuous voxel positions of its own grid (2D or 3D).

    For networks, which work in the index space of their input grid.

    Args:
        volume: ``(N, C, Z, Y, X)`` or ``(N, C, Y, X)``.
        positions: ``(N, D, *So)`` positions in voxels, channels in array-axis order
            (``(z, y, x)`` in 3D, ``(y, x)`` in 2D).
        padding: ``"border"`` (nearest border value) or ``"zeros"`` outside the volume.

    Returns:
        ``(N, C, *So)``.
    """
    if mode not in _MODES:
        raise DeepLungRegError(f"sample_at_voxels: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
    d = volume.ndim - 2
    if d not in (2, 3) or positions.ndim != d + 2 or positions.shape[1] != d:
        raise DeepLungRegError(f"sample_at_voxels: positions must be (N, {d}, ...) for a {d}D volume, got {tuple(positions.shape)}")
    size = torch.tensor(volume.shape[2:], device=positions.device, dtype=_coordinate_dtype(positions.dtype)).view(1, d, *([1] * d))
    norm = 2.0 * positions.to(_coordinate_dtype(positions.dtype)) / (size - 1).clamp_min(1) - 1.0
    grid = norm.flip(1).permute(0, *range(2, d + 2), 1)  # grid_sample wants (x, y[, z]) last
    return _grid_sample(volume, grid, _MODES[mode], padding)


def warp_tensor(
    volume: torch.Tensor, moving: Geometry, field: torch.Tensor | None, fixed: Geometry, mode: str = "linear", fill: float | None = 0.0
) -> torch.Tensor:
    """Differentiable warp of ``volume (N, C, Zm, Ym, Xm)`` on ``moving`` by ``field (N, Z, Y, X, 3)`` on ``fixed``."""
    return GridSampler(fixed, moving, volume.device, volume.dtype)(volume, field, mode, fill)


def as_field_array(field):
    """``field`` as an array, unless it is a lazy field (one with a ``slab`` method, such as
    :class:`~DeepLungRegLib.transforms.fields.SlabField`), which is returned as it is: it is read by
    slicing, ``field[z0:z1]``, and never made whole here."""
    return field if hasattr(field, "slab") else np.asarray(field)


#: Voxels of the output grid handled at once by the slab-wise samplers (bounds their temporary memory:
#: about 60 bytes per voxel, so ~120 MB, whatever the size of the image).
SLAB_VOXELS = 2_000_000


def _slabs(shape: tuple[int, int, int], slab_voxels: int, start: int = 0, stop: int | None = None):
    """``(z0, z1)`` ranges of whole slices (of ``start:stop``, all by default) with about ``slab_voxels`` voxels each."""
    per_slice = max(1, shape[1] * shape[2])
    step = max(1, slab_voxels // per_slice)
    stop = shape[0] if stop is None else stop
    for z0 in range(start, stop, step):
        yield z0, min(stop, z0 + step)


def _index_coordinates(dst: Geometry, src: Geometry, ijk: torch.Tensor) -> torch.Tensor:
    """grid_sample coordinates in ``src`` (float64, shape of ``ijk``) of ``dst``'s voxel indices ``ijk (..., 3)``
    (float64, ``(i, j, k)``)."""
    a, b = _world_to_normalised(src)
    m = a @ dst.scaled_direction  # dst index -> src normalised
    c = a @ np.asarray(dst.origin) + b
    return ijk @ torch.as_tensor(m.T, device=ijk.device) + torch.as_tensor(c, device=ijk.device)


def _slab_coordinates(dst: Geometry, src: Geometry, z0: int, z1: int, device) -> torch.Tensor:
    """grid_sample coordinates ``(1, z1-z0, Y, X, 3)`` (float64) of ``dst``'s slices ``z0:z1`` in ``src``."""
    zz, yy, xx = torch.meshgrid(torch.arange(z0, z1, device=device, dtype=torch.float64),
                                torch.arange(dst.shape[1], device=device, dtype=torch.float64),
                                torch.arange(dst.shape[2], device=device, dtype=torch.float64), indexing="ij")
    return _index_coordinates(dst, src, torch.stack([xx, yy, zz], dim=-1))[None]


def sample_at_indices(volume: torch.Tensor, src: Geometry, dst: Geometry, kji: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volume (C, Zs, Ys, Xs)`` (a float tensor on ``src``) at some voxels of grid ``dst``,
    border-extended outside ``src``: the values :func:`sample_on_grid` (``fill=None``) gives those voxels.

    Args:
        kji: ``(N, 3)`` integer voxel indices of ``dst`` in array order ``(k, j, i)``.

    Returns:
        ``(N, C)`` in the volume's dtype (float32 for a float32 volume).
    """
    idx = torch.as_tensor(np.asarray(kji, dtype=np.float64).reshape(-1, 3)[:, ::-1].copy(), device=volume.device)
    grid = _index_coordinates(dst, src, idx)[None, :, None, None, :]  # (1, N, 1, 1, 3)
    res = F.grid_sample(volume[None], grid.to(volume.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return res[0, :, :, 0, 0].T.cpu().numpy()


def _inside_weight(grid: torch.Tensor, shape: tuple[int, int, int], mode: str) -> torch.Tensor:
    """The interpolation weight that falls inside a volume of ``shape`` (Z, Y, X) at normalised
    ``grid`` points ``(1, ..., 3)``: what ``grid_sample`` with zero padding returns for a volume of ones."""
    w = None
    for axis, n in enumerate(shape[::-1]):  # grid channels are (x, y, z)
        p = (grid[..., axis] + 1.0) * 0.5 * max(n - 1, 1)
        if mode == "nearest":
            i = torch.round(p)
            wa = ((i >= 0) & (i <= n - 1)).to(grid.dtype)
        else:
            i0 = torch.floor(p)
            t = p - i0
            wa = (1 - t) * ((i0 >= 0) & (i0 <= n - 1)) + t * ((i0 + 1 >= 0) & (i0 + 1 <= n - 1))
        w = wa if w is None else w * wa
    return w[None]


def sample_on_grid(
    volume: torch.Tensor | np.ndarray,
    src: Geometry,
    dst: Geometry,
    field: np.ndarray | None = None,
    *,
    mode: str = "linear",
    fill: float | None = 0.0,
    out: np.ndarray | None = None,
    channels_last: bool = False,
    slab_voxels: int = SLAB_VOXELS,
    z_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Sample a volume on ``src`` at the points ``x + u(x)`` of grid ``dst``, a slab of slices at a time.

    Memory beyond the input and the output is bounded by ``slab_voxels`` whatever
    the grid size, so full-resolution CTs (512x512x600) can be warped on a laptop.

    Args:
        volume: ``(C, Zs, Ys, Xs)`` or ``(Zs, Ys, Xs)`` on ``src`` (a tensor is used on its device).
        field: optional ``(Z, Y, X, 3)`` mm on ``dst`` (``None``: plain resampling).
        fill: value outside ``src``; ``None`` repeats the nearest border value.
        out: optional output array to fill (``(C, Z, Y, X)``, or ``(Z, Y, X, C)`` with
            ``channels_last``; ``(Z, Y, X)`` for a 3D volume); its dtype is kept (values are
            rounded for integer types).
        z_range: ``(z0, z1)``: only ``dst``'s slices ``z0:z1`` (the output then has ``z1 - z0``
            slices, and ``field`` still covers the whole of ``dst``); each voxel gets the value the
            whole grid gives it.

    Returns:
        The sampled volume on ``dst``, float32 unless ``out`` says otherwise.
    """
    if mode not in _MODES:
        raise DeepLungRegError(f"sample_on_grid: unknown interpolation {mode!r}; use 'linear' or 'nearest'")
    # A numpy volume stays as it is (e.g. int16): each output slab converts only the source slices it reads.
    from_numpy = isinstance(volume, np.ndarray)
    vol = volume if from_numpy else torch.as_tensor(volume)
    scalar = vol.ndim == 3
    if scalar:
        vol = vol[None]
    if vol.ndim != 4 or tuple(vol.shape[1:]) != src.shape:
        raise DeepLungRegError(f"sample_on_grid: volume shape {tuple(vol.shape)} does not match its grid {src.shape}")
    if not from_numpy and vol.dtype not in (torch.float32, torch.float64):
        vol = vol.to(torch.float32)
    if field is not None and np.shape(field) != (*dst.shape, 3):
        raise DeepLungRegError(f"sample_on_grid: field shape {np.shape(field)} does not match the grid {(*dst.shape, 3)}")
    n_c = vol.shape[0]
    zs, ze = (0, dst.shape[0]) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not 0 <= zs <= ze <= dst.shape[0]:
        raise DeepLungRegError(f"sample_on_grid: z_range {z_range} is not within the grid's {dst.shape[0]} slices")
    shape = (ze - zs, *dst.shape[1:])
    if out is None:
        out = np.empty(shape if scalar else ((*shape, n_c) if channels_last else (n_c, *shape)), np.float32)
    dev = torch.device("cpu") if from_numpy else vol.device
    a_field = torch.as_tensor(_world_to_normalised(src)[0].T, device=dev, dtype=torch.float64)
    padding = "border" if fill is None else "zeros"
    integer = np.dtype(out.dtype).kind in "iub"
    nz = src.shape[0]
    for z0, z1 in _slabs(dst.shape, slab_voxels, zs, ze):
        grid = _slab_coordinates(dst, src, z0, z1, dev)
        if field is not None:
            grid = grid + torch.as_tensor(np.asarray(field[z0:z1]), device=dev).to(torch.float64) @ a_field
        if from_numpy:
            # the source slices this slab reads (every corner of every point, clamped to the volume)
            k = (grid[..., 2] + 1.0) * 0.5 * max(nz - 1, 1)
            k0 = int(np.clip(np.floor(float(k.min())), 0, max(nz - 2, 0)))  # at least two slices where there are two
            k1 = int(np.clip(np.floor(float(k.max())) + 2, min(k0 + 2, nz), nz))
            sub = torch.from_numpy(np.ascontiguousarray(vol[:, k0:k1], dtype=np.float32))
            g = grid.clone()
            g[..., 2] = (k - k0) * (2.0 / max(k1 - k0 - 1, 1)) - 1.0 if k1 - k0 > 1 else (k - k0) * 2.0
            res = F.grid_sample(sub[None], g.to(torch.float32), mode=_MODES[mode], padding_mode=padding, align_corners=True)[0]
        else:
            res = F.grid_sample(vol[None], grid.to(vol.dtype), mode=_MODES[mode], padding_mode=padding, align_corners=True)[0]
        if fill not in (None, 0.0):
            # what zero padding left out is filled with ``fill`` (no shifted copy of the whole volume)
            res = res + fill * (1.0 - _inside_weight(grid, src.shape, mode).to(res.dtype))
        r = res.cpu().numpy()
        if integer:
            info = np.iinfo(out.dtype) if np.dtype(out.dtype).kind in "iu" else None
            r = np.round(r)
            if info is not None:
                r = np.clip(r, info.min, info.max)
        o0, o1 = z0 - zs, z1 - zs
        if scalar:
            out[o0:o1] = r[0]
        elif channels_last:
            out[o0:o1] = np.moveaxis(r, 0, -1)
        else:
            out[:, o0:o1] = r
    return out


def warp_image(
    moving: Image,
    field: np.ndarray | None,
    fixed: Geometry,
    *,
    mode: str = "linear",
    fill: float | None = 0.0,
    device: torch.device | str = "cpu",
    dtype: np.dtype | type | None = None,
) -> Image:
    """Warp a moving image onto the fixed grid: ``out(x) = moving(x + u(x))``.

    Works a slab of fixed slices at a time (see :func:`sample_on_grid`), so its
    memory is the moving image as float32 plus the output.

    Args:
        moving: the image to resample.
        field: ``(Z, Y, X, 3)`` mm on ``fixed`` (``None`` = identity, i.e. plain resampling), an array
            or a :class:`~DeepLungRegLib.transforms.fields.SlabField` (its slabs are made as they are needed).
        fixed: the output grid.
        mode: ``"linear"`` for intensities, ``"nearest"`` for labels.
        fill: value outside the moving image (use -1024 for CT); ``None`` repeats the nearest border value.
        dtype: output type (rounded and clipped for integers). Default: float32 for linear
            interpolation, the moving image's own type for nearest.
    """
    if field is not None:
        field = as_field_array(field)
        if field.shape != (*fixed.shape, 3):
            raise DeepLungRegError(f"warp_image: field shape {field.shape} does not match the fixed grid {(*fixed.shape, 3)}")
    src = np.asarray(moving.array)
    if dtype is None:
        dtype = src.dtype if (mode == "nearest" or src.dtype.kind == "b") else np.float32
    # on the CPU the image stays as stored and each slab reads the slices it needs (no float copy of it)
    vol = src if torch.device(device).type == "cpu" else torch.as_tensor(src.astype(np.float32, copy=False), device=device)
    out = np.empty(fixed.shape, dtype=np.uint8 if np.dtype(dtype).kind == "b" else dtype)
    with torch.no_grad():
        sample_on_grid(vol, moving.geometry, fixed, field, mode=mode, fill=fill, out=out)
    return Image(out.astype(bool) if np.dtype(dtype).kind == "b" else out, fixed)


def sample_field_at_points(field: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Trilinearly interpolate a field ``(Z, Y, X, 3)`` (an array or a
    :class:`~DeepLungRegLib.transforms.fields.SlabField`) at LPS points ``(N, 3)``; returns ``(N, 3)`` float64.

    Points outside the grid take the value of the nearest border voxel. Only the
    eight neighbours of each point are read, so this costs nothing for
    full-resolution fields.
    """
    f = as_field_array(field)
    if f.shape != (*geometry.shape, 3):
        raise DeepLungRegError(f"sample_field_at_points: field shape {f.shape} does not match the grid {(*geometry.shape, 3)}")
    return _trilinear_at_points(f, geometry, points)


def sample_map_at_points(values: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Trilinearly interpolate a scalar map ``(Z, Y, X)`` (e.g. the uncertainty) at LPS points ``(N, 3)``; returns
    ``(N,)`` float64 (outside the grid, the nearest border voxel's value)."""
    values = np.asarray(values)
    if values.shape != geometry.shape:
        raise DeepLungRegError(f"sample_map_at_points: map shape {values.shape} does not match the grid {geometry.shape}")
    return _trilinear_at_points(values[..., None], geometry, points)[:, 0]


def _trilinear_at_points(f: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """``f`` ``(Z, Y, X, C)`` at LPS points: ``(N, C)`` float64, reading only each point's eight neighbours."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    size = np.asarray(geometry.size)  # (i, j, k)
    ijk = np.clip(geometry.world_to_index(points), 0.0, size - 1.0)
    lo = np.minimum(np.floor(ijk).astype(int), np.maximum(size - 2, 0))
    t = ijk - lo
    out = np.zeros((len(points), f.shape[-1]))
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                i = np.minimum(lo[:, 0] + di, size[0] - 1)
                j = np.minimum(lo[:, 1] + dj, size[1] - 1)
                k = np.minimum(lo[:, 2] + dk, size[2] - 1)
                w = (t[:, 0] if di else 1 - t[:, 0]) * (t[:, 1] if dj else 1 - t[:, 1]) * (t[:, 2] if dk else 1 - t[:, 2])
                out += w[:, None] * f[k, j, i].astype(np.float64)
    return out
