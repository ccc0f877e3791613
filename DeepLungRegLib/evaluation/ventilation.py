"""Ventilation from inhale (fixed) to exhale (moving) registration.

* Jacobian-based: ``J - 1`` of the fixed-to-moving map inside the lung. With
  the inhale image as fixed, ``J = V_exhale / V_inhale``, so values are
  negative where tissue deflates on exhalation.
* HU-based specific ventilation (density change):
  ``SV = 1000 (HU_in - HU_ex) / (HU_ex (1000 + HU_in))`` with ``HU_ex`` the
  warped exhale image, i.e. ``(V_in - V_ex) / V_ex`` estimated from the
  air fraction.
"""

from __future__ import annotations

import numpy as np

from ..errors import DeepLungRegError

from ..segmentation import split_lungs
from ..io.images import Image
from ..metrics.moments import RunningMoments


def jacobian_ventilation(jac: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """``J - 1`` inside ``lung`` and 0 outside, shape ``(Z, Y, X)`` float32."""
    jac, lung = np.asarray(jac), np.asarray(lung, dtype=bool)
    if jac.shape != lung.shape:
        raise DeepLungRegError(f"jacobian_ventilation: Jacobian {jac.shape} and lung mask {lung.shape} differ in shape")
    out = np.zeros(jac.shape, np.float32)
    np.subtract(jac, np.float32(1.0), out=out, where=lung, dtype=np.float32)
    return out


def hu_ventilation(inhale_hu: np.ndarray, warped_exhale_hu: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """HU-based specific ventilation inside ``lung`` (0 outside), shape ``(Z, Y, X)`` float32.

    HU values are clipped to [-1000, -1] so the air fractions stay defined.
    Computed a slice at a time (float64 inside a slice).
    """
    a, b, m = np.asarray(inhale_hu), np.asarray(warped_exhale_hu), np.asarray(lung, bool)
    if not (a.shape == b.shape == m.shape):
        raise DeepLungRegError(f"hu_ventilation: shapes differ: {a.shape}, {b.shape}, {m.shape}")
    out = np.zeros(a.shape, np.float32)
    for k in range(a.shape[0]):
        if not m[k].any():
            continue
        hin = np.clip(a[k].astype(float), -999.0, -1.0)
        hex_ = np.clip(b[k].astype(float), -999.0, -1.0)
        sv = 1000.0 * (hin - hex_) / (hex_ * (1000.0 + hin))
        out[k] = np.where(m[k], np.clip(sv, -5.0, 5.0), 0.0)
    return out


#: The lung labels of :func:`~DeepLungRegLib.segmentation.split_lungs` and the summary's names for them.
LUNGS = (("right", (1,)), ("left", (2,)), ("both", (1, 2)))


def lung_map_stats(values: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Voxel count, sum, mean and SD of a map inside the right, left and both lungs (``labels`` 1, 2).

    A slice at a time, so that a caller can summarise each full-resolution map
    as soon as it exists and then let it go.
    """
    acc = {name: RunningMoments() for name, _ in LUNGS}
    for k in range(labels.shape[0]):
        lk, vk = labels[k], values[k]
        for name, ids in LUNGS:
            sel = (lk == ids[0]) if len(ids) == 1 else (lk > 0)
            if sel.any():
                acc[name].add(vk[sel])
    return {name: {"n": a.n, "sum": a.sum, "mean": a.mean, "std": a.std} for name, a in acc.items() if a.n}


def summarise_ventilation(jac_stats: dict, hu_stats: dict | None, voxel_ml: float) -> dict:
    """The per-lung summary of :func:`ventilation_summary` from :func:`lung_map_stats` of both maps."""
    out = {}
    for name, _ in LUNGS:
        if name not in jac_stats:
            continue
        j = jac_stats[name]
        entry = {"volume_ml": float(j["n"] * voxel_ml), "jacobian_minus_1_mean": j["mean"], "jacobian_minus_1_std": j["std"],
                 "volume_change_ml": float(j["sum"] * voxel_ml)}
        if hu_stats is not None and name in hu_stats:
            entry["specific_ventilation_mean"] = hu_stats[name]["mean"]
            entry["specific_ventilation_std"] = hu_stats[name]["std"]
        out[name] = entry
    return out


def ventilation_summary(jac_vent: np.ndarray, hu_vent: np.ndarray | None, lung_mask: Image) -> dict:
    """Per-lung (right, left, both) mean/std of both maps and volume change in ml."""
    labels = split_lungs(lung_mask)
    return summarise_ventilation(lung_map_stats(jac_vent, labels), None if hu_vent is None else lung_map_stats(hu_vent, labels),
                                 lung_mask.geometry.voxel_volume_ml)
