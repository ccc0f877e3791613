"""The full registration job behind ``deeplungreg register`` and ``demo``:
read inputs, find lung masks, register, write the field, the warped image,
Jacobian and ventilation maps, metrics and the HTML report."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .device import resolve_device, resolve_dtype
from .errors import DeepLungRegError
from .evaluation import hu_ventilation, jacobian_ventilation, lung_map_stats, summarise_ventilation
from .evaluation.uncertainty import uncertainty_summary
from .io.fields import write_field
from .io.images import Image, looks_like_ct, read_image, write_image
from .io.landmarks import check_pairing, read_landmarks, write_landmarks
from .io.outputs import MANIFEST_FILE, MANIFEST_KEY, RECORD_KEY, OutputFolder
from .io.roles import ROLES, image_files
from .memory import release_memory
from .io.runs import JOB_KEY, METRICS_FILE, RunFolder, write_metrics
from .methods import MethodConfig, RegistrationResult, check_pair, get_method, register
from .methods.base import check_images
from .metrics import jacobian_determinant, jacobian_stats, tre, tre_summary
from .options import DEFAULT_METHOD
from .segmentation import lung_mask, split_lungs
from .transforms.warp import sample_field_at_points, warp_image

log = logging.getLogger(__name__)


#: The image outputs (the names ``_run_job`` emits and :class:`RegistrationOutputs` holds) and their files, from
#: the table of output roles (:mod:`.io.roles`): a new image output is a row there, its computation in
#: ``_run_job`` and its field in ``RegistrationOutputs``.
IMAGE_OUTPUTS = image_files()
#: The image and data files ``register`` writes into its output folder.
OUTPUT_FILES = (ROLES["transform"].file, *IMAGE_OUTPUTS.values(), METRICS_FILE, "report.html")
#: The report's figures (``tre.png`` only with landmarks, ``uncertainty.png`` only with an uncertainty map).
REPORT_FIGURES = ("overlay.png", "checkerboard.png", "grid.png", "jacobian.png", "uncertainty.png", "tre.png")
#: Every file a run may write: all of them count for the overwrite check.
ALL_OUTPUT_FILES = OUTPUT_FILES + REPORT_FIGURES


def warped_dtype(moving: Image) -> np.dtype:
    """The warped image keeps an integer moving image's type (rounded and clipped); float images give float32."""
    dt = np.asarray(moving.array).dtype
    return dt if dt.kind in "iu" else np.dtype(np.float32)


def resolve_mask(spec: str | Image | None, image: Image, what: str) -> Image | None:
    """A mask from a file, ``"auto"`` (automatic lung mask, on ``image``'s grid) or ``None``/``"none"``
    (:func:`~DeepLungRegLib.methods.check_pair` then puts a given mask onto its image's grid, once)."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, Image):
        return spec
    if spec == "auto":
        try:
            return lung_mask(image)
        except DeepLungRegError as exc:
            log.warning("automatic %s failed (%s); registering without it", what, exc)
            return None
    return read_image(spec, what=f"{what} {spec}")


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
        uncertainty: the method's uncertainty in mm (only a method asked for one, e.g. ``convex`` with ``uncertainty``).
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
    uncertainty: Image | None
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


def _check_landmarks(fixed_landmarks, moving_landmarks, fixed: Image | None = None, moving: Image | None = None) -> None:
    """Both sets or neither, of one length; warn about points far outside their image."""
    if not check_pairing(fixed_landmarks, moving_landmarks):
        return
    for points, image, what in ((fixed_landmarks, fixed, "fixed"), (moving_landmarks, moving, "moving")):
        if image is None:
            continue
        n = landmarks_outside(points, image.geometry)
        if n:
            log.warning("%d of %d %s landmarks lie more than %g mm outside the %s image; are they LPS millimetres of "
                        "this image (DIR-Lab voxel files need --spacing)?", n, len(points), what, LANDMARK_MARGIN_MM, what)


#: The fields of a job's JSON form (:meth:`RegistrationJob.to_json`) and what each holds.
JOB_FIELDS = {"fixed": "a file path (text)", "moving": "a file path (text)", "method": "a method's name (text)",
              "options": "an object of the method's options", "device": "text: auto, cpu or cuda",
              "fixed_mask": "auto, none or a file path", "moving_mask": "auto, none or a file path",
              "fixed_landmarks": "a file path or null", "moving_landmarks": "a file path or null",
              "landmark_labels": "a list of names or null", "landmark_spacing": "3 numbers (mm) or null"}
_JOB_TYPES = {"options": dict, "landmark_labels": list, "landmark_spacing": list}


@dataclass
class RegistrationJob:
    """One registration, checked once when it is made: the method and its options, both images
    (:func:`~DeepLungRegLib.methods.base.check_images`) and the landmarks (both sets or neither, one
    length; points far outside their image are reported). Build it from files (:meth:`from_files`,
    the CLI), from its JSON form (:meth:`from_json`: the worker's request, a cohort row, ``metrics.json``),
    from MRML nodes (:func:`DeepLungRegLib.slicer_bridge.job_from_nodes`) or from images, then
    compute it in memory (:func:`compute_outputs`) or into an output folder (:func:`run_registration`);
    :meth:`to_json` and :meth:`save` give its JSON form.

    Attributes:
        fixed, moving: the images.
        method: a registered method.
        fixed_mask, moving_mask: a mask image (any grid of the same scan), ``"auto"`` (automatic
            lung mask), a mask file, or ``None``/``"none"``.
        fixed_landmarks, moving_landmarks: ``(N, 3)`` LPS mm, row ``n`` of both the same point, or ``None``.
        landmark_labels: a name per landmark (``None``: ``P-1``, ``P-2``, ...).
        config: the method's options: a dict becomes the method's typed config.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        sources: the files the images and landmarks were read from (``fixed``, ``moving``,
            ``fixed_landmarks``, ``moving_landmarks``, ``landmark_spacing``), or ``None`` for a job made in memory.
        check: (init only) ``False`` skips the checks, for a job that was checked where it was made (the
            Slicer module's worker reads the module's own copies of a job checked in Slicer).
    """

    fixed: Image
    moving: Image
    method: str = DEFAULT_METHOD
    fixed_mask: Image | str | None = "auto"
    moving_mask: Image | str | None = "auto"
    fixed_landmarks: np.ndarray | None = None
    moving_landmarks: np.ndarray | None = None
    landmark_labels: list[str] | None = None
    config: MethodConfig | dict | None = None
    device: str = "auto"
    sources: dict | None = None
    check: InitVar[bool] = True

    def __post_init__(self, check: bool = True) -> None:
        self.config = get_method(self.method).make_config(self.config)
        if self.fixed_landmarks is not None:
            n = len(self.fixed_landmarks)
            self.landmark_labels = [lab or f"P-{i + 1}" for i, lab in enumerate(list(self.landmark_labels or [""] * n))]
        if not check:
            return
        resolve_dtype(self.config.precision, resolve_device(self.device))  # a device this machine lacks: now, not after the masks
        check_images(self.fixed, self.moving)
        _check_landmarks(self.fixed_landmarks, self.moving_landmarks, self.fixed, self.moving)
        if self.fixed_landmarks is not None and len(self.landmark_labels) != len(self.fixed_landmarks):
            raise DeepLungRegError(f"register: {len(self.landmark_labels)} landmark labels for {len(self.fixed_landmarks)} landmarks")

    @classmethod
    def from_files(cls, fixed: str | Path, moving: str | Path, *, method: str = DEFAULT_METHOD, fixed_mask: str | None = "auto",
                   moving_mask: str | None = "auto", fixed_landmarks: str | None = None, moving_landmarks: str | None = None,
                   spacing=None, options: dict | None = None, device: str = "auto", landmark_labels: list[str] | None = None,
                   check: bool = True) -> "RegistrationJob":
        """The job of ``deeplungreg register``: images, masks and landmark files by path
        (``spacing``: the voxel spacing of DIR-Lab landmark files)."""
        fixed_img = read_image(fixed, what=f"fixed image {fixed}")
        moving_img = read_image(moving, what=f"moving image {moving}")
        fl = None if fixed_landmarks is None else read_landmarks(fixed_landmarks, spacing=spacing, geometry=fixed_img.geometry)
        ml = None if moving_landmarks is None else read_landmarks(moving_landmarks, spacing=spacing, geometry=moving_img.geometry)
        sources = {"fixed": fixed, "moving": moving, "fixed_landmarks": fixed_landmarks, "moving_landmarks": moving_landmarks}
        sources = {k: str(Path(v).resolve()) for k, v in sources.items() if v is not None}
        if spacing is not None:
            sources["landmark_spacing"] = [float(v) for v in np.broadcast_to(np.asarray(spacing, float), (3,))]
        masks = [m if not isinstance(m, Path) else str(m) for m in (fixed_mask, moving_mask)]
        return cls(fixed_img, moving_img, method, masks[0], masks[1], fl, ml, landmark_labels, options, device, sources, check)

    def to_json(self, *, require_files: bool = True) -> dict:
        """The job's JSON form (the fields of :data:`JOB_FIELDS`): its files by path, the method, its options
        and the device. An image, mask or landmark set held only in memory has no path: it is an error
        (use :meth:`save`), or ``null`` with ``require_files=False`` (what ``metrics.json`` records)."""
        src = self.sources or {}
        out: dict = {"fixed": src.get("fixed"), "moving": src.get("moving"), "method": self.method,
                     "options": json.loads(json.dumps(self.config.to_dict())), "device": self.device}  # tuples as lists
        for key, mask in (("fixed_mask", self.fixed_mask), ("moving_mask", self.moving_mask)):
            out[key] = "none" if mask is None else str(mask) if isinstance(mask, (str, Path)) else src.get(key)
        has_landmarks = self.fixed_landmarks is not None
        out["fixed_landmarks"] = src.get("fixed_landmarks") if has_landmarks else None
        out["moving_landmarks"] = src.get("moving_landmarks") if has_landmarks else None
        out["landmark_labels"] = list(self.landmark_labels) if has_landmarks else None
        out["landmark_spacing"] = src.get("landmark_spacing") if has_landmarks else None
        missing = [k for k in ("fixed", "moving", "fixed_mask", "moving_mask") if out[k] is None] + \
                  ([k for k in ("fixed_landmarks", "moving_landmarks") if out[k] is None] if has_landmarks else [])
        if missing and require_files:
            raise DeepLungRegError(f"register: the job's {', '.join(missing)} exist only in memory; save() writes them as files")
        return out

    def save(self, folder: str | Path) -> dict:
        """Write what the job holds only in memory (images, mask images, landmarks) into ``folder`` (which must
        exist) and return the job's JSON form with those files (:meth:`from_json` reads it back)."""
        folder = Path(folder)
        src = dict(self.sources or {})
        for key, image in (("fixed", self.fixed), ("moving", self.moving)):
            if key not in src:
                src[key] = str(write_image(image, folder / f"{key}.nrrd"))
        for key, mask in (("fixed_mask", self.fixed_mask), ("moving_mask", self.moving_mask)):
            if isinstance(mask, Image) and key not in src:
                src[key] = str(write_image(mask.with_array(np.asarray(mask.array > 0, dtype=np.uint8)), folder / f"{key}.nrrd"))
        if self.fixed_landmarks is not None:
            for key, points in (("fixed_landmarks", self.fixed_landmarks), ("moving_landmarks", self.moving_landmarks)):
                if key not in src:
                    src[key] = str(write_landmarks(points, folder / f"{key}.csv"))
                    src.pop("landmark_spacing", None)  # written in LPS mm
        return dataclasses.replace(self, sources=src, check=False).to_json()

    @classmethod
    def from_json(cls, data: dict, *, base: str | Path | None = None, what: str = "job", check: bool = True) -> "RegistrationJob":
        """A job from its JSON form (:meth:`to_json`): every field checked for its type first (one line that
        names it), relative paths taken from ``base``, then the files read and the job checked (``check=False``:
        not checked again, for a job checked where it was written)."""
        check_job_json(data, what)
        root = Path(base) if base is not None else None

        def path(value):
            if value is None or value in ("auto", "none"):
                return value
            p = Path(value).expanduser()
            return str(root / p if root is not None and not p.is_absolute() else p)

        return cls.from_files(
            path(data["fixed"]), path(data["moving"]), method=data.get("method") or DEFAULT_METHOD,
            fixed_mask=path(data.get("fixed_mask") or "auto"), moving_mask=path(data.get("moving_mask") or "auto"),
            fixed_landmarks=path(data.get("fixed_landmarks")), moving_landmarks=path(data.get("moving_landmarks")),
            spacing=data.get("landmark_spacing"), options=data.get("options") or {}, device=data.get("device") or "auto",
            landmark_labels=data.get("landmark_labels"), check=check)


def check_job_json(data, what: str = "job") -> None:
    """Refuse, in one line that names the field, a job's JSON form that is not an object, lacks an image,
    holds an unknown field or a field of the wrong type (before any file is read)."""
    if not isinstance(data, dict):
        raise DeepLungRegError(f"{what}: a job is a JSON object ({{...}}), got {json.dumps(data)[:40]}")
    unknown = sorted(set(data) - set(JOB_FIELDS))
    if unknown:
        raise DeepLungRegError(f"{what}: unknown field(s) {', '.join(map(repr, unknown))}; a job has {', '.join(JOB_FIELDS)}")
    for key in ("fixed", "moving"):
        if not data.get(key):
            raise DeepLungRegError(f"{what}: the job names no {key} image (field {key!r})")
    for key, should in JOB_FIELDS.items():
        value = data.get(key)
        if value is not None and not isinstance(value, _JOB_TYPES.get(key, str)):
            raise DeepLungRegError(f"{what}: the job's {key!r} must be {should}, got {json.dumps(value)[:40]}")
    if (data.get("fixed_landmarks") is None) != (data.get("moving_landmarks") is None):
        raise DeepLungRegError(f"{what}: give both fixed_landmarks and moving_landmarks, or neither")


def _run_job(job: RegistrationJob, emit: Callable[[str, object], None], progress, cancel, keep_field: bool,
             initial_field=None) -> tuple[RegistrationResult, Image | None, Image | None, np.ndarray | None, np.ndarray | None, dict]:
    """Register and derive every output, handing each to ``emit(name, value)`` as soon as it exists.

    Outputs are produced one after the other and not kept here, so a caller that
    writes each one and lets it go needs about two volumes of memory beyond the
    inputs, not all of them. With ``keep_field=False`` the field on the fixed grid
    is never whole (a :class:`~DeepLungRegLib.transforms.fields.SlabField`: each
    output that reads it makes the slabs it needs; a 512x512x600 field is 1.9 GB).
    Names: ``"masks"`` (the fixed and moving mask used), ``"field"``, ``"warped"``,
    ``"ventilation_hu"``, ``"jacobian"``, ``"ventilation"``.
    """
    fixed, moving, method = job.fixed, job.moving, job.method
    fixed_landmarks, moving_landmarks = job.fixed_landmarks, job.moving_landmarks
    t0 = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    report("lung masks", 0.0)
    names = tuple(f"{w} mask {m}" if isinstance(m, (str, Path)) else f"{w} mask" for w, m in (("fixed", job.fixed_mask), ("moving", job.moving_mask)))
    # the images and options were checked when the job was made: only the masks are checked here, once
    pair = check_pair(fixed, moving, method, fixed_mask=resolve_mask(job.fixed_mask, fixed, "fixed mask"),
                      moving_mask=resolve_mask(job.moving_mask, moving, "moving mask"), config=job.config,
                      images_checked=True, mask_names=names)
    fm, mm = pair.fixed_mask, pair.moving_mask
    emit("masks", (fm, mm))
    release_memory()  # the mask finder's temporaries, back to the system before the registration
    t_masks = time.perf_counter() - t0
    # the registration takes the progress bar to 90 %, the outputs the rest
    result = register(pair, device=job.device, progress=lambda stage, fraction: report(stage, 0.9 * fraction), cancel=cancel,
                      lazy_field=not keep_field, initial_field=initial_field)
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
        mapped = np.asarray(fixed_landmarks, float) + sample_field_at_points(field, g, fixed_landmarks)  # p + u(p)
        ta = np.linalg.norm(mapped - np.asarray(moving_landmarks, float), axis=1)
        metrics["tre_before"] = tre_summary(tb).to_dict()
        metrics["tre_after"] = tre_summary(ta).to_dict()
        metrics["tre_per_landmark"] = [{"before": float(b), "after": float(a)} for b, a in zip(tb, ta)]
        metrics["landmarks"] = {"labels": list(job.landmark_labels), "fixed_lps": np.round(fixed_landmarks, 4).tolist(),
                                "moving_lps": np.round(moving_landmarks, 4).tolist(),
                                "mapped_lps": np.round(mapped, 4).tolist()}
    # Each map is summarised as soon as it exists and then let go (the caller may keep what emit gets).
    unc = result.maps.pop("uncertainty", None)
    if unc is not None:
        if labels is not None:
            metrics["uncertainty"] = {**uncertainty_summary(unc, labels, tuple(pair.config.uncertainty_above_mm)),
                                      "estimate": result.diagnostics.get("uncertainty_estimate", "matching costs")}
        emit("uncertainty", Image(unc, g))
        del unc
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
    release_memory()
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
    release_memory()
    metrics["timings_s"] = {**{k: round(v, 3) for k, v in result.timings.items()}, "masks": round(t_masks, 3),
                            "outputs": round(time.perf_counter() - t1, 3)}
    metrics["diagnostics"] = result.diagnostics
    metrics["config"] = result.config
    return result, fm, mm, tb, ta, metrics


def compute_outputs(job: RegistrationJob, *, progress: Callable[[str, float], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> RegistrationOutputs:
    """Compute ``job`` and derive every output in memory (what the Slicer module turns into
    MRML nodes; :func:`run_registration` computes the same and writes each output as it comes)."""
    kept: dict = {}
    result, fm, mm, tb, ta, metrics = _run_job(job, kept.__setitem__, progress, cancel, keep_field=True)
    moving = job.moving
    resampled = warp_image(moving, None, job.fixed.geometry, fill=-1024.0 if looks_like_ct(moving) else 0.0)
    if progress:
        progress("done", 1.0)
    return RegistrationOutputs(result=result, resampled=resampled, fixed_mask=fm, moving_mask=mm, tre_before=tb, tre_after=ta,
                               metrics=metrics, **{name: kept.get(name) for name in IMAGE_OUTPUTS})


def run_registration(job: RegistrationJob, outdir: str | Path, *, overwrite: bool = False,
                     progress: Callable[[str, float], None] | None = None, cancel: Callable[[], bool] | None = None,
                     extra_metrics: dict | None = None, report: bool = True, initial_field=None) -> dict:
    """Register and write every output; returns the metrics dict (also in ``metrics.json``).

    ``report=False`` leaves out ``report.html`` and its figures (the Slicer module's worker: what
    the module reads back needs torch, numpy, scipy and SimpleITK only; the report needs matplotlib).

    The output folder is checked before the registration starts (it can be
    created and written; it holds none of the files a run writes, unless
    ``overwrite``; never an input of the job), and locked against a second run.
    Files are staged inside it and appear together at the end; an error, an
    interrupt or a full disk leaves the folder as it was. ``overwrite`` removes or
    replaces only the earlier run's own files (those its ``metrics.json`` records,
    unchanged since) and nothing else.
    Each output is written as soon as it is computed and then let go, and the
    field on the fixed grid is never whole (it is made a slab at a time for each
    output), so a 512x512x600 CT registers in under 4 GB.
    ``initial_field=(u0, geometry)`` starts the registration from ``u0`` (see
    :func:`~DeepLungRegLib.methods.register`; e.g. a neighbouring breathing phase's field).
    """
    if report:
        from .report import ReportSlices, write_report  # matplotlib only where a report is written

    fixed, moving, method = job.fixed, job.moving, job.method
    g = fixed.geometry
    inputs = [*(job.sources or {}).values(), *(m for m in (job.fixed_mask, job.moving_mask) if isinstance(m, (str, Path)))]
    with OutputFolder(outdir, ALL_OUTPUT_FILES, overwrite=overwrite, owner="register", inputs=inputs,
                      read_record=RunFolder.records_in) as folder:
        state: dict = {}

        def emit(name: str, value) -> None:
            if name == "masks":
                if not report:
                    return
                fm = value[0]
                state["slices"] = sl = ReportSlices(g, fm.array if fm is not None else None)
                sl.add("fixed", fixed.array)
                if fm is not None:
                    sl.add("mask", fm.array)
                sl.add_moving("resampled", moving, -1024.0 if looks_like_ct(moving) else 0.0)
            elif name == "field":
                if progress:
                    progress("writing the field", 0.91)
                write_field(value, g, folder.path(ROLES["transform"].file))
                if report:
                    state["slices"].add_field("field", value)
            else:
                write_image(value, folder.path(IMAGE_OUTPUTS[name]))
                if not report:
                    return
                state["slices"].add(name, value.array)
                if name == "jacobian":
                    j = value.array[::2, ::2, ::2]
                    state["slices"].extra["jacobian_range"] = (float(np.percentile(j, 1)), float(np.percentile(j, 99)))

        t1 = time.perf_counter()
        result, fm, mm, tb, ta, metrics = _run_job(job, emit, progress, cancel, keep_field=False, initial_field=initial_field)
        metrics[JOB_KEY] = job.to_json(require_files=False)  # what 'deeplungreg review' shows the outputs over
        metrics.update(extra_metrics or {})
        if report:
            if progress:
                progress("report", 0.99)
            write_report(folder.staging, state["slices"], metrics, tb, ta, title=f"DeepLungReg: {method}")
        metrics["timings_s"]["outputs"] = round(time.perf_counter() - t1 - metrics["timings_s"]["total"]
                                                - metrics["timings_s"]["masks"], 3)
        metrics[MANIFEST_KEY] = sorted(folder.written() + [MANIFEST_FILE])
        metrics[RECORD_KEY] = folder.records()  # what a later --overwrite may remove: these files, unchanged
        write_metrics(folder.path(METRICS_FILE), metrics)
        folder.commit()
    if progress:
        progress("done", 1.0)
    return metrics


def read_outputs(folder: str | Path | RunFolder) -> RegistrationOutputs:
    """The outputs :func:`run_registration` wrote into ``folder``, back in memory (the
    field, the warped image and the maps, TRE per landmark and the metrics; no masks, which are not
    written, and no resampled image)."""
    from .io.fields import read_field

    run = folder if isinstance(folder, RunFolder) else RunFolder.read(folder, owner="register")
    metrics = run.metrics
    field, geometry = read_field(run.path / ROLES["transform"].file)
    result = RegistrationResult(field, geometry, run.method, metrics.get("config", {}), metrics.get("timings_s", {}),
                                metrics.get("diagnostics", {}))
    images = {name: (read_image(run.path / f, what=f"{name} output") if (run.path / f).is_file() else None)
              for name, f in IMAGE_OUTPUTS.items()}
    tb, ta = run.tre or (None, None)
    return RegistrationOutputs(result=result, resampled=None, fixed_mask=None, moving_mask=None, tre_before=tb, tre_after=ta,
                               metrics=metrics, **images)


def summary_lines(metrics: dict) -> list[str]:
    """The few lines every front end shows after a registration: TRE, folding and SD log J (with a
    warning when the field folds), the uncertainty in the lungs (where the method gave one), the time and the device."""
    j = metrics["jacobian"]
    lines = []
    if "tre_before" in metrics:
        b, a = metrics["tre_before"], metrics["tre_after"]
        lines.append(f"TRE {b['mean']:.2f} ± {b['std']:.2f} mm before, {a['mean']:.2f} ± {a['std']:.2f} mm after "
                     f"(95th percentile {a['p95']:.2f}, max {a['max']:.2f}, n = {a['n']})")
    lines.append(f"Folding {j['folding_percent']:.3f} % of voxels, SD log J {j['sd_log_j']:.3f}, "
                 f"J in [{j['min_j']:.2f}, {j['max_j']:.2f}]")
    if j["folding_percent"] > 0:
        lines.append(f"WARNING: the deformation folds (J <= 0) in {j['folding_percent']:.3f} % of voxels; "
                     "raise the regularisation or check the inputs.")
    u = metrics.get("uncertainty", {}).get("both")
    if u:
        shares = ", ".join(f"{u[k]:.1f} % above {k[len('percent_above_'):-2]} mm" for k in u if k.startswith("percent_above_"))
        how = metrics["uncertainty"].get("estimate")
        lines.append(f"Uncertainty in the lungs{f' ({how})' if how else ''}: median {u['median_mm']:.2f} mm, "
                     f"90th percentile {u['p90_mm']:.2f} mm; {shares}")
    t = metrics.get("timings_s", {})
    lines.append(f"Registration {t.get('total', float('nan')):.1f} s on {metrics.get('diagnostics', {}).get('device', '?')}")
    return lines
