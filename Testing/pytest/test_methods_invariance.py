"""Storage invariance: a registration's result in world coordinates must not depend on how
the two images are stored.

One simulated pair (4 mm voxels, the sample CT, small motion) is registered with its moving
image, and separately its fixed image, re-stored in the ways users bring scans: another voxel
type, RAS axes, permuted axes, an oblique grid, anisotropic voxels, a cropped or an extended
field of view, a uint16 file with a rescale intercept, and the real POPI DICOM series. Masks
are re-stored with their images. The mean TRE over the pair's landmarks (world coordinates)
is compared with the canonical storage's:

* ``exact`` storages hold the same voxel values on the same voxel centres (type, axis order,
  flips, a uint16 file whose intercept gives back the HU). Both images reach the methods as
  the same working images, so the TRE must agree to 0.02 mm (float rounding only).
* ``resampled`` storages interpolate the image onto other voxel centres (an oblique grid and
  anisotropic voxels, both finer than the canonical 4 mm so that they keep its information),
  or change the field of view (cropped, extended), which changes the working region. Every
  method is configured to work no finer than 4 mm, so that all storages give it the same
  working resolution. Interpolating once more still smooths the image a little, and on 4 mm
  voxels that moved the methods' results by up to 0.46 mm in our runs (convex and embed,
  moving image on an oblique grid; networks and adam up to 0.2 mm). The tolerance is 0.6 mm,
  15 % of a voxel; the storage bugs this guards against gave 2.8-60 mm.
"""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib import Image, read_image
from DeepLungRegLib.methods import register
from DeepLungRegLib.metrics import tre
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.simulation.storage import STORAGES as KINDS, stored_as
from DeepLungRegLib.transforms import resample_to_spacing


#: every case registers a pair (20-50 s each on 2 cores): the full suite runs them, `make test-fast` does not
pytestmark = pytest.mark.slow

SPACING = 4.0
TOL = {"exact": 0.02, "resampled": 0.6}
CONFIGS = {
    "mlvirnet": None,
    "affine": {"levels_mm": [8.0], "iterations": [60]},
    "adam": {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [60, 40], "refine_learning_rates": [1.0, 0.5]},
    "convex": {"feature_spacing_mm": 4.0, "search_step_mm": [4.0, 4.0, 4.0], "refine_levels_mm": [4.0]},
    "embed": {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "second_pass_step_mm": 4.0, "refine_levels_mm": [4.0]},
}
#: (side, storage, kind); every storage runs mlvirnet and affine, the named ones the slower methods too.
STORAGES = [("moving", name, kind) for name, kind in KINDS.items()]
STORAGES += [("fixed", name, KINDS[name]) for name in ("float32", "RAS", "permuted axes", "oblique 2 mm", "anisotropic 2x2x4 mm", "cropped 2 cm")]
SLOW = {
    "adam": {("moving", "RAS"), ("moving", "oblique 2 mm"), ("fixed", "oblique 2 mm")},
    "convex": {("moving", "oblique 2 mm"), ("fixed", "permuted axes")},
    "embed": {("moving", "permuted axes"), ("fixed", "RAS")},
}
CASES = [(side, name, kind, m) for side, name, kind in STORAGES for m in ("mlvirnet", "affine")]
CASES += [(side, name, kind, m) for side, name, kind in STORAGES for m, keys in SLOW.items() if (side, name) in keys]


@pytest.fixture(scope="module")
def pair(sample_path):
    ct = resample_to_spacing(read_image(sample_path), SPACING, fill=-1024.0)
    return simulate_breathing(ct, amplitude="small", seed=3)


_canonical: dict[str, float] = {}


def mean_tre(pair, method, fixed, moving, fixed_mask, moving_mask) -> float:
    res = register(fixed, moving, method, fixed_mask=fixed_mask, moving_mask=moving_mask, config=CONFIGS[method], device="cpu")
    # every output stays on the fixed image's own grid, in its own direction
    assert res.geometry == fixed.geometry and res.field.shape == (*fixed.geometry.shape, 3)
    return float(tre(pair.fixed_landmarks, pair.moving_landmarks, res.field, res.geometry).mean())


def canonical(pair, method) -> float:
    if method not in _canonical:
        _canonical[method] = mean_tre(pair, method, pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask)
    return _canonical[method]


@pytest.mark.parametrize("side, name, kind, method", CASES, ids=[f"{s}-{n}-{m}".replace(" ", "_") for s, n, _, m in CASES])
def test_the_result_does_not_depend_on_how_an_image_is_stored(pair, side, name, kind, method, tmp_path):
    ref = canonical(pair, method)
    assert ref < 0.4 * tre(pair.fixed_landmarks, pair.moving_landmarks).mean()  # the canonical run registers
    if side == "moving":
        moving, mmask = stored_as(pair.moving, pair.moving_mask, name, tmp_path, SPACING)
        got = mean_tre(pair, method, pair.fixed, moving, pair.fixed_mask, mmask)
    else:
        fixed, fmask = stored_as(pair.fixed, pair.fixed_mask, name, tmp_path, SPACING)
        got = mean_tre(pair, method, fixed, pair.moving, fmask, pair.moving_mask)
    assert abs(got - ref) <= TOL[kind], f"{side} stored as {name}: TRE {got:.3f} mm against {ref:.3f} mm canonical ({method})"


def test_the_real_popi_dicom_series_as_the_fixed_image(shared_data):
    """The fixed image as the scanner wrote it (141 DICOM slices, 512x512 at 0.98 mm) against the
    same CT at 4 mm (the pair's canonical storage): the same TRE within the resampled tolerance."""
    ct = read_image(shared_data / "popi" / "popi00.nrrd")
    pair = simulate_breathing(resample_to_spacing(ct, SPACING, fill=-1024.0), amplitude="small", seed=5)
    dicom = read_image(shared_data / "popi" / "dicom-phase00")
    assert dicom.geometry.size == (512, 512, 141) and dicom.array.dtype == np.int16
    for method in ("mlvirnet", "affine"):
        ref = mean_tre(pair, method, pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask)
        got = mean_tre(pair, method, dicom, pair.moving, pair.fixed_mask, pair.moving_mask)  # the mask is resampled
        assert ref < 0.5 * tre(pair.fixed_landmarks, pair.moving_landmarks).mean()
        assert abs(got - ref) <= TOL["resampled"], f"DICOM fixed: {got:.3f} mm against {ref:.3f} mm ({method})"
