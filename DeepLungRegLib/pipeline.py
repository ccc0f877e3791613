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
from .evaluation import hu_ventilation, jacobian_ventilation, lung_map_stats, summarise_ventilation
from .io.fields import write_field
from .io.images import Image, read_image, write_image
from .io.landmarks import read_landmarks
from .io.outputs import MANIFEST_FILE, MANIFEST_KEY, OutputFolder
from .methods import RegistrationResult, get_method, register
from .methods.base import check_image, mask_on_image
from .metrics import jacobian_determinant, jacobian_stats, tre, tre_summary
from .segmentation import lung_mask, split_lungs
from .transforms.warp import warp_image

log = logging.getLogger(__name__)

#: The image and data files ``register`` writes into its output folder.
OUTPUT_FILES = ("displacement.nii.gz", "warped.nii.gz", "jacobian.nii.gz", "ventilation.nii.gz", "ventilation_hu.nii.gz", "metrics.json", "report.html")
#: The report's figures (``tre.png`` only with landmarks).
REPORT_FIGURES = ("overlay.png", "checkerboard.png", "grid.png", "jacobian.png", "tre.png")
#: Every file a run may write: all of them count for the overwrite check.
ALL_OUTPUT_FILES = OUTPUT_FILES + REPORT_FIGURES
#: Which output file holds which in-memory output.
_IMAGE_FILES = {"warped": "warped.nii.gz", "jacobian": "jacobian.nii.gz", "ventilation": "ventilation.nii.gz",
                "ventilation_hu": "ventilation_hu.nii.gz"}


def looks_like_ct(image: Image) -> bool:
    """True when the image holds air in Hounsfield units (1st percentile below -500, on a subsample)."""
    a = image.array[::2, ::2, ::2]
    return float(np.percentile(a, 1)) < -500


def warped_dtype(moving: Image) -> np.dtype:
    """The warped image keeps an integer moving image's type (rounded and clipped); float images give float32."""
    dt = np.asarray(moving.array).dtype
    return dt if dt.kind in "iu" else np.dtype(np.float32)


def resolve_mask(spec: str | Image | None, image: Image, what: str) -> Image | None:
    """A mask from a file, ``"auto"`` (automatic lung mask) or ``None``/``"none"``, as bool on ``image``'s grid
    (a mask stored on another grid of the same scan is resampled onto it)."""
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
        mask = read_image(spec, what=f"{what} {spec}")
    # register() checks the coverage (and warns once)
    return mask_on_image(mask, image, f"{what} {spec}" if isinstance(spec, str) else what, check_coverage=False)


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


#: Landmarks further than this outside their image are reported (wrong units, frame or file).
LANDMARK_MARGIN_MM = 10.0


def landmarks_outside(points: np.ndarray, geometry, margin_mm: float = LANDMARK_MARGIN_MM) -> int:
    """How many points ``(N, 3)`` LPS mm lie more than ``margin_mm`` outside the grid's voxel centres."""
    ijk = geometry.world_to_index(np.asarray(points, float))
    m = margin_mm / np.asarray(geometry.spacing)
    inside = np.all((ijk >= -m) & (ijk <= np.asarray(geometry.size) - 1 + m), axis=1)
    return int((~inside).sum())


def _check_job(fixed: Image, moving: Image, method: str, fixed_landmarks, moving_landmarks) -> None:
    """Everything that can be checked before any work: the method, both images, the landmarks."""
    get_method(method)
    check_image(fixed, "fixed image")
    check_image(moving, "moving image")
    _check_landmarks(fixed_landmarks, moving_landmarks, fixed, moving)


def _check_landmarks(fixed_landmarks, moving_landmarks, fixed: Image | None = None, moving: Image | None = None) -> None:
    """Both sets or neither, of one length; warn about points far outside their image."""
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise DeepLungRegError("register: give both fixed and moving landmarks, or neither")
    if fixed_landmarks is None:
        return
    if np.shape(fixed_landmarks) != np.shape(moving_landmarks):
        raise DeepLungRegError(f"register: {len(fixed_landmarks)} fixed landmarks but {len(moving_landmarks)} moving landmarks")
    for points, image, what in ((fixed_landmarks, fixed, "fixed"), (moving_landmarks, moving, "moving")):
        if image is None:
            continue
        n = landmarks_outside(points, image.geometry)
        if n:
            log.warning("%d of %d %s landmarks lie more than %g mm outside the %s image; are they LPS millimetres of "
                        "this image (DIR-Lab voxel files need --spacing)?", n, len(points), what, LANDMARK_MARGIN_MM, what)


def _run_job(
    fixed: Image,
    moving: Image,
    emit: Callable[[str, object], None],
    *,
    method: str,
    fixed_mask,
    moving_mask,
    fixed_landmarks,
    moving_landmarks,
    config,
    device,
    progress,
    cancel,
    keep_field: bool,
) -> tuple[RegistrationResult, Image | None, Image | None, np.ndarray | None, np.ndarray | None, dict]:
    """Register and derive every output, handing each to ``emit(name, value)`` as soon as it exists.

    Outputs are produced one after the other and not kept here (``keep_field=False``
    also drops the field once nothing needs it), so a caller that writes each one
    and lets it go needs about the field plus two volumes of memory, not all of them.
    Names: ``"masks"`` (the fixed and moving mask used), ``"field"``, ``"warped"``,
    ``"ventilation_hu"``, ``"jacobian"``, ``"ventilation"``.
    """
    t0 = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    report("lung masks", 0.0)
    fm = resolve_mask(fixed_mask, fixed, "fixed mask")
    mm = resolve_mask(moving_mask, moving, "moving mask")
    emit("masks", (fm, mm))
    t_masks = time.perf_counter() - t0
    # the registration takes the progress bar to 90 %, the outputs the rest
    result = register(fixed, moving, method, fixed_mask=fm, moving_mask=mm, config=config, device=device,
                      progress=lambda stage, fraction: report(stage, 0.9 * fraction), cancel=cancel)
    t1 = time.perf_counter()
    g = fixed.geometry
    field = result.field
    lung = fm.array if fm is not None else None
    labels = split_lungs(fm) if fm is not None else None
    metrics: dict = {"method": method, "fixed_grid": g.to_dict()}
    emit("field", field)
    tb = ta = None
    if fixed_landmarks is not None:
        tb = tre(fixed_landmarks, moving_landmarks)
        ta = tre(fixed_landmarks, moving_landmarks, field, g)
        metrics["tre_before"] = tre_summary(tb).to_dict()
        metrics["tre_after"] = tre_summary(ta).to_dict()
        metrics["tre_per_landmark"] = [{"before": float(b), "after": float(a)} for b, a in zip(tb, ta)]
    # Each map is summarised as soon as it exists and then let go (the caller may keep what emit gets).
    report("warped image", 0.92)
    warped = warp_image(moving, field, g, fill=-1024.0 if looks_like_ct(moving) else 0.0, dtype=warped_dtype(moving))
    emit("warped", warped)
    hu_stats = None
    if lung is not None and looks_like_ct(fixed):
        hv = hu_ventilation(fixed.array, warped.array, lung)
        hu_stats = lung_map_stats(hv, labels)
        emit("ventilation_hu", Image(hv, g))
        del hv
    del warped
    report("Jacobian", 0.95)
    jac = jacobian_determinant(field, g)
    del field
    if not keep_field:
        result.field = None  # written by the caller; nothing here needs it any more
    metrics["jacobian"] = jacobian_stats(jac, lung) if lung is not None else jacobian_stats(jac)
    metrics["jacobian_whole_image"] = jacobian_stats(jac)
    emit("jacobian", Image(jac, g))
    if lung is not None:
        jv = jacobian_ventilation(jac, lung)
    else:
        jv = np.subtract(jac, np.float32(1.0), dtype=np.float32)
        log.warning("no fixed lung mask: the ventilation map is J - 1 over the whole image")
    del jac
    if labels is not None:
        metrics["ventilation"] = summarise_ventilation(lung_map_stats(jv, labels), hu_stats, g.voxel_volume_ml)
    emit("ventilation", Image(jv, g))
    del jv, labels
    metrics["timings_s"] = {**{k: round(v, 3) for k, v in result.timings.items()}, "masks": round(t_masks, 3),
                            "outputs": round(time.perf_counter() - t1, 3)}
    metrics["diagnostics"] = result.diagnostics
    metrics["config"] = result.config
    return result, fm, mm, tb, ta, metrics


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

    This is the job behind the Slicer module (which turns the outputs into MRML
    nodes); ``deeplungreg register`` runs the same job through
    :func:`run_registration`, which writes each output as it comes.
    Landmarks are ``(N, 3)`` LPS mm, row ``n`` of both sets the same point.
    """
    _check_job(fixed, moving, method, fixed_landmarks, moving_landmarks)
    kept: dict = {}
    result, fm, mm, tb, ta, metrics = _run_job(
        fixed, moving, kept.__setitem__, method=method, fixed_mask=fixed_mask, moving_mask=moving_mask,
        fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, config=config, device=device,
        progress=progress, cancel=cancel, keep_field=True)
    resampled = warp_image(moving, None, fixed.geometry, fill=-1024.0 if looks_like_ct(moving) else 0.0)
    if progress:
        progress("done", 1.0)
    return RegistrationOutputs(result, kept["warped"], resampled, kept["jacobian"], kept["ventilation"],
                               kept.get("ventilation_hu"), fm, mm, tb, ta, metrics)


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
    cancel: Callable[[], bool] | None = None,
    extra_metrics: dict | None = None,
) -> dict:
    """Register and write every output; returns the metrics dict (also in ``metrics.json``).

    The output folder is checked before the registration starts (it can be
    created and written; it holds none of the files a run writes, unless
    ``overwrite``). Files are staged beside it and appear together at the end;
    an error or an interrupt leaves the folder as it was. ``overwrite`` removes
    the earlier run's own files (those its ``metrics.json`` lists) and nothing else.
    Each output is written as soon as it is computed and then let go, so a
    512x512x600 CT registers in about 6 GB.
    """
    from .report import ReportSlices, write_report  # matplotlib only where a report is written

    _check_job(fixed, moving, method, fixed_landmarks, moving_landmarks)
    g = fixed.geometry
    with OutputFolder(outdir, ALL_OUTPUT_FILES, overwrite=overwrite, owner="register") as folder:
        state: dict = {}

        def emit(name: str, value) -> None:
            if name == "masks":
                fm = value[0]
                state["slices"] = sl = ReportSlices(g, fm.array if fm is not None else None)
                sl.add("fixed", fixed.array)
                if fm is not None:
                    sl.add("mask", fm.array)
                sl.add_moving("resampled", moving, -1024.0 if looks_like_ct(moving) else 0.0)
            elif name == "field":
                if progress:
                    progress("writing the field", 0.91)
                write_field(value, g, folder.path("displacement.nii.gz"))
                state["slices"].add("field", value)
            else:
                write_image(value, folder.path(_IMAGE_FILES[name]))
                state["slices"].add(name, value.array)
                if name == "jacobian":
                    j = value.array[::2, ::2, ::2]
                    state["slices"].extra["jacobian_range"] = (float(np.percentile(j, 1)), float(np.percentile(j, 99)))

        t1 = time.perf_counter()
        result, fm, mm, tb, ta, metrics = _run_job(
            fixed, moving, emit, method=method, fixed_mask=fixed_mask, moving_mask=moving_mask,
            fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, config=config, device=device,
            progress=progress, cancel=cancel, keep_field=False)
        metrics.update(extra_metrics or {})
        if progress:
            progress("report", 0.99)
        write_report(folder.staging, state["slices"], metrics, tb, ta, title=f"DeepLungReg: {method}")
        metrics["timings_s"]["outputs"] = round(time.perf_counter() - t1 - metrics["timings_s"]["total"]
                                                - metrics["timings_s"]["masks"], 3)
        metrics[MANIFEST_KEY] = sorted(folder.written() + [MANIFEST_FILE])
        folder.path("metrics.json").write_text(json.dumps(metrics, indent=2))
        folder.commit()
    if progress:
        progress("done", 1.0)
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
