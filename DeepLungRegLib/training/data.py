"""Training pairs for the networks: semi-synthetic pairs from the breathing simulator, made on
the fly from real CTs (the talk's synthetic supervision), on a fixed-size network grid.

A pair becomes a :class:`NetworkPair`: both images (and lung masks) resampled
onto one grid of ``shape`` voxels at ``spacing_mm`` centred on the fixed lung,
intensities windowed to ``[0, 1]``. The network grid is a :class:`Geometry`, so
a network's voxel displacement becomes a world field at the boundary
(:func:`voxel_to_world`), never inside the network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image
from ..methods.common import normalise_ct
from ..segmentation import lung_mask
from ..simulation import simulate_breathing
from ..simulation.breathing import SimulatedPair, amplitude_parameters
from ..transforms.resample import resample_to_geometry, resample_to_spacing
from ..transforms.warp import sample_field_at_points


@dataclass
class NetworkPair:
    """One pair on the network grid.

    Attributes:
        geometry: the network grid (fixed image space).
        fixed, moving: ``(1, 1, Z, Y, X)`` intensities in ``[0, 1]``.
        fixed_mask, moving_mask: ``(1, 1, Z, Y, X)`` lung masks (0/1), or None.
        fixed_points, moving_points: landmarks ``(K, 3)`` LPS mm, or None.
        name: where it came from.
        true_displacement: ``(1, 3, Z, Y, X)`` the known displacement in network voxels ``(z, y, x)``
            (simulated pairs), or None (real pairs).
    """

    geometry: Geometry
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor | None = None
    moving_mask: torch.Tensor | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    name: str = ""
    true_displacement: torch.Tensor | None = None

    def to(self, device: torch.device) -> "NetworkPair":
        """The tensors on ``device`` (geometry, landmarks and name unchanged)."""
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(self, fixed=self.fixed.to(device), moving=self.moving.to(device), fixed_mask=mv(self.fixed_mask),
                                   moving_mask=mv(self.moving_mask), true_displacement=mv(self.true_displacement))


def network_grid(fixed: Image, fixed_mask: Image | None, spacing_mm: float, shape: tuple[int, int, int]) -> Geometry:
    """A grid of ``shape`` (z, y, x) voxels at ``spacing_mm`` along the LPS axes (the networks learnt
    anatomy in that orientation, whatever the storage of the image), centred on the fixed lung (or the image)."""
    g = fixed.geometry
    if fixed_mask is not None and np.any(fixed_mask.array):
        kk, jj, ii = np.nonzero(fixed_mask.array)
        lo = np.array([ii.min(), jj.min(), kk.min()], float)
        hi = np.array([ii.max(), jj.max(), kk.max()], float)
        centre_ijk = (lo + hi) / 2
    else:
        centre_ijk = (np.asarray(g.size, float) - 1) / 2
    centre = g.index_to_world(centre_ijk[None])[0]
    size = (shape[2], shape[1], shape[0])
    sp = (float(spacing_mm),) * 3
    half = (np.asarray(size, float) - 1) / 2 * spacing_mm
    origin = centre - half
    return Geometry(size, sp, tuple(origin))


def to_network_pair(fixed: Image, moving: Image, grid: Geometry, fixed_mask: Image | None = None, moving_mask: Image | None = None,
                    fixed_points: np.ndarray | None = None, moving_points: np.ndarray | None = None, name: str = "") -> NetworkPair:
    """Resample a pair (CT in HU) onto ``grid`` (the moving image through the identity in world space)."""
    def img(x: Image) -> torch.Tensor:
        a = resample_to_geometry(x.with_array(normalise_ct(x.array)), grid, smooth=True, fill=0.0).array
        return torch.as_tensor(a, dtype=torch.float32)[None, None]

    def msk(x: Image | None) -> torch.Tensor | None:
        if x is None:
            return None
        a = resample_to_geometry(x.with_array(np.asarray(x.array, np.float32)), grid, fill=0.0).array > 0.5
        return torch.as_tensor(a, dtype=torch.float32)[None, None]

    return NetworkPair(grid, img(fixed), img(moving), msk(fixed_mask), msk(moving_mask), fixed_points, moving_points, name)


def from_simulated(pair: SimulatedPair, spacing_mm: float, shape: tuple[int, int, int], name: str = "") -> NetworkPair:
    """A simulated pair on its network grid, with the simulator's displacement as ``true_displacement``."""
    grid = network_grid(pair.fixed, pair.fixed_mask, spacing_mm, shape)
    net = to_network_pair(pair.fixed, pair.moving, grid, pair.fixed_mask, pair.moving_mask, pair.fixed_landmarks, pair.moving_landmarks, name)
    u = sample_field_at_points(pair.field, pair.fixed.geometry, grid.world_coordinates().reshape(-1, 3)).reshape(*grid.shape, 3)
    return dataclasses.replace(net, true_displacement=world_to_voxel(u, grid))


def world_to_voxel(field: np.ndarray, grid: Geometry) -> torch.Tensor:
    """A world field ``(Z, Y, X, 3)`` mm (LPS) on ``grid`` -> ``(1, 3, Z, Y, X)`` network voxels ``(z, y, x)``;
    the inverse of :func:`voxel_to_world`."""
    ijk = np.asarray(field, np.float64) @ np.linalg.inv(grid.direction_matrix @ np.diag(grid.spacing)).T
    return torch.as_tensor(np.stack([ijk[..., 2], ijk[..., 1], ijk[..., 0]])[None], dtype=torch.float32)


def voxel_to_world(displacement: torch.Tensor, grid: Geometry) -> np.ndarray:
    """A network displacement ``(1, 3, Z, Y, X)`` in voxels ``(z, y, x)`` -> ``(Z, Y, X, 3)`` mm (LPS) on ``grid``."""
    d = displacement[0].detach().to("cpu", torch.float64).numpy()  # (3, Z, Y, X), z y x
    ijk = np.stack([d[2], d[1], d[0]], -1)  # (Z, Y, X, 3) in i, j, k
    return (ijk @ (grid.direction_matrix @ np.diag(grid.spacing)).T).astype(np.float32)


def augment(pair: NetworkPair, rng: np.random.Generator) -> NetworkPair:
    """Random intensity changes of each image (scale, offset, gamma, noise); the geometry is kept."""
    def one(t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(0, 1) ** float(rng.uniform(0.8, 1.25))
        t = t * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
        return t + float(rng.uniform(0.0, 0.02)) * torch.randn_like(t)

    return dataclasses.replace(pair, fixed=one(pair.fixed), moving=one(pair.moving))


def augment_anatomy(ct: Image, mask: Image | None, rng: np.random.Generator, *, max_rotation_deg: float = 8.0,
                    scale_range: tuple[float, float] = (0.9, 1.1), flip_probability: float = 0.5) -> tuple[Image, Image | None]:
    """A new "anatomy" from a real CT: a random rotation (up to ``max_rotation_deg`` about each axis),
    scaling per axis and left-right mirroring about the image centre, resampled onto the CT's own grid
    (air outside). The lung mask, if given, goes along (nearest neighbour). Breathing is simulated
    afterwards, so the motion is always head-foot as in a real scan.

    Args:
        ct: ``(Z, Y, X)`` HU.
        mask: lung mask on the same grid, or None.
    """
    import SimpleITK as sitk

    from ..io.images import image_to_sitk

    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    scale = np.diag(rng.uniform(*scale_range, 3) * np.array([-1.0 if rng.random() < flip_probability else 1.0, 1.0, 1.0]))
    g = ct.geometry
    t = sitk.AffineTransform(3)
    t.SetMatrix((rot @ scale).ravel().tolist())  # LPS: x (left-right) is the mirrored axis
    t.SetCenter(g.index_to_world((np.asarray(g.size, float) - 1)[None] / 2)[0].tolist())

    def warp(img: Image, interp, fill: float) -> Image:
        ref = image_to_sitk(img)
        out = sitk.Resample(ref, ref, t, interp, fill, ref.GetPixelID())
        return img.with_array(sitk.GetArrayFromImage(out))

    new_ct = warp(ct, sitk.sitkLinear, -1024.0)
    new_mask = None if mask is None else warp(mask.with_array(np.asarray(mask.array, np.uint8)), sitk.sitkNearestNeighbor, 0.0)
    return new_ct, None if new_mask is None else new_mask.with_array(new_mask.array > 0)


def check_amplitude_range(amplitude_range_mm: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` mean lung displacements in mm, each a valid simulator amplitude, low <= high."""
    if len(amplitude_range_mm) != 2:
        raise DeepLungRegError(f"amplitude range: give two numbers (LOW, HIGH) in mm, got {list(amplitude_range_mm)}")
    lo, hi = (float(a) for a in amplitude_range_mm)
    amplitude_parameters(lo), amplitude_parameters(hi)
    if lo > hi:
        raise DeepLungRegError(f"amplitude range: {lo:g}-{hi:g} mm is reversed; give LOW,HIGH")
    return lo, hi


class SimulatedPairPool:
    """A pool of simulated network pairs, refreshed on the fly with new simulations.

    Args:
        cts: real CTs in HU (the inhale images) with optional lung masks: ``[(name, ct, mask | None)]``
            (None: segmented automatically).
        spacing_mm, shape: the network grid.
        size: pairs kept in the pool.
        seed: first simulation seed; every new pair takes the next one.
        amplitudes: presets drawn at random per pair.
        amplitude_range_mm: instead of the presets, draw each pair's mean lung displacement uniformly
            from this range (mm): a continuum of amplitudes, so that a network must measure the motion
            rather than tell two presets apart.
        sim_spacing_mm: the CT is resampled to this before simulating (speed).
        spatial_augment: give every new pair a new anatomy by :func:`augment_anatomy`.
        reverse_fraction: share of the pairs made the other way round (the exhale image fixed, see
            :meth:`SimulatedPair.reversed`), so that a network cannot assume which image is the inhale.
    """

    def __init__(self, cts: list[tuple[str, Image, Image | None]], spacing_mm: float, shape: tuple[int, int, int], size: int = 8,
                 seed: int = 0, amplitudes: tuple[str, ...] = ("small", "large"), sim_spacing_mm: float = 3.0,
                 spatial_augment: bool = False, amplitude_range_mm: tuple[float, float] | None = None,
                 reverse_fraction: float = 0.0):
        if not cts:
            raise DeepLungRegError("SimulatedPairPool: give at least one CT")
        if size < 1:
            raise DeepLungRegError(f"SimulatedPairPool: size must be >= 1, got {size}")
        self.amplitude_range_mm = None if amplitude_range_mm is None else check_amplitude_range(amplitude_range_mm)
        if not 0.0 <= reverse_fraction <= 1.0:
            raise DeepLungRegError(f"SimulatedPairPool: reverse_fraction is a share of the pairs, between 0 and 1; got {reverse_fraction}")
        self.reverse_fraction = float(reverse_fraction)
        self.cts = [(n, resample_to_spacing(ct, sim_spacing_mm, fill=-1024.0),
                     None if m is None else resample_to_geometry(m.with_array(np.asarray(m.array, np.float32)),
                                                                 resample_to_spacing(ct, sim_spacing_mm).geometry, fill=0.0))
                    for n, ct, m in cts]
        # a CT without a mask is segmented once here, not at every simulation (and its mask follows the augmentation)
        self.cts = [(n, ct, lung_mask(ct) if m is None else m.with_array(m.array > 0.5)) for n, ct, m in self.cts]
        self.spacing_mm, self.shape, self.amplitudes, self.spatial_augment = spacing_mm, shape, amplitudes, spatial_augment
        self.rng = np.random.default_rng(seed)
        self.next_seed = seed
        self.made = 0
        self.pairs = [self.new_pair() for _ in range(size)]

    def new_pair(self) -> NetworkPair:
        name, ct, mask = self.cts[self.next_seed % len(self.cts)]
        if self.amplitude_range_mm is None:
            amp = self.amplitudes[int(self.rng.integers(len(self.amplitudes)))]
        else:
            amp = round(float(self.rng.uniform(*self.amplitude_range_mm)), 2)
        if self.spatial_augment:
            ct, mask = augment_anatomy(ct, mask, self.rng)
        sim = simulate_breathing(ct, amplitude=amp, seed=self.next_seed, mask=mask, n_landmarks=100)
        reverse = self.reverse_fraction > 0 and self.rng.random() < self.reverse_fraction
        if reverse:
            sim = sim.reversed()
        self.next_seed += 1
        self.made += 1
        return from_simulated(sim, self.spacing_mm, self.shape,
                              f"{name}_{amp}{'' if isinstance(amp, str) else 'mm'}_s{self.next_seed - 1}{'_reversed' if reverse else ''}")

    def refresh(self) -> None:
        """Replace the oldest pair with a new simulation."""
        self.pairs = self.pairs[1:] + [self.new_pair()]

    def sample(self) -> NetworkPair:
        return augment(self.pairs[int(self.rng.integers(len(self.pairs)))], self.rng)
