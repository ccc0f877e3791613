"""External baselines for the benchmark: ConvexAdam and elastix.

Both are optional (``pip install 'DeepLungRegLib[bench]'``) and never needed by
the library. Each runner returns a field in our convention ((Z, Y, X, 3) mm
along LPS on the fixed grid, ``x_moving = x_fixed + u(x_fixed)``);
:func:`check_conversion` proves the conversion on a known translation before
any number is reported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..device import resolve_device
from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image
from ..transforms.resample import resample_to_geometry
from ..transforms.fields import field_to_grid
from ..transforms.frames import voxel_to_world
from ..transforms.warp import warp_image

#: Baseline name -> (pip package, import name).
BASELINE_PACKAGES = {"convexadam": ("convexAdam", "convexAdam"), "elastix": ("itk-elastix", "itk")}


@dataclass(frozen=True)
class BaselineResult:
    field: np.ndarray
    diagnostics: dict


def available_baselines() -> dict[str, bool]:
    """Baseline name -> whether its package is installed."""
    return {name: importlib.util.find_spec(mod) is not None for name, (_, mod) in BASELINE_PACKAGES.items()}


def _require(name: str) -> None:
    if name not in BASELINE_PACKAGES:
        raise DeepLungRegError(f"benchmark: unknown baseline {name!r}; known: {', '.join(BASELINE_PACKAGES)}")
    pkg, mod = BASELINE_PACKAGES[name]
    if importlib.util.find_spec(mod) is None:
        raise DeepLungRegError(f"benchmark: baseline {name} needs {pkg}: pip install 'DeepLungRegLib[bench]' (or pip install {pkg})")


def _isotropic_grid(g: Geometry, spacing: float, multiple: int = 1) -> Geometry:
    """A grid of ``spacing`` mm over ``g``'s extent, each size a multiple of ``multiple``."""
    extent = np.asarray(g.size) * np.asarray(g.spacing)
    size = tuple(int(max(8, multiple * round(e / spacing / multiple))) for e in extent)
    return Geometry(size, (spacing,) * 3, g.origin, g.direction)


# ------------------------------------------------------------------ ConvexAdam
#: ConvexAdam settings: ``default`` is its own (convex_adam_pt's defaults); ``best`` is the best of the
#: settings tried on pairs from a CT the project had not used (issue 19): lung masks, a 4-voxel
#: grid for the convex step and a displacement half-width of 6 (about 2.3x the default's time).
CONVEXADAM_SETTINGS = {"default": {}, "best": {"grid_sp": 4, "disp_hw": 6, "use_mask": True}}


def run_convexadam(fixed: Image, moving: Image, fixed_mask=None, moving_mask=None, *, device: str = "auto",
                   spacing: float = 2.0, setting: str = "default", settings: dict | None = None) -> BaselineResult:
    """ConvexAdam (PyPI ``convexAdam``) on an isotropic ``spacing`` grid, float32.

    ``setting`` names one of :data:`CONVEXADAM_SETTINGS`; ``settings`` gives
    ``convex_adam_pt`` keyword arguments directly (and wins). ConvexAdam returns
    voxel displacements along the array axes ``(z, y, x)``; they are turned into
    mm along LPS and resampled back to the fixed grid.
    """
    _require("convexadam")
    from convexAdam.convex_adam_MIND import convex_adam_pt

    if settings is None and setting not in CONVEXADAM_SETTINGS:
        raise DeepLungRegError(f"convexadam: unknown setting {setting!r}; known: {', '.join(CONVEXADAM_SETTINGS)}")
    kwargs = dict(settings) if settings is not None else dict(CONVEXADAM_SETTINGS[setting])
    dev = resolve_device(device)
    g = fixed.geometry
    iso = _isotropic_grid(g, spacing, 2 if kwargs.get("use_mask") else 1)  # its masked features halve the grid
    f = resample_to_geometry(fixed.with_array(fixed.array.astype(np.float32)), iso, mode="linear", fill=-1024.0)
    m = resample_to_geometry(moving.with_array(moving.array.astype(np.float32)), iso, mode="linear", fill=-1024.0)
    with tempfile.TemporaryDirectory(prefix="deeplungreg-convexadam-") as tmp:
        if kwargs.get("use_mask"):  # ConvexAdam reads its masks from NIfTI files, as arrays on the images' grid
            if fixed_mask is None or moving_mask is None:
                raise DeepLungRegError("convexadam: this setting uses lung masks, and none were given")
            kwargs["path_fixed_mask"], kwargs["path_moving_mask"] = (
                _nifti_mask(mask, iso, os.path.join(tmp, f"{which}.nii.gz"))
                for mask, which in ((fixed_mask, "fixed"), (moving_mask, "moving")))
        t0 = time.perf_counter()
        disp = convex_adam_pt(f.array, m.array, dtype=torch.float32, device=dev, verbose=False, **kwargs)
        seconds = time.perf_counter() - t0
    u = voxel_to_world(np.moveaxis(np.asarray(disp, dtype=np.float64), -1, 0)[None], iso)  # (dz, dy, dx) voxels -> mm
    return BaselineResult(field_to_grid(u, iso, g), {"device": str(dev), "setting": setting if settings is None else kwargs,
                                                        "grid_mm": spacing,
                                                        "convexadam_s": seconds})


def _nifti_mask(mask: Image, grid: Geometry, path: str) -> str:
    """A mask resampled onto ``grid`` and stored as NIfTI so that ``get_fdata()`` returns the ``(z, y, x)`` array."""
    import nibabel

    array = resample_to_geometry(mask.with_array((np.asarray(mask.array) > 0).astype(np.uint8)), grid, mode="nearest").array
    nibabel.save(nibabel.Nifti1Image(np.asarray(array, dtype=np.uint8), np.eye(4)), path)
    return path


# --------------------------------------------------------------------- elastix
def _to_itk(image: Image, pixel=np.float32):
    import itk

    img = itk.image_from_array(np.ascontiguousarray(image.array.astype(pixel)))
    g = image.geometry
    img.SetSpacing([float(s) for s in g.spacing])
    img.SetOrigin([float(o) for o in g.origin])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(g.direction_matrix)))
    return img


def elastix_parameters(bspline_spacing_mm: float = 10.0, iterations: tuple[int, int] = (300, 500)):
    """An affine + B-spline lung parameter set (4 resolutions each, normalised correlation)."""
    import itk

    po = itk.ParameterObject.New()
    affine = po.GetDefaultParameterMap("affine", 4)
    affine["Metric"] = ["AdvancedNormalizedCorrelation"]
    affine["MaximumNumberOfIterations"] = [str(iterations[0])]
    affine["AutomaticTransformInitialization"] = ["true"]
    bspline = po.GetDefaultParameterMap("bspline", 4, float(bspline_spacing_mm))
    bspline["Metric"] = ["AdvancedNormalizedCorrelation", "TransformBendingEnergyPenalty"]
    bspline["Metric0Weight"] = ["1.0"]
    bspline["Metric1Weight"] = ["50.0"]
    bspline["MaximumNumberOfIterations"] = [str(iterations[1])]
    bspline["NumberOfSpatialSamples"] = ["4000"]
    for pm in (affine, bspline):
        pm["ImageSampler"] = ["RandomCoordinate"]
        pm["NewSamplesEveryIteration"] = ["true"]
        pm["ErodeMask"] = ["false"]
        po.AddParameterMap(pm)
    return po


def run_elastix(fixed: Image, moving: Image, fixed_mask=None, moving_mask=None, *, device: str = "cpu",
                bspline_spacing_mm: float = 10.0, iterations: tuple[int, int] = (300, 500)) -> BaselineResult:
    """elastix (PyPI ``itk-elastix``) affine + B-spline; the field comes from transformix on the fixed grid."""
    _require("elastix")
    import itk

    from scipy import ndimage

    f, m = _to_itk(fixed), _to_itk(moving)
    kwargs = {}
    if fixed_mask is not None:
        grow = max(1, int(round(10.0 / min(fixed.geometry.spacing))))
        dil = ndimage.binary_dilation(np.asarray(fixed_mask.array, bool), iterations=grow)
        kwargs["fixed_mask"] = _to_itk(Image(dil.astype(np.uint8), fixed.geometry), np.uint8)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deeplungreg-elastix-") as tmp:  # transformix writes its field file there
        _, params = itk.elastix_registration_method(f, m, parameter_object=elastix_parameters(bspline_spacing_mm, iterations),
                                                    log_to_console=False, **kwargs)
        field = itk.transformix_deformation_field(m, params, output_directory=tmp, log_to_console=False)
        u = np.array(itk.array_from_image(field), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if u.shape != (*fixed.geometry.shape, 3):
        raise DeepLungRegError(f"elastix: transformix returned a field of shape {u.shape}, expected {(*fixed.geometry.shape, 3)}")
    return BaselineResult(u, {"device": "cpu", "bspline_spacing_mm": bspline_spacing_mm, "elastix_s": seconds})


RUNNERS: dict[str, Callable[..., BaselineResult]] = {
    "convexadam": run_convexadam,
    "convexadam-best": functools.partial(run_convexadam, setting="best"),
    "elastix": run_elastix,
}


def run_baseline(name: str, fixed: Image, moving: Image, fixed_mask=None, moving_mask=None, *, device: str = "auto",
                 **options) -> BaselineResult:
    """Run a baseline by name; the field is in our convention on the fixed grid."""
    if name not in RUNNERS:
        raise DeepLungRegError(f"benchmark: unknown baseline {name!r}; known: {', '.join(RUNNERS)}")
    _require(name.split("-")[0])
    return RUNNERS[name](fixed, moving, fixed_mask, moving_mask, device=device, **options)


def check_conversion(name: str, image: Image, shift_mm=(4.0, -6.0, 3.0), *, device: str = "auto", tol_voxels: float = 0.5) -> dict:
    """Register ``image`` to a copy moved by a known translation and check the converted field.

    The moving copy satisfies ``moving(x + t) = image(x)``, so the right field
    is ``u = t`` everywhere. Raises :class:`DeepLungRegError` when the median
    field in the central region is off by more than ``tol_voxels`` voxels.
    """
    g = image.geometry
    t = np.asarray(shift_mm, dtype=np.float32)
    fixed = image.with_array(image.array.astype(np.float32))
    moving = warp_image(fixed, np.broadcast_to(-t, (*g.shape, 3)).astype(np.float32), g, fill=float(np.percentile(fixed.array, 1)))
    # Cheap settings: the check is about axes, signs and units, not accuracy.
    options = {"spacing": float(max(g.spacing))} if name.startswith("convexadam") else {"iterations": (100, 100)}
    ones = fixed.with_array(np.ones(g.shape, dtype=np.uint8))  # for settings that use lung masks
    res = run_baseline(name, fixed, moving, ones, ones, device=device, **options)
    z, y, x = (slice(s // 4, s - s // 4) for s in g.shape)
    got = np.median(res.field[z, y, x].reshape(-1, 3), axis=0)
    err = float(np.linalg.norm(got - t))
    tol = tol_voxels * float(max(g.spacing))
    if not err <= tol:
        raise DeepLungRegError(f"benchmark: {name}'s field conversion fails the translation check: expected {t.tolist()} mm, "
                               f"got {np.round(got, 2).tolist()} mm (error {err:.2f} > {tol:.2f} mm)")
    return {"baseline": name, "expected_mm": t.tolist(), "median_mm": np.round(got, 3).tolist(), "error_mm": round(err, 3)}
