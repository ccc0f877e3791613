"""Training pairs for the networks: semi-synthetic pairs from the breathing simulator, made on
the fly from real CTs (the talk's synthetic supervision), on a fixed-size network grid
(:class:`~DeepLungRegLib.networks.pairs.NetworkPair`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import DeepLungRegError
from ..io.images import Image
from ..networks.pairs import NetworkPair, network_grid, to_network_pair
from ..segmentation import lung_mask
from ..simulation import simulate_breathing
from ..simulation.breathing import SimulatedPair, amplitude_parameters
from ..transforms.resample import resample_to_geometry, resample_to_spacing
from ..transforms.frames import world_to_voxel
from ..transforms.warp import sample_field_at_points


def from_simulated(pair: SimulatedPair, spacing_mm: float, shape: tuple[int, int, int], name: str = "") -> NetworkPair:
    """A simulated pair on its network grid, with the simulator's displacement as ``true_displacement``."""
    grid = network_grid(pair.fixed, pair.fixed_mask, spacing_mm, shape)
    net = to_network_pair(pair.fixed, pair.moving, grid, pair.fixed_mask, pair.moving_mask, pair.fixed_landmarks, pair.moving_landmarks, name)
    u = sample_field_at_points(pair.field, pair.fixed.geometry, grid.world_coordinates().reshape(-1, 3)).reshape(*grid.shape, 3)
    return dataclasses.replace(net, true_displacement=world_to_voxel(u, grid))


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
