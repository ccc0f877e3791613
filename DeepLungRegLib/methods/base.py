"""The method registry, typed configs, and the registration result."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Type

import numpy as np
import torch

from ..device import precision_scope, resolve_device, resolve_dtype
from ..errors import DeepLungRegError, RegistrationCancelled
from ..geometry import Geometry
from ..io.images import Image, looks_like_ct
from ..memory import peak_rss_mb, release_memory
from ..options import DEFAULT_METHOD, Options, option
from ..transforms.fields import SlabField, compose_fields, field_to_grid
from ..transforms.frames import to_working_frame

log = logging.getLogger(__name__)

#: ``progress(stage, fraction)`` with fraction in [0, 1].
ProgressFn = Callable[[str, float], None]
#: ``cancel()`` returns True when the caller wants the method to stop.
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class MethodConfig(Options):
    """Base of every method's frozen config (see :class:`~DeepLungRegLib.options.Options`); round-trips to JSON."""

    precision: str = option("float32", help="float32; tf32 (float32 kept, CUDA's matrix products and convolutions in "
                            "TensorFloat-32; on the CPU the same as float32); float16/bfloat16 on CUDA only (the network "
                            "methods run their network under autocast and keep the field in float32).",
                            choices=("float32", "tf32", "float16", "bfloat16"))
    uncertainty: bool = option(False, help="also write uncertainty.nii.gz (mm on the fixed grid): where the field is least "
                               "sure, a ranking rather than a calibrated error; uncertainty_estimate says how (docs/uncertainty.md).")
    uncertainty_estimate: str = option("costs", help="for the uncertainty: \"costs\": the spread of the MIND-SSC matching "
                                       "costs searched around the method's field (its final field; embed's densified keypoint "
                                       "field) (±6 mm at points every 4 mm in the lung; seconds); "
                                       "\"inverse-consistency\": |u(x) + w(x + u(x))| with w the same method's registration of "
                                       "the pair the other way round (about twice the time).",
                                       choices=("costs", "inverse-consistency"))
    uncertainty_above_mm: tuple[float, ...] = option((4.0, 6.0, 8.0), 0.0, 1000.0,
                                                     "with the uncertainty: the summary gives the share of each lung above "
                                                     "each of these uncertainties (mm).")

    #: a method whose own costs give its map (``convex``, ``embed``) says "matching costs"; for the others
    #: :func:`register` makes the map ``uncertainty_estimate`` names
    UNCERTAINTY_ESTIMATE: ClassVar[str] = ""
    NONEMPTY: ClassVar[tuple[str, ...]] = ("uncertainty_above_mm",)

    def uncertainty_kind(self) -> str:
        """What the uncertainty map estimates: ``"matching costs"`` or ``"inverse consistency"``."""
        return "matching costs" if self.uncertainty_estimate == "costs" else "inverse consistency"

    def own_uncertainty(self) -> bool:
        """Whether the method makes the map itself (its own matching costs), not :func:`register`."""
        return bool(self.uncertainty and self.UNCERTAINTY_ESTIMATE == "matching costs" and self.uncertainty_estimate == "costs")

    def reverse_config(self) -> "MethodConfig":
        """The options of the same registration the other way round (moving -> fixed), for the inverse-consistency
        uncertainty: these options without the uncertainty (a method whose options name a direction turns it)."""
        return dataclasses.replace(self, uncertainty=False)


def parse_options(items: list[str] | str | None, owner: str = "register") -> dict:
    """Method options from ``NAME=VALUE`` items (a list, or one string split at ``;``).

    Values are read as JSON where they parse (``2``, ``true``, ``[6, 4, 2.5]``);
    a comma-separated list of numbers (``6,4,2.5``) becomes a list; anything
    else stays a string. ``MethodConfig.from_dict`` then checks names and ranges.
    """
    if items is None:
        return {}
    if isinstance(items, str):
        items = [part for part in items.replace("\n", ";").split(";")]
    out: dict = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise DeepLungRegError(f"{owner}: option {item!r} must look like NAME=VALUE")
        key, text = (t.strip() for t in item.split("=", 1))
        if not key:
            raise DeepLungRegError(f"{owner}: option {item!r} has no name")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            try:
                out[key] = [json.loads(t) for t in text.split(",")] if "," in text else text
            except json.JSONDecodeError:
                out[key] = text
    return out


def method_settings(method: str) -> list[dict]:
    """The options of ``method``: ``[{"name", "default", "type", "help", "range", "choices"}]`` for GUIs and ``methods -v``."""
    return get_method(method).config_cls.settings()


@dataclass
class RegistrationResult:
    """Output of a method.

    Attributes:
        field: ``(Z, Y, X, 3)`` float32 displacement in mm (LPS) on the fixed grid,
            resampling direction (``x_moving = x_fixed + u(x_fixed)``); a
            :class:`~DeepLungRegLib.transforms.fields.SlabField` from ``register(..., lazy_field=True)``.
        geometry: the fixed grid.
        method: registry name.
        config: the config used, as a dict.
        timings: seconds per stage (``"total"`` included).
        diagnostics: method-specific numbers (losses, peak memory, ...).
        maps: scalar ``(Z, Y, X)`` float32 maps the method gave, on the fixed grid (``"uncertainty"``: mm).
    """

    field: np.ndarray
    geometry: Geometry
    method: str
    config: dict
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a method gets besides images: device, dtype, progress and cancel; it may leave scalar maps of its
    own in ``maps`` (e.g. ``"uncertainty"``: a :class:`GridMap`), which :func:`register` puts on the fixed grid."""

    device: torch.device
    dtype: torch.dtype
    progress: ProgressFn
    cancel: CancelFn
    timings: dict[str, float] = field(default_factory=dict)
    maps: dict[str, "GridMap"] = field(default_factory=dict)

    def check_cancel(self) -> None:
        if self.cancel():
            raise RegistrationCancelled("registration cancelled")

    def stage(self, name: str):
        ctx = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()
                return self

            def __exit__(self, *exc):
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                ctx.timings[name] = ctx.timings.get(name, 0.0) + time.perf_counter() - self.t
                return False

        return _Stage()


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    config_cls: Type[MethodConfig]
    run: Callable[..., tuple[np.ndarray, dict]]

    def make_config(self, config: MethodConfig | dict | None) -> MethodConfig:
        """The method's validated config from a dict of options (a saved dict's old names read, with a warning), ``None`` (the
        defaults) or a config of its own class; anything else is refused."""
        if config is None or isinstance(config, dict):
            return self.config_cls.from_dict(config)
        if not isinstance(config, self.config_cls):
            raise DeepLungRegError(f"register: method {self.name!r} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        config.validate()
        return config


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, config_cls: Type[MethodConfig]):
    """Decorator adding a method ``run(fixed, moving, fixed_mask, moving_mask, config, ctx) -> (field, diagnostics)``."""

    def deco(fn):
        _REGISTRY[name] = MethodSpec(name, description, config_cls, fn)
        return fn

    return deco


def available_methods() -> dict[str, str]:
    """Registered method names and their one-line descriptions (the built-in ones register when
    :mod:`DeepLungRegLib.methods` is imported)."""
    return {k: v.description for k, v in sorted(_REGISTRY.items())}


def get_method(name: str) -> MethodSpec:
    available_methods()
    if name not in _REGISTRY:
        raise DeepLungRegError(f"get_method: unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_image(img: Image, what: str) -> None:
    if not isinstance(img, Image):
        raise DeepLungRegError(f"register: {what} must be an Image, got {type(img).__name__}")
    a = img.array
    if a.size == 0:
        raise DeepLungRegError(f"register: {what} is empty")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise DeepLungRegError(f"register: {what} contains NaN/Inf voxels")
    if min(img.geometry.size) < 4:
        raise DeepLungRegError(f"register: {what} is too small ({img.geometry.size}); need at least 4 voxels per axis")
    if float(a.max()) == float(a.min()):
        raise DeepLungRegError(f"register: {what} is constant ({float(a.min())}); nothing to register")


#: A "lung" mask covering more of its image than this is implausible (an all-ones mask, or a body mask).
MASK_WARNING_FRACTION = 0.85


def _check_intensities(fixed: Image, moving: Image) -> None:
    """Warn when one image is a CT in Hounsfield units and the other holds no air in HU (often a CT
    stored with an offset, e.g. uint16 = HU + 1024, whose reader ignored the rescale intercept)."""
    f, m = looks_like_ct(fixed), looks_like_ct(moving)
    if f != m:
        other = "moving" if f else "fixed"
        log.warning("the %s image holds no air in Hounsfield units (nothing below -500) while the %s image does; if it "
                    "is a CT stored with an offset (e.g. uint16 = HU + 1024), convert it to HU first",
                    other, "fixed" if f else "moving")


#: Voxel spacings outside this range (mm) are not those of a CT or MRI scan: a header in other units, or damaged.
PLAUSIBLE_SPACING_MM = (0.1, 20.0)
#: A moving image covering less than this share of the fixed image's box is warned about.
MIN_OVERLAP_FRACTION = 0.1


def _world_box(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box ``(min, max)`` of the voxels' extent (corners at index -0.5 and size - 0.5), after the direction."""
    corners = np.array([[a, b, c] for a in (-0.5, g.size[0] - 0.5) for b in (-0.5, g.size[1] - 0.5) for c in (-0.5, g.size[2] - 0.5)])
    w = g.index_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


def overlap_fraction(fixed: Geometry, moving: Geometry) -> float:
    """Share of the fixed image's world bounding box that the moving image's world bounding box covers."""
    (f0, f1), (m0, m1) = _world_box(fixed), _world_box(moving)
    inter = np.clip(np.minimum(f1, m1) - np.maximum(f0, m0), 0.0, None)
    return float(np.prod(inter) / np.prod(f1 - f0))


def check_geometry(fixed: Image, moving: Image) -> None:
    """Warn about spacings no scan has (a header in metres or microns) and a moving image that
    covers little of the fixed one in world coordinates (a wrong origin or direction)."""
    lo, hi = PLAUSIBLE_SPACING_MM
    for img, what in ((fixed, "fixed"), (moving, "moving")):
        sp = img.geometry.spacing
        if min(sp) < lo or max(sp) > hi:
            log.warning("the %s image's voxel spacing (%s) mm is outside %g-%g mm: is its header in mm, and right?",
                        what, ", ".join(f"{v:g}" for v in sp), lo, hi)
    share = overlap_fraction(fixed.geometry, moving.geometry)
    if share < MIN_OVERLAP_FRACTION:
        log.warning("the moving image covers %.2g %% of the fixed image's extent in world coordinates; check both "
                    "images' origin and direction (a registration finds only motion within its reach)", 100 * share)


def mask_on_image(mask: Image | None, img: Image, what: str, *, check_coverage: bool = True) -> Image | None:
    """A mask as bool on ``img``'s grid; one stored on another grid of the same scan is resampled onto it.

    Refuses an empty mask or one outside the image; with ``check_coverage``, warns
    about a mask that covers almost the whole image (not a lung mask).
    """
    if mask is None:
        return None
    if not isinstance(mask, Image):
        raise DeepLungRegError(f"register: {what} must be an Image, got {type(mask).__name__}")
    m = mask.with_array(np.asarray(mask.array) > 0)
    if not m.array.any():
        found = np.unique(np.asarray(mask.array))
        values = ", ".join(f"{v:g}" for v in found[:5]) + (f" and {found.size - 5} more" if found.size > 5 else "")
        raise DeepLungRegError(f"register: {what} is empty: it holds only the value(s) {values}; a mask marks "
                               "its region with values above 0 (e.g. 1) and the rest with 0")
    if m.array.shape != img.array.shape or not mask.geometry.same_as(img.geometry, tol=1e-3):
        from ..transforms.warp import warp_image

        m = warp_image(m, None, img.geometry, mode="nearest")
        if not m.array.any():
            raise DeepLungRegError(f"register: {what} does not overlap its image (it lies outside the image's field of view)")
        log.info("%s is stored on another grid than its image; resampled onto the image grid", what)
    fraction = float(np.count_nonzero(m.array)) / m.array.size
    if check_coverage and fraction > MASK_WARNING_FRACTION:
        log.warning("%s covers %.0f %% of its image; a lung mask covers much less. Is it a lung mask?", what, 100 * fraction)
    return m


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU when on CUDA), in MB."""
    out: dict[str, float] = {}
    rss = peak_rss_mb()
    if rss is not None:
        out["peak_rss_mb"] = rss
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class GridField:
    """A displacement field on its own grid (a method's working grid), resampled onto another on demand.

    Attributes:
        values: ``(1, Z, Y, X, 3)`` tensor or ``(Z, Y, X, 3)`` array, mm along LPS, resampling direction.
            A tensor stays on its device: on CUDA the full-resolution field is sampled there, a slab
            at a time, and only the slabs come to the host.
        geometry: its grid.
    """

    def __init__(self, values, geometry: Geometry):
        self.values, self.geometry = values, geometry

    def on(self, geometry: Geometry) -> np.ndarray:
        """The field on ``geometry`` as ``(Z, Y, X, 3)`` float32 (trilinear, border-extended)."""
        return field_to_grid(self.values, self.geometry, geometry)

    def slabs(self, geometry: Geometry) -> SlabField:
        """:meth:`on` ``geometry``, made a slab at a time when it is read (never whole)."""
        return SlabField.resampled(self.values, self.geometry, geometry)


class GridMap:
    """A scalar map on a method's own grid, resampled onto another on demand.

    Attributes:
        values: ``(Z, Y, X)`` tensor or array.
        geometry: its grid.
    """

    def __init__(self, values, geometry: Geometry):
        self.values, self.geometry = values, geometry

    def on(self, geometry: Geometry) -> np.ndarray:
        """The map on ``geometry`` as ``(Z, Y, X)`` float32 (trilinear, border-extended)."""
        from ..transforms.warp import sample_on_grid

        values = self.values.detach().float() if isinstance(self.values, torch.Tensor) else np.asarray(self.values, np.float32)
        with torch.no_grad():
            return sample_on_grid(values, self.geometry, geometry, fill=None)


class AffineField:
    """The displacement ``u(x) = A x + t - x`` of a 4x4 LPS matrix (fixed -> moving), exact on any grid."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.asarray(matrix, dtype=float)

    def on(self, geometry: Geometry) -> np.ndarray:
        from ..transforms.fields import affine_to_field

        return affine_to_field(self.matrix, geometry)

    def slabs(self, geometry: Geometry) -> SlabField:
        """:meth:`on` ``geometry``, made a slab at a time when it is read (never whole)."""
        return SlabField.affine(self.matrix, geometry)


@dataclass(frozen=True)
class CheckedPair:
    """Two images, their masks on their own grids and the method's typed config, checked once
    (made by :func:`check_pair`; :func:`register` and :func:`DeepLungRegLib.pipeline.RegistrationJob`
    pass one on instead of checking again).

    Attributes:
        fixed, moving: scalar 3D images, finite and not constant.
        method: a registered method's name.
        config: that method's validated config.
        fixed_mask, moving_mask: bool masks on ``fixed``'s and ``moving``'s grids, or ``None``.
    """

    fixed: Image
    moving: Image
    method: str
    config: MethodConfig
    fixed_mask: Image | None = None
    moving_mask: Image | None = None


def check_images(fixed: Image, moving: Image) -> None:
    """Refuse an image that cannot be registered (one line each); warn about HU offsets and geometry."""
    check_image(fixed, "fixed image")
    check_image(moving, "moving image")
    _check_intensities(fixed, moving)
    check_geometry(fixed, moving)


def check_pair(fixed: Image, moving: Image, method: str = DEFAULT_METHOD, *, fixed_mask: Image | None = None,
               moving_mask: Image | None = None, config: MethodConfig | dict | None = None,
               images_checked: bool = False, mask_names: tuple[str, str] = ("fixed mask", "moving mask")) -> CheckedPair:
    """Check a pair once: the images (unless ``images_checked``: a job checked them when it was made),
    the masks (resampled onto their images' grids; ``mask_names`` in messages) and the method's options."""
    spec = get_method(method)
    if not images_checked:
        check_images(fixed, moving)
    return CheckedPair(fixed, moving, method, spec.make_config(config), mask_on_image(fixed_mask, fixed, mask_names[0]),
                       mask_on_image(moving_mask, moving, mask_names[1]))


def _start_on(initial_field, geometry: Geometry) -> np.ndarray:
    """A starting field ``(u0, its geometry)`` checked and resampled onto ``geometry``: ``(Z, Y, X, 3)`` float32 mm."""
    try:
        u0, g0 = initial_field
    except (TypeError, ValueError):
        raise DeepLungRegError("register: initial_field must be (field, geometry)") from None
    u0 = np.asarray(u0)
    if not isinstance(g0, Geometry) or u0.shape != (*g0.shape, 3):
        raise DeepLungRegError(f"register: initial_field's field has shape {u0.shape}; it must be (Z, Y, X, 3) on its geometry")
    if not np.all(np.isfinite(u0)):
        raise DeepLungRegError("register: initial_field holds NaN or Inf")
    return np.asarray(field_to_grid(u0, g0, geometry), dtype=np.float32)


def _as_field(raw, geometry: Geometry):
    """A method's field as something with ``.on(geometry)``: a plain ``(Z, Y, X, 3)`` array (on ``geometry``, the working
    grid the method registered on) becomes a :class:`GridField`; a :class:`GridField` or :class:`AffineField` stays."""
    return raw if hasattr(raw, "on") else GridField(np.asarray(raw, dtype=np.float32), geometry)


def _progress_span(progress: ProgressFn, lo: float, hi: float, prefix: str = "") -> ProgressFn:
    """``progress`` with the fractions mapped into ``[lo, hi]`` and ``prefix`` before each stage's name."""
    return lambda stage, f: progress(prefix + stage, lo + (hi - lo) * min(max(f, 0.0), 1.0))


def _inverse_consistency(spec: MethodSpec, forward, wf: Image, wm: Image, wfm: Image | None, wmm: Image | None,
                         config: MethodConfig, ctx: RunContext, progress: ProgressFn | None) -> GridMap:
    """The method-independent uncertainty: the same method registers the pair the other way round (``w``, moving
    -> fixed, :meth:`MethodConfig.reverse_config`) and the map is ``|v(x) + w(x + v(x))|`` (mm), ``v`` the forward
    field, on the working fixed grid coarsened to :data:`UNCERTAINTY_GRID_MM` (the map ranks; at full resolution
    the two fields and their composition would take several GB on a 512x512x600 CT).

    A perfect pair of registrations is inverse-consistent (``w(x + v(x)) = -v(x)``); where the two disagree at
    least one of them is wrong. It is 0 wherever both agree, right or wrong, so it ranks rather than measures.
    With a start field (``register(..., initial_field=...)``) ``v`` is the method's own correction, so the map is
    that correction's consistency, not the start's.

    Args:
        forward: the forward run's field (:func:`_as_field`'s).
        wf, wm, wfm, wmm: the working-frame images and masks the forward run registered.
    """
    from .common import level_geometry

    reverse = RunContext(ctx.device, ctx.dtype, _progress_span(progress or (lambda s, f: None), 0.5, 1.0,
                                                               "uncertainty (reverse registration): "), ctx.cancel)
    with ctx.stage("uncertainty_reverse"):
        back, _ = spec.run(wm, wf, wmm, wfm, config.reverse_config(), reverse)
        ctx.check_cancel()
        gf, gm = (level_geometry(g, UNCERTAINTY_GRID_MM) for g in (wf.geometry, wm.geometry))
        v, w = forward.on(gf), _as_field(back, wm.geometry).on(gm)
        del back
        ic = np.linalg.norm(compose_fields(np.asarray(v, np.float32), gf, np.asarray(w, np.float32), gm), axis=-1)
    return GridMap(ic.astype(np.float32), gf)


def _cost_spread(forward, wf: Image, wm: Image, wfm: Image | None, wmm: Image | None, config: MethodConfig,
                 ctx: RunContext) -> GridMap:
    """The matching costs' uncertainty of any method's field (``forward``, :func:`_as_field`'s;
    :func:`~.uncertainty.field_cost_spread`), on the method's working regions and with its MIND-SSC options where it
    has them."""
    from .common import region_geometry
    from .uncertainty import field_cost_spread

    margin = getattr(config, "margin_mm", 20.0)
    fr, mr = region_geometry(wf, wfm, margin), region_geometry(wm, wmm, margin)
    # in float32 whatever the method's precision (its features and warp), on features no finer than 2 mm (memory)
    ctx32 = dataclasses.replace(ctx, dtype=torch.float32)
    with ctx.stage("uncertainty"):
        return GridMap(*field_cost_spread(wf, wm, wfm, fr, mr, forward.on, ctx32, (0.95, 0.985),
                                          spacing_mm=max(2.0, getattr(config, "feature_spacing_mm", 2.0)),
                                          mind_radius=getattr(config, "mind_radius", 1), mind_dilation=getattr(config, "mind_dilation", 2)))


#: Grid spacing (mm, at least) of the inverse-consistency uncertainty.
UNCERTAINTY_GRID_MM = 2.0


def register(
    fixed: Image | CheckedPair,
    moving: Image | None = None,
    method: str = DEFAULT_METHOD,
    *,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    config: MethodConfig | dict | None = None,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | threading.Event | None = None,
    lazy_field: bool = False,
    initial_field: tuple[np.ndarray, Geometry] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a registered method.

    Args:
        fixed, moving: scalar 3D images (CT in HU for the lung methods); or ``fixed`` a
            :class:`CheckedPair` (images, masks, method and config checked once already) and the
            following arguments but ``device``, ``progress`` and ``cancel`` left out.
        method: a name from :func:`available_methods`.
        fixed_mask, moving_mask: optional lung masks on the images' grids.
        config: the method's config (or a dict of its options).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: ``progress(stage, fraction)`` callback.
        cancel: callable or :class:`threading.Event`; when set the method stops
            with :class:`RegistrationCancelled`.
        lazy_field: return the field on the fixed grid as a
            :class:`~DeepLungRegLib.transforms.fields.SlabField`, made a slab at a time from the
            method's own field whenever it is read, instead of an array (a 512x512x600 field is 1.9 GB).
        initial_field: ``(u0, geometry)``, a start for the registration (e.g. a neighbouring breathing phase's
            result): ``u0`` ``(Z, Y, X, 3)`` mm in the resampling direction on ``geometry`` (any grid covering the
            fixed image). The moving image (and its mask) is first warped with ``u0`` onto the working fixed grid,
            the method registers the fixed image to that, and its field ``v`` is composed with the start:
            ``u(x) = v(x) + u0(x + v(x))``. Every method accepts it; the result is a field from the fixed to
            the original moving image, as without a start.

    Returns:
        The :class:`RegistrationResult` with the field on the fixed grid.
    """
    if isinstance(fixed, CheckedPair):
        if moving is not None or fixed_mask is not None or moving_mask is not None or config is not None:
            raise DeepLungRegError("register: a checked pair carries its images, masks and options; pass nothing else but "
                                   "device, progress and cancel")
        pair = fixed
    else:
        pair = check_pair(fixed, moving, method, fixed_mask=fixed_mask, moving_mask=moving_mask, config=config)
    fixed, moving, method, config = pair.fixed, pair.moving, pair.method, pair.config
    fixed_mask, moving_mask, spec = pair.fixed_mask, pair.moving_mask, get_method(pair.method)
    dev = resolve_device(device)
    dtype = resolve_dtype(config.precision, dev)
    if isinstance(cancel, threading.Event):
        cancel_fn = cancel.is_set
    else:
        cancel_fn = cancel or (lambda: False)
    ctx = RunContext(dev, dtype, progress or (lambda s, f: None), cancel_fn)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    ctx.progress("working frame", 0.0)
    with ctx.stage("working_frame"):
        # Both images on LPS-axis-aligned float32 grids (no finer than 1 mm) before any feature is
        # computed, so the result does not depend on how the images were stored.
        wf, wm = to_working_frame(fixed), to_working_frame(moving)
        wfm = None if fixed_mask is None else to_working_frame(fixed_mask, label=True)
        wmm = None if moving_mask is None else to_working_frame(moving_mask, label=True)
    if initial_field is not None:
        from ..transforms.warp import warp_image

        with ctx.stage("initial_field"):
            ctx.progress("starting field", 0.0)
            u0 = _start_on(initial_field, wf.geometry)
            # the moving image seen through the start, on the working fixed grid: the method is left the rest
            wm = warp_image(wm, u0, wf.geometry, fill=-1024.0 if looks_like_ct(moving) else 0.0)
            wmm = None if wmm is None else warp_image(wmm, u0, wf.geometry, mode="nearest")
            del u0
    # a map register() makes: the inverse consistency (a second registration, half the progress), or the costs
    # around the final field (the last 5 %)
    made_here = config.uncertainty and not config.own_uncertainty()
    reverse = made_here and config.uncertainty_kind() == "inverse consistency"
    with precision_scope(config.precision, dev):  # TF32 exactly when asked for, whatever torch's global flags
        if made_here:
            ctx.progress = _progress_span(progress or (lambda s, f: None), 0.0, 0.5 if reverse else 0.95)
        raw, diagnostics = spec.run(wf, wm, wfm, wmm, config, ctx)
        raw = _as_field(raw, wf.geometry)
        ctx.progress = progress or (lambda s, f: None)
        if reverse:
            ctx.maps["uncertainty"] = _inverse_consistency(spec, raw, wf, wm, wfm, wmm, config, ctx, progress)
        elif made_here:
            ctx.maps["uncertainty"] = _cost_spread(raw, wf, wm, wfm, wmm, config, ctx)
        if config.uncertainty:
            diagnostics["uncertainty_estimate"] = config.uncertainty_kind()
        working_grid = wf.geometry
        del wf, wm, wfm, wmm  # the full-resolution field below needs the memory
        release_memory()  # and what the method freed, back to the system rather than kept in the heap
        ctx.check_cancel()
        with ctx.stage("field_to_fixed_grid"):
            ctx.progress("field to the fixed grid", 0.99)
            if initial_field is not None:  # u(x) = v(x) + u0(x + v(x)), on the working grid
                v = np.asarray(raw.on(working_grid), dtype=np.float32)
                raw = GridField(compose_fields(v, working_grid, *initial_field).astype(np.float32), working_grid)
                del v
            if lazy_field and hasattr(raw, "slabs"):
                field_arr = raw.slabs(fixed.geometry)
            else:
                field_arr = np.asarray(raw.on(fixed.geometry), dtype=np.float32)
            maps = {name: m.on(fixed.geometry) for name, m in ctx.maps.items()}
    ctx.timings["total"] = time.perf_counter() - t0
    diagnostics = {"device": str(dev), **diagnostics, "working_grid": working_grid.to_dict(), **peak_memory_mb(dev)}
    ctx.progress("done", 1.0)
    return RegistrationResult(field_arr, fixed.geometry, method, config.to_dict(), ctx.timings, diagnostics, maps)
