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
from ..geometry import Geometry
from ..segmentation import split_lungs
from ..io.images import Image


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


def ventilation_summary(jac_vent: np.ndarray, hu_vent: np.ndarray | None, lung_mask: Image) -> dict:
    """Per-lung (right, left, both) mean/std of both maps and volume change in ml."""
    labels = split_lungs(lung_mask)
    vox_ml = lung_mask.geometry.voxel_volume_ml
    out = {}
    for name, sel in (("right", labels == 1), ("left", labels == 2), ("both", labels > 0)):
        if not sel.any():
            continue
        jv = jac_vent[sel]
        entry = {
            "volume_ml": float(jv.size * vox_ml),
            "jacobian_minus_1_mean": float(jv.mean(dtype=np.float64)),
            "jacobian_minus_1_std": float(jv.std(dtype=np.float64)),
            "volume_change_ml": float(jv.sum(dtype=np.float64) * vox_ml),
        }
        del jv
        if hu_vent is not None:
            hv = hu_vent[sel]
            entry["specific_ventilation_mean"] = float(hv.mean(dtype=np.float64))
            entry["specific_ventilation_std"] = float(hv.std(dtype=np.float64))
        out[name] = entry
    return out
