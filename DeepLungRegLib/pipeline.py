"""The full registration job behind ``deeplungreg register`` and ``demo``:
read inputs, find lung masks, register, write the field, the warped image,
Jacobian and ventilation maps, metrics and the HTML report."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DeepLungRegError
from .evaluation import field_quality, hu_ventilation, jacobian_ventilation, ventilation_summary
from .io.fields import write_field
from .io.images import Image, read_image, write_image
from .io.landmarks import read_landmarks
from .methods import RegistrationResult, get_method, register
from .metrics import jacobian_stats, tre, tre_summary
from .segmentation import lung_mask
from .transforms.warp import warp_image

log = logging.getLogger(__name__)

#: The files ``register`` writes into its output folder.
OUTPUT_FILES = ("displacement.nii.gz", "warped.nii.gz", "jacobian.nii.gz", "ventilation.nii.gz", "ventilation_hu.nii.gz", "metrics.json", "report.html")


def check_outdir(outdir: Path, overwrite: bool) -> None:
    """Refuse to overwrite earlier outputs unless asked to."""
    clash = [n for n in OUTPUT_FILES if (outdir / n).exists()]
    if clash and not overwrite:
        raise DeepLungRegError(f"register: {outdir} already holds results ({clash[0]}, ...); choose another folder or pass --overwrite")


def resolve_mask(spec: str | Image | None, image: Image, what: str) -> Image | None:
    """A mask from a file, ``"auto"`` (automatic lung mask) or ``None``/``"none"``."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, Image):
        mask = spec
    elif spec == "auto":
        try:
            return lung_mask(image)
        except DeepLungRegError as exc:
            log.warning("automatic %s failed (%s); registering without it", what, exc)
            return None
    else:
        mask = read_image(spec, what=what)
    if not mask.geometry.same_as(image.geometry, tol=1e-3):
        raise DeepLungRegError(f"register: {what} {spec} does not lie on its image's grid")
    return mask.with_array(mask.array > 0)


@dataclass
class RegistrationOutputs:
    """Everything a registration produces, in memory (all on the fixed grid).

    Attributes:
        result: the method's :class:`~DeepLungRegLib.methods.RegistrationResult`
            (``result.field`` is ``(Z, Y, X, 3)`` mm LPS, resampling direction).
        warped: the moving image warped onto the fixed grid.
        resampled: the moving image resampled onto the fixed grid without the field.
        jacobian: ``(Z, Y, X)`` Jacobian determinant of ``x -> x + u(x)``.
        ventilation: ``J - 1`` in the fixed lung mask (over the whole image without one).
        ventilation_hu: HU-based specific ventilation (CT with a lung mask only).
        fixed_mask, moving_mask: the masks used (``None`` when none).
        tre_before, tre_after: per-landmark TRE in mm (``None`` without landmarks).
        metrics: the JSON-ready summary written to ``metrics.json``.
    """

    result: RegistrationResult
    warped: Image
    resampled: Image
    jacobian: Image
    ventilation: Image
    ventilation_hu: Image | None
    fixed_mask: Image | None
    moving_mask: Image | None
    tre_before: np.ndarray | None
    tre_after: np.ndarray | None
    metrics: dict


def compute_outputs(
    fixed: Image,
    moving: Image,
    *,
    method: str = "adam",
    fixed_mask: Image | str | None = "auto",
    moving_mask: Image | str | None = "auto",
    fixed_landmarks: np.ndarray | None = None,
    moving_landmarks: np.ndarray | None = None,
    config: dict | None = None,
    device: str = "auto",
    progress: Callable[[str, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RegistrationOutputs:
    """Register ``moving`` to ``fixed`` and derive every output in memory.

    This is the job behind both ``deeplungreg register`` (which then writes the
    files) and the Slicer module (which turns the outputs into MRML nodes).
    Landmarks are ``(N, 3)`` LPS mm, row ``n`` of both sets the same point.
    """
    get_method(method)  # fail early on an unknown method
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise DeepLungRegError("register: give both fixed and moving landmarks, or neither")
    if fixed_landmarks is not None and np.shape(fixed_landmarks) != np.shape(moving_landmarks):
        raise DeepLungRegError(f"register: {len(fixed_landmarks)} fixed landmarks but {len(moving_landmarks)} moving landmarks")
    t0 = time.perf_counter()
    fm = resolve_mask(fixed_mask, fixed, "fixed mask")
    mm = resolve_mask(moving_mask, moving, "moving mask")
    t_masks = time.perf_counter() - t0
    result = register(fixed, moving, method, fixed_mask=fm, moving_mask=mm, config=config, device=device,
                      progress=progress, cancel=cancel)
    t1 = time.perf_counter()
    g = fixed.geometry
    is_ct = float(np.percentile(moving.array, 1)) < -500
    fill = -1024.0 if is_ct else 0.0
    moving32 = moving.with_array(moving.array.astype(np.float32))
    warped = warp_image(moving32, result.field, g, fill=fill)
    resampled = warp_image(moving32, None, g, fill=fill)
    lung = fm.array if fm is not None else None
    jac, jstats = field_quality(result.field, g, lung)
    metrics: dict = {"method": method, "fixed_grid": g.to_dict(), "jacobian": jstats, "jacobian_whole_image": jacobian_stats(jac)}
    hv = None
    if lung is not None:
        jv = jacobian_ventilation(jac, lung)
        hv = hu_ventilation(fixed.array, warped.array, lung) if is_ct else None
        metrics["ventilation"] = ventilation_summary(jv, hv, fm)
    else:
        jv = (jac - 1.0).astype(np.float32)
        log.warning("no fixed lung mask: the ventilation map is J - 1 over the whole image")
    tb = ta = None
    if fixed_landmarks is not None:
        tb = tre(fixed_landmarks, moving_landmarks)
        ta = tre(fixed_landmarks, moving_landmarks, result.field, g)
        metrics["tre_before"] = tre_summary(tb).to_dict()
        metrics["tre_after"] = tre_summary(ta).to_dict()
        metrics["tre_per_landmark"] = [{"before": float(b), "after": float(a)} for b, a in zip(tb, ta)]
    metrics["timings_s"] = {**{k: round(v, 3) for k, v in result.timings.items()}, "masks": round(t_masks, 3),
                            "outputs": round(time.perf_counter() - t1, 3)}
    metrics["diagnostics"] = result.diagnostics
    metrics["config"] = result.config
    return RegistrationOutputs(result, warped, resampled, Image(jac, g), Image(jv, g), None if hv is None else Image(hv, g),
                              fm, mm, tb, ta, metrics)


def run_registration(
    fixed: Image,
    moving: Image,
    outdir: str | Path,
    *,
    method: str = "adam",
    fixed_mask: Image | str | None = "auto",
    moving_mask: Image | str | None = "auto",
    fixed_landmarks: np.ndarray | None = None,
    moving_landmarks: np.ndarray | None = None,
    config: dict | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: Callable[[str, float], None] | None = None,
    extra_metrics: dict | None = None,
) -> dict:
    """Register and write every output; returns the metrics dict (also in ``metrics.json``)."""
    from .report import write_report  # matplotlib only where a report is written

    outdir = Path(outdir)
    get_method(method)
    check_outdir(outdir, overwrite)
    out = compute_outputs(fixed, moving, method=method, fixed_mask=fixed_mask, moving_mask=moving_mask,
                          fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, config=config,
                          device=device, progress=progress)
    t1 = time.perf_counter()
    g = fixed.geometry
    outdir.mkdir(parents=True, exist_ok=True)
    write_field(out.result.field, g, outdir / "displacement.nii.gz")
    out_dtype = moving.array.dtype if moving.array.dtype.kind in "iu" else np.float32
    warped = out.warped
    write_image(warped.with_array(np.round(warped.array).astype(out_dtype) if out_dtype.kind in "iu" else warped.array), outdir / "warped.nii.gz")
    write_image(out.jacobian, outdir / "jacobian.nii.gz")
    write_image(out.ventilation, outdir / "ventilation.nii.gz")
    if out.ventilation_hu is not None:
        write_image(out.ventilation_hu, outdir / "ventilation_hu.nii.gz")
    metrics = out.metrics
    metrics.update(extra_metrics or {})
    if progress:
        progress("report", 0.99)
    lung = out.fixed_mask.array if out.fixed_mask is not None else None
    write_report(outdir, fixed.array, out.resampled.array, warped.array, out.result.field, out.jacobian.array, g, metrics,
                 lung, out.tre_before, out.tre_after, title=f"DeepLungReg: {method}")
    metrics["timings_s"]["outputs"] = round(metrics["timings_s"]["outputs"] + time.perf_counter() - t1, 3)
    (outdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def load_landmark_pair(fixed_path: str | None, moving_path: str | None, spacing=None, fixed: Image | None = None, moving: Image | None = None):
    """Read the fixed/moving landmark files (both or neither)."""
    if fixed_path is None and moving_path is None:
        return None, None
    if fixed_path is None or moving_path is None:
        raise DeepLungRegError("register: give both --fixed-landmarks and --moving-landmarks, or neither")
    fp = read_landmarks(fixed_path, spacing=spacing, geometry=fixed.geometry if fixed else None)
    mp = read_landmarks(moving_path, spacing=spacing, geometry=moving.geometry if moving else None)
    if fp.shape != mp.shape:
        raise DeepLungRegError(f"register: {fixed_path} has {len(fp)} landmarks but {moving_path} has {len(mp)}")
    return fp, mp
