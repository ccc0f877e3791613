"""A simulated 4D-CT: a breathing cycle of ``N`` phases made from one CT, with the ground truth of every phase.

The motion is that of :func:`~.breathing.simulate_breathing` (the CT is end-inhale; its field ``u``
carries the lung to end-exhale). Phase ``i`` of ``N`` (time ``t = i / N`` of the cycle) moves by a
share of ``u`` that follows Lujan's breathing curve (Lujan et al. 1999, Med. Phys. 26:715),

    ``e(t) = 1 - cos^(2n)(pi t)``  (0 at end-inhale, phase 0; 1 at end-exhale, phase N/2),

which dwells longer near exhale the larger ``n`` (default 3). Hysteresis: the antero-posterior and
lateral components of ``u`` run ahead of the cranio-caudal one by ``h * 4 e (1 - e)`` (``h`` in
[0, 0.25]): ahead during exhalation (``e`` growing) and behind during inhalation, so a point passes the
same cranio-caudal position on a different path in and out, a loop, while phase 0 stays the CT and
the end-exhale phase the full ``u``. Phase ``i``'s ground truth is

    ``u_i(x) = (e_ap(i) u_x, e_ap(i) u_y, e_cc(i) u_z)(x)``  on the reference (phase 0) grid, mm LPS,
    ``x_phase = x_ref + u_i(x_ref)``,

its image the reference CT with the lung density scaled by mass conservation (``(HU + 1000) / J_i - 1000``)
warped by the inverse of ``u_i`` (as in :func:`~.breathing.simulate_breathing`), plus noise; its lung
volume ``\\int_lung J_i`` (mL), its landmarks ``p + u_i(p)`` of the reference landmarks ``p``.

Phases are made one at a time when asked for (:meth:`SimulatedCycle.phase`), and :func:`write_cycle` writes
them one at a time: memory is the reference, its field and one phase.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.fields import write_field
from ..io.images import Image, write_image
from ..io.landmarks import write_landmarks
from ..io.outputs import RECORD_KEY, OutputFolder, check_output_path
from ..metrics.jacobian import jacobian_determinant
from ..transforms.fields import invert_field
from ..transforms.resample import resample_to_geometry
from ..transforms.warp import sample_field_at_points, warp_image
from .breathing import simulate_breathing

#: The largest hysteresis share: with it both mixed shares stay in [0, 1].
MAX_HYSTERESIS = 0.25
#: The files of a written cycle: ``cycle.json`` (the summary and per-phase ground-truth numbers) and the
#: ``volume_curve.csv`` at the top; one file per phase in each of the sub-folders.
CYCLE_FILE = "cycle.json"
VOLUME_FILE = "volume_curve.csv"
SUBFOLDERS = {"phases": ".nii.gz", "fields": ".nii.gz", "landmarks": ".csv"}
#: The record of the files of each sub-folder (what a later ``overwrite`` may replace).
RECORD_FILE = "record.json"


def breathing_curve(n_phases: int, *, lujan_n: int = 3) -> np.ndarray:
    """The exhale share per phase, ``1 - cos^(2n)(pi i / N)``, shape ``(N,)``: 0 at phase 0 (end-inhale), 1 at
    phase ``N/2`` (end-exhale)."""
    t = np.arange(n_phases) / n_phases
    return 1.0 - np.cos(np.pi * t) ** (2 * lujan_n)


def hysteresis_shares(n_phases: int, *, lujan_n: int = 3, hysteresis: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """``(e_cc, e_ap)`` per phase, shapes ``(N,)``: the cranio-caudal share follows :func:`breathing_curve`; the
    antero-posterior/lateral one runs ``h * 4 e (1 - e)`` ahead while exhaling (phases before ``N/2``) and as far behind
    while inhaling."""
    e = breathing_curve(n_phases, lujan_n=lujan_n)
    t = np.arange(n_phases) / n_phases
    exhaling = np.where(t < 0.5, 1.0, -1.0)
    return e, np.clip(e + hysteresis * 4.0 * e * (1.0 - e) * exhaling, 0.0, 1.0)


def phase_names(n_phases: int) -> list[str]:
    return [f"phase_{i:02d}" for i in range(n_phases)]


@dataclass
class CyclePhase:
    """One simulated phase. ``field``: ``(Z, Y, X, 3)`` mm LPS on the reference grid, ``x_phase = x_ref + u(x_ref)``;
    ``landmarks``: ``(N, 3)`` LPS mm, row ``n`` the reference landmark ``n`` at this phase."""

    index: int
    name: str
    image: Image
    field: np.ndarray
    landmarks: np.ndarray
    lung_volume_ml: float
    min_jacobian: float


@dataclass
class SimulatedCycle:
    """A simulated breathing cycle (see the module's description); phases are made when asked for.

    Attributes:
        reference: phase 0, the CT with noise (end-inhale).
        reference_mask: its lung mask.
        exhale_field: ``(Z, Y, X, 3)`` the full end-inhale to end-exhale motion on the reference grid (mm LPS).
        reference_landmarks: ``(N, 3)`` LPS mm in the reference lung.
        shares_cc, shares_ap: ``(P,)`` the cranio-caudal and the antero-posterior/lateral share of the motion per phase.
        info: the simulation's parameters and summary.
    """

    reference: Image
    reference_mask: Image
    exhale_field: np.ndarray
    reference_landmarks: np.ndarray
    shares_cc: np.ndarray
    shares_ap: np.ndarray
    info: dict = field(default_factory=dict)
    source_ct: np.ndarray | None = None  # the CT without noise (float32), what each phase is warped from

    @property
    def n_phases(self) -> int:
        return len(self.shares_cc)

    @property
    def names(self) -> list[str]:
        return phase_names(self.n_phases)

    def field(self, i: int) -> np.ndarray:
        """Phase ``i``'s ground-truth field ``(Z, Y, X, 3)`` relative to the reference (mm LPS, x, y, z components)."""
        scale = np.asarray([self.shares_ap[i], self.shares_ap[i], self.shares_cc[i]], dtype=np.float32)
        return self.exhale_field * scale

    def landmarks(self, i: int) -> np.ndarray:
        """The reference landmarks at phase ``i``, ``(N, 3)`` LPS mm."""
        p = self.reference_landmarks
        return p + sample_field_at_points(self.field(i), self.reference.geometry, p)

    def phase(self, i: int) -> CyclePhase:
        """Make phase ``i``: its image, field, landmarks and lung volume."""
        if not 0 <= i < self.n_phases:
            raise DeepLungRegError(f"simulate_cycle: phase {i} does not exist; the cycle has phases 0 to {self.n_phases - 1}")
        g = self.reference.geometry
        u = self.field(i)
        jac = jacobian_determinant(u, g)
        lung = np.asarray(self.reference_mask.array, dtype=bool)
        volume = float(jac[lung].sum() * g.voxel_volume_ml)
        min_j = float(jac.min())
        if min_j <= 0:
            raise DeepLungRegError(f"simulate_cycle: phase {i}'s field folds (min Jacobian {min_j:.3f}); lower the hysteresis")
        if i == 0 or not np.any(u):
            image = self.reference
        else:
            work = g.with_spacing(tuple(max(s, float(self.info["working_spacing_mm"])) for s in g.spacing))
            u_work = np.stack([resample_to_geometry(Image(u[..., c], g), work, mode="linear", fill=None).array for c in range(3)], -1)
            inv_work, _ = invert_field(u_work.astype(np.float32), work, iterations=100, tolerance_mm=1e-3)
            del u_work
            inv = np.stack([resample_to_geometry(Image(inv_work[..., c], work), g, mode="linear").array for c in range(3)], -1)
            src = self.source_ct
            dens = np.where(lung, np.clip((src + 1000.0) / np.clip(jac, 0.2, None) - 1000.0, -1024.0, 3071.0), src)
            warped = warp_image(self.reference.with_array(dens), inv, g, fill=None).array
            del dens, inv
            noise = float(self.info["noise_hu"])
            if noise:
                rng = np.random.default_rng([int(self.info["seed"]), i])  # each phase its own noise, reproducibly
                warped = warped + rng.normal(0.0, noise, warped.shape).astype(np.float32)
            image = self.reference.with_array(np.clip(np.round(warped), -1024, 3071).astype(np.int16))
        return CyclePhase(i, self.names[i], image, u, self.landmarks(i), volume, min_j)


def simulate_cycle(
    ct: Image,
    *,
    n_phases: int = 10,
    amplitude: str | float = "small",
    seed: int = 0,
    lujan_n: int = 3,
    hysteresis: float = 0.15,
    noise_hu: float = 20.0,
    n_landmarks: int = 300,
    working_spacing_mm: float = 4.0,
    progress: Callable[[str, float], None] | None = None,
) -> SimulatedCycle:
    """Simulate a breathing cycle of ``n_phases`` from ``ct`` (end-inhale, phase 0).

    Args:
        ct: the CT in HU.
        n_phases: phases of the cycle (even, at least 2; the end-exhale phase is ``n_phases / 2``).
        amplitude, seed, noise_hu, n_landmarks, working_spacing_mm: the end-exhale motion's, as for
            :func:`~.breathing.simulate_breathing` (the same seed gives the same cycle).
        lujan_n: the exponent ``n`` of Lujan's ``cos^(2n)`` curve (1 to 6).
        hysteresis: ``h`` in [0, 0.25], how far the antero-posterior/lateral motion runs ahead (0: none).
    """
    if isinstance(n_phases, bool) or not isinstance(n_phases, (int, np.integer)) or n_phases < 2 or n_phases % 2:
        raise DeepLungRegError(f"simulate_cycle: n_phases must be an even whole number >= 2 (end-exhale at the half), got {n_phases!r}")
    if not (isinstance(lujan_n, (int, np.integer)) and 1 <= lujan_n <= 6):
        raise DeepLungRegError(f"simulate_cycle: lujan_n must be a whole number from 1 to 6, got {lujan_n!r}")
    if not (np.isfinite(hysteresis) and 0.0 <= hysteresis <= MAX_HYSTERESIS):
        raise DeepLungRegError(f"simulate_cycle: hysteresis must lie in [0, {MAX_HYSTERESIS}], got {hysteresis}")
    pair = simulate_breathing(ct, amplitude=amplitude, seed=seed, noise_hu=noise_hu, n_landmarks=n_landmarks,
                              working_spacing_mm=working_spacing_mm, progress=progress)
    e_cc, e_ap = hysteresis_shares(n_phases, lujan_n=lujan_n, hysteresis=hysteresis)
    info = {**pair.info, "n_phases": int(n_phases), "lujan_n": int(lujan_n), "hysteresis": float(hysteresis),
            "working_spacing_mm": float(working_spacing_mm), "reference_phase": 0, "exhale_phase": int(n_phases // 2),
            "shares_cc": np.round(e_cc, 6).tolist(), "shares_ap": np.round(e_ap, 6).tolist()}
    return SimulatedCycle(pair.fixed, pair.fixed_mask, pair.field, pair.fixed_landmarks, e_cc, e_ap, info,
                          np.asarray(ct.array, dtype=np.float32))


def check_cycle_outdir(outdir: str | os.PathLike) -> Path:
    return check_output_path(outdir, "simulate_cycle")


def write_cycle(cycle: SimulatedCycle, outdir: str | os.PathLike, *, overwrite: bool = False, inputs=(),
                progress: Callable[[str, float], None] | None = None) -> Path:
    """Write the cycle, one phase at a time: ``phases/phase_XX.nii.gz`` (the images), ``fields/phase_XX.nii.gz``
    (ground truth relative to phase 0, on its grid), ``landmarks/phase_XX.csv``, ``volume_curve.csv`` (lung mL per
    phase) and ``cycle.json`` (summary; written last). Each folder is checked before any work and its files appear
    together at the end (:class:`~DeepLungRegLib.io.outputs.OutputFolder`); ``overwrite`` replaces only an earlier
    cycle's files that are unchanged (each sub-folder's ``record.json``, ``cycle.json``)."""
    out = check_cycle_outdir(outdir)
    names = cycle.names
    report = progress or (lambda stage, fraction: None)
    with contextlib.ExitStack() as stack:
        top = stack.enter_context(OutputFolder(out, (CYCLE_FILE, VOLUME_FILE), overwrite=overwrite, owner="simulate_cycle",
                                               inputs=inputs, record_file=CYCLE_FILE))
        subs = {sub: stack.enter_context(OutputFolder(out / sub, [*(n + ext for n in names), RECORD_FILE], overwrite=overwrite,
                                                      owner="simulate_cycle", inputs=inputs, record_file=RECORD_FILE))
                for sub, ext in SUBFOLDERS.items()}
        phases = []
        for i, name in enumerate(names):
            report(f"phase {i + 1}/{len(names)}", i / len(names))
            ph = cycle.phase(i)
            write_image(ph.image, subs["phases"].path(name + SUBFOLDERS["phases"]))
            write_field(ph.field, cycle.reference.geometry, subs["fields"].path(name + SUBFOLDERS["fields"]))
            write_landmarks(ph.landmarks, subs["landmarks"].path(name + SUBFOLDERS["landmarks"]))
            lung = np.asarray(cycle.reference_mask.array, dtype=bool)
            phases.append({"index": i, "name": name, "share_cc": float(cycle.shares_cc[i]), "share_ap": float(cycle.shares_ap[i]),
                           "lung_volume_ml": round(ph.lung_volume_ml, 3), "min_jacobian": round(ph.min_jacobian, 4),
                           "mean_lung_displacement_mm": round(float(np.linalg.norm(ph.field[lung], axis=-1).mean()), 4)})
            del ph
        for folder in subs.values():
            folder.path(RECORD_FILE).write_text(json.dumps({RECORD_KEY: folder.records()}, indent=2))
        volumes = [p["lung_volume_ml"] for p in phases]
        with open(top.path(VOLUME_FILE), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "name", "lung_volume_ml"])
            w.writerows([p["index"], p["name"], p["lung_volume_ml"]] for p in phases)
        info = {**cycle.info, "phases": phases, "tidal_volume_ml": round(max(volumes) - min(volumes), 3),
                "field_convention": "fields/phase_XX: x_phase = x_ref + u(x_ref), mm LPS, on the phase-0 grid",
                "sources": [str(i) for i in inputs]}
        info[RECORD_KEY] = top.records()
        top.path(CYCLE_FILE).write_text(json.dumps(info, indent=2))
        for folder in subs.values():
            folder.commit()
        top.commit()
    report("done", 1.0)
    return out
