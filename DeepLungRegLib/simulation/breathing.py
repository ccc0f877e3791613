"""Breathing-motion simulator: turns one real CT (taken as the inhale, fixed
image) into a semi-synthetic exhale (moving) image with a known dense
ground-truth field.

Motion model (exhale relative to inhale, LPS: +z superior, +y posterior,
+x left), built on a ~4 mm working grid from the inhale lung mask:

* cranio-caudal: the lung moves superiorly by ``A * s^p``, where ``s`` is
  0 at the apex and 1 at the base, so motion grows towards the diaphragm (exponent 1.5 for
  ``small``, 0.8 for ``large``, interpolated for an amplitude given in mm);
  below the base the abdomen follows the diaphragm with exponential decay;
* antero-posterior: anterior lung moves posteriorly, the posterior lung
  (spine) stays;
* lateral: the lungs contract towards the midline;
* sliding: all of this is weighted by a sharp, lightly smoothed lung mask,
  so the chest wall stays nearly still while the lung slides along it;
* smooth local randomness: Gaussian-filtered noise fields.

The field is scaled so the mean displacement inside the lung matches the
preset (or the amplitude given in mm), and smoothed further until its minimum Jacobian is positive. The
exhale image is ``M(y) = F'(y + w(y))`` with ``w`` the inverse field and
``F'`` the inhale image with lung density scaled by mass conservation
(``(HU + 1000) / J - 1000``). Where ``y + w(y)`` falls outside the CT (the
anatomy that exhalation brings into the field of view from below it), the
nearest border value is repeated: filling it with air would give the exhale a
slab of air under the lung bases that no scanner shows (and that a network can
read the amplitude from). Independent Gaussian noise is added to both.
About 300 Förstner keypoints inside the inhale lung are the landmarks; their
partners are ``p + u(p)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.fields import read_field, write_field
from ..io.images import Image, read_image, write_image
from ..io.landmarks import read_landmarks, write_landmarks
from ..io.outputs import RECORD_KEY, OutputFolder, check_output_path, read_records, replace_problems, same_file
from ..keypoints import foerstner_keypoints
from ..metrics.jacobian import jacobian_determinant
from ..segmentation import lung_mask as auto_lung_mask
from ..transforms.fields import invert_field
from ..transforms.resample import resample_to_geometry
from ..transforms.warp import sample_field_at_points, warp_image

#: Presets: range of the mean lung displacement (mm) and share of each motion part.
AMPLITUDES: dict[str, dict] = {
    "small": {"mean_mm": (7.0, 9.0), "exponent": 1.5, "description": "like DIR-Lab 4D-CT (mean 7-9 mm, max about 20 mm)"},
    "large": {"mean_mm": (18.0, 23.0), "exponent": 0.8, "description": "like DIR-Lab COPD (mean 18-23 mm, max about 40 mm)"},
}

#: Range of a numeric amplitude (mean lung displacement in mm).
AMPLITUDE_RANGE_MM = (1.0, 40.0)


def amplitude_parameters(amplitude: str | float) -> tuple[tuple[float, float], float]:
    """The mean-displacement range (mm) and cranio-caudal exponent of ``amplitude``: a preset name
    (:data:`AMPLITUDES`) or a number, the mean lung displacement in mm. A number's exponent is
    interpolated between the presets' (1.5 at the small preset's mean, 0.8 at the large one's), so
    larger motion concentrates less at the base, as in the presets."""
    if isinstance(amplitude, str):
        if amplitude not in AMPLITUDES:
            try:
                amplitude = float(amplitude)
            except ValueError:
                raise DeepLungRegError(f"simulate: unknown amplitude {amplitude!r}; use one of {', '.join(AMPLITUDES)} "
                                       "or a mean lung displacement in mm") from None
        else:
            preset = AMPLITUDES[amplitude]
            return tuple(preset["mean_mm"]), float(preset["exponent"])
    a = float(amplitude)
    lo, hi = AMPLITUDE_RANGE_MM
    if not (np.isfinite(a) and lo <= a <= hi):
        raise DeepLungRegError(f"simulate: a numeric amplitude is the mean lung displacement in mm and must lie in "
                               f"[{lo:g}, {hi:g}], got {amplitude}")
    means = [float(np.mean(AMPLITUDES[k]["mean_mm"])) for k in ("small", "large")]
    exps = [AMPLITUDES[k]["exponent"] for k in ("small", "large")]
    return (a, a), float(np.interp(a, means, exps))


PAIR_FILES = {
    "fixed": "fixed.nii.gz",
    "moving": "moving.nii.gz",
    "fixed_mask": "fixed_mask.nii.gz",
    "moving_mask": "moving_mask.nii.gz",
    "field": "ground_truth_field.nii.gz",
    "fixed_landmarks": "fixed_landmarks.csv",
    "moving_landmarks": "moving_landmarks.csv",
    "info": "simulation.json",
}


@dataclass
class SimulatedPair:
    """A simulated pair. ``field`` is the ground truth on the fixed grid (mm, LPS, ``x_m = x_f + u``).
    ``inverse_field`` (held in memory after a simulation, not written) is the inverse on the same grid,
    ``x_f = x_m + w(x_m)``; it makes the reversed pair (:meth:`reversed`)."""

    fixed: Image
    moving: Image
    fixed_mask: Image
    moving_mask: Image
    field: np.ndarray
    fixed_landmarks: np.ndarray
    moving_landmarks: np.ndarray
    info: dict = field(default_factory=dict)
    inverse_field: np.ndarray | None = None

    def reversed(self) -> "SimulatedPair":
        """The same pair the other way round: the exhale image fixed and the inhale image moving, with
        the inverse field as ground truth and the landmarks swapped (both images share one grid)."""
        if self.inverse_field is None:
            raise DeepLungRegError("simulate: this pair has no inverse field (pairs read from disk have none); "
                                   "reverse it right after simulating")
        info = {**self.info, "reversed": not self.info.get("reversed", False)}
        return SimulatedPair(self.moving, self.fixed, self.moving_mask, self.fixed_mask, self.inverse_field, self.moving_landmarks,
                             self.fixed_landmarks, info, self.field)


def _gaussian(a: np.ndarray, sigma_mm: float, spacing_zyx) -> np.ndarray:
    return ndi.gaussian_filter(a, [sigma_mm / s for s in spacing_zyx], mode="nearest")


def _motion_field(mask: np.ndarray, geom: Geometry, rng: np.random.Generator, sliding_sigma_mm: float, exponent: float) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled motion ``(Z, Y, X, 3)`` on the working grid and the smoothed lung weight."""
    sp = geom.spacing_zyx
    world = geom.world_coordinates()
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    lx, ly, lz = x[mask], y[mask], z[mask]
    z_top, z_bot = np.percentile(lz, 99.5), np.percentile(lz, 0.5)
    s = np.clip((z_top - z) / max(z_top - z_bot, 1e-3), 0.0, 1.0)
    y_ant, y_post = np.percentile(ly, 1), np.percentile(ly, 99)
    x_mid = 0.5 * (np.percentile(lx, 1) + np.percentile(lx, 99))
    half_w = max(0.5 * (np.percentile(lx, 99) - np.percentile(lx, 1)), 1.0)

    w = np.clip(_gaussian(mask.astype(np.float32), sliding_sigma_mm, sp), 0, 1)
    # the abdomen under each lung column follows the diaphragm
    zcol = np.where(mask, z, np.inf).min(axis=0)  # lowest lung z per (y, x) column (axial scans)
    below = np.isfinite(zcol)[None] & (z < zcol[None])
    follow = np.where(below, np.exp(-(zcol[None] - z) / 40.0), 0.0)
    w_cc = np.clip(_gaussian(np.maximum(mask, follow).astype(np.float32), sliding_sigma_mm, sp), 0, 1)

    cc = rng.uniform(0.9, 1.1) * s**exponent
    ap = rng.uniform(0.18, 0.25) * np.clip((y_post - y) / max(y_post - y_ant, 1.0), 0, 1) * (0.4 + 0.6 * s)
    lr = -rng.uniform(0.10, 0.15) * np.clip((x - x_mid) / half_w, -1, 1) * (0.3 + 0.7 * s)
    rand = np.stack([_gaussian(rng.standard_normal(mask.shape).astype(np.float32), 20.0, sp) for _ in range(3)], -1)
    rand /= max(np.abs(rand[mask]).max(), 1e-6)
    u = np.zeros((*mask.shape, 3), np.float32)
    u[..., 0] = w * (lr + 0.08 * rand[..., 0])
    u[..., 1] = w * (ap + 0.08 * rand[..., 1])
    u[..., 2] = w_cc * cc + w * 0.08 * rand[..., 2]
    return u, w


def simulate_breathing(
    ct: Image,
    *,
    amplitude: str | float = "small",
    seed: int = 0,
    mask: Image | None = None,
    noise_hu: float = 20.0,
    n_landmarks: int = 300,
    working_spacing_mm: float = 4.0,
    progress: Callable[[str, float], None] | None = None,
) -> SimulatedPair:
    """Simulate an exhale image from an inhale CT.

    Args:
        ct: the inhale CT in HU (becomes the fixed image).
        amplitude: ``"small"`` or ``"large"`` (see :data:`AMPLITUDES`), or the mean lung displacement in mm
            (a number in :data:`AMPLITUDE_RANGE_MM`; see :func:`amplitude_parameters`).
        seed: random seed; the same seed gives the same pair.
        mask: inhale lung mask (computed automatically when omitted).
        noise_hu: standard deviation of the Gaussian noise added to both images.
        n_landmarks: number of landmarks to place in the lung.

    Returns:
        The pair with ground truth, landmarks and an ``info`` summary.
    """
    mean_range, exponent = amplitude_parameters(amplitude)
    if not (0 <= noise_hu <= 500):
        raise DeepLungRegError(f"simulate: noise_hu must be between 0 and 500, got {noise_hu}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DeepLungRegError(f"simulate: the seed must be a whole number >= 0, got {seed!r}")
    if not (1 <= n_landmarks <= 100000):
        raise DeepLungRegError(f"simulate: n_landmarks must be between 1 and 100000, got {n_landmarks}")
    report = progress or (lambda msg, frac: None)
    rng = np.random.default_rng(seed)
    report("lung mask", 0.05)
    if mask is None:
        mask = auto_lung_mask(ct)
    elif mask.array.shape != ct.array.shape:
        raise DeepLungRegError(f"simulate: mask shape {mask.array.shape} does not match the CT {ct.array.shape}")
    lung = np.asarray(mask.array, dtype=bool)
    if lung.sum() * ct.geometry.voxel_volume_ml < 50:
        raise DeepLungRegError("simulate: the lung mask holds less than 50 ml; cannot simulate breathing")

    work_geom = ct.geometry.with_spacing(tuple(max(s, working_spacing_mm) for s in ct.geometry.spacing))
    work_mask = resample_to_geometry(mask.with_array(lung.astype(np.float32)), work_geom, fill=0.0).array > 0.5
    target_mean = float(rng.uniform(*mean_range))

    report("motion field", 0.15)
    sigma = 6.0
    for attempt in range(6):
        u_work, _ = _motion_field(work_mask, work_geom, np.random.default_rng(seed + 1000 * attempt), sigma, exponent)
        mag = np.linalg.norm(u_work[work_mask], axis=-1)
        u_work *= target_mean / max(mag.mean(), 1e-6)
        jac = jacobian_determinant(u_work, work_geom)
        if jac.min() > 0.2:
            break
        sigma *= 1.5
    else:
        raise DeepLungRegError(f"simulate: could not make an invertible field (min Jacobian {jac.min():.3f})")

    report("inverse field", 0.35)
    inv_work, residual = invert_field(u_work, work_geom, iterations=100, tolerance_mm=1e-3)

    def to_full(f: np.ndarray) -> np.ndarray:
        comps = [resample_to_geometry(Image(f[..., c], work_geom), ct.geometry, mode="linear").array for c in range(3)]
        return np.stack(comps, -1).astype(np.float32)

    report("upsample", 0.45)
    u_full = to_full(u_work)
    inv_full = to_full(inv_work)
    jac_full = resample_to_geometry(Image(jac, work_geom), ct.geometry, mode="linear").array

    report("density change and warp", 0.6)
    src = ct.array.astype(np.float32)
    dens = np.where(lung, np.clip((src + 1000.0) / np.clip(jac_full, 0.2, None) - 1000.0, -1024.0, 3071.0), src)
    # outside the CT: the nearest border value (fill=None), for the image and its mask alike
    moving_clean = warp_image(ct.with_array(dens), inv_full, ct.geometry, fill=None).array
    moving_mask = warp_image(mask.with_array(lung.astype(np.float32)), inv_full, ct.geometry, fill=None).array > 0.5

    report("noise", 0.7)
    fixed_arr = src + rng.normal(0.0, noise_hu, src.shape).astype(np.float32) if noise_hu else src
    moving_arr = moving_clean + rng.normal(0.0, noise_hu, src.shape).astype(np.float32) if noise_hu else moving_clean
    out_dtype = np.int16
    fixed_img = ct.with_array(np.clip(np.round(fixed_arr), -1024, 3071).astype(out_dtype))
    moving_img = ct.with_array(np.clip(np.round(moving_arr), -1024, 3071).astype(out_dtype))

    report("landmarks", 0.8)
    eroded = ndi.binary_erosion(lung, iterations=2) if lung.sum() > 1000 else lung
    volume_ml = float(lung.sum() * ct.geometry.voxel_volume_ml)
    min_dist = max(2.0, 0.45 * (volume_ml * 1000.0 / n_landmarks) ** (1 / 3))
    pts = foerstner_keypoints(ct.with_array(src), eroded, count=n_landmarks, min_distance_mm=min_dist)
    moved = pts + sample_field_at_points(u_full, ct.geometry, pts)

    lung_disp = np.linalg.norm(u_full[lung], axis=-1)
    info = {
        "amplitude": amplitude if isinstance(amplitude, str) and amplitude in AMPLITUDES else float(amplitude),
        "seed": int(seed),
        "target_mean_mm": target_mean,
        "mean_lung_displacement_mm": float(lung_disp.mean()),
        "max_lung_displacement_mm": float(lung_disp.max()),
        "min_jacobian": float(jac_full.min()),
        "mean_lung_jacobian": float(jac_full[lung].mean()),
        "inverse_residual_mm": float(residual),
        "noise_hu": float(noise_hu),
        "n_landmarks": int(len(pts)),
        "lung_volume_ml": volume_ml,
        "sliding_sigma_mm": float(sigma),
        "geometry": ct.geometry.to_dict(),
    }
    report("done", 1.0)
    return SimulatedPair(fixed_img, moving_img, mask.with_array(lung), ct.with_array(moving_mask), u_full, pts, moved, info, inv_full)


def check_pair_outdir(outdir: str | os.PathLike, overwrite: bool, inputs=()) -> None:
    """Refuse, before any work, a folder where writing a pair would replace what a run of ours did not write.

    ``overwrite`` lets an earlier pair go only where its files still match the record in its
    ``simulation.json`` (the rule of :class:`~DeepLungRegLib.io.outputs.OutputFolder`); ``inputs`` (the CT
    the pair is made from) are never replaced."""
    out = check_output_path(outdir, "simulate")
    if not out.exists():
        return
    present = [n for n in PAIR_FILES.values() if os.path.lexists(out / n)]
    for n in present:
        hit = next((str(i) for i in inputs if same_file(out / n, i)), None)
        if hit is not None:
            raise DeepLungRegError(f"simulate: {out / n} is the input {hit}; a pair file would replace it: choose another folder")
    if present and not overwrite:
        raise DeepLungRegError(f"simulate: {out} already holds a pair; choose another folder or pass --overwrite")
    problems, _ = replace_problems(out, PAIR_FILES.values(), overwrite=overwrite, records=read_records(out / PAIR_FILES["info"]),
                                   inputs=inputs, record_file=PAIR_FILES["info"])
    if problems:
        raise DeepLungRegError(f"simulate: {problems[0]}")


def write_pair(pair: SimulatedPair, outdir: str | os.PathLike, *, overwrite: bool = False, source: str | None = None,
               inputs=()) -> Path:
    """Write a simulated pair to ``outdir`` (file names in :data:`PAIR_FILES`).

    The files are staged in the folder and put in place together; ``simulation.json`` records each
    file's size and hash, and ``overwrite`` replaces only an earlier pair's files that still match it
    (never a file a run of ours did not write)."""
    inputs = [*inputs, *([source] if source else [])]
    check_pair_outdir(outdir, overwrite, inputs)
    with OutputFolder(outdir, PAIR_FILES.values(), overwrite=overwrite, owner="simulate", inputs=inputs,
                      record_file=PAIR_FILES["info"]) as folder:
        write_image(pair.fixed, folder.path(PAIR_FILES["fixed"]))
        write_image(pair.moving, folder.path(PAIR_FILES["moving"]))
        write_image(pair.fixed_mask.with_array(pair.fixed_mask.array.astype(np.uint8)), folder.path(PAIR_FILES["fixed_mask"]))
        write_image(pair.moving_mask.with_array(pair.moving_mask.array.astype(np.uint8)), folder.path(PAIR_FILES["moving_mask"]))
        write_field(pair.field, pair.fixed.geometry, folder.path(PAIR_FILES["field"]))
        write_landmarks(pair.fixed_landmarks, folder.path(PAIR_FILES["fixed_landmarks"]))
        write_landmarks(pair.moving_landmarks, folder.path(PAIR_FILES["moving_landmarks"]))
        info = dict(pair.info)
        if source:
            info["source"] = source
        info[RECORD_KEY] = folder.records()  # what a later --overwrite may replace: these files, unchanged
        folder.path(PAIR_FILES["info"]).write_text(json.dumps(info, indent=2))
        folder.commit()
    return Path(outdir)


def read_pair(pairdir: str | os.PathLike) -> SimulatedPair:
    """Read a pair written by :func:`write_pair`."""
    pairdir = Path(pairdir)
    if not pairdir.is_dir():
        raise DeepLungRegError(f"read_pair: {pairdir} is not a folder")
    missing = [n for n in PAIR_FILES.values() if not (pairdir / n).exists()]
    if missing:
        raise DeepLungRegError(f"read_pair: {pairdir} is not a simulated pair; missing {', '.join(missing)}")
    fixed = read_image(pairdir / PAIR_FILES["fixed"])
    field, geom = read_field(pairdir / PAIR_FILES["field"])
    if not geom.same_as(fixed.geometry):
        raise DeepLungRegError(f"read_pair: the ground-truth field in {pairdir} is not on the fixed grid")
    fm = read_image(pairdir / PAIR_FILES["fixed_mask"])
    mm = read_image(pairdir / PAIR_FILES["moving_mask"])
    info = json.loads((pairdir / PAIR_FILES["info"]).read_text())
    info.pop(RECORD_KEY, None)  # the files' record belongs to the folder, not to the pair
    return SimulatedPair(
        fixed, read_image(pairdir / PAIR_FILES["moving"]), fm.with_array(fm.array > 0), mm.with_array(mm.array > 0), field,
        read_landmarks(pairdir / PAIR_FILES["fixed_landmarks"]), read_landmarks(pairdir / PAIR_FILES["moving_landmarks"]), info,
    )
