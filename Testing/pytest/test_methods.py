import threading

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError, Geometry, Image, RegistrationCancelled, read_image
from DeepLungRegLib.methods import available_methods, method_settings, register
from DeepLungRegLib.metrics import jacobian_determinant, jacobian_stats, tre
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.transforms import affine_to_field, resample_to_spacing, sample_field_at_points, warp_image

FAST = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [60, 40], "refine_learning_rates": [1.0, 0.5]}


@pytest.fixture(scope="module")
def small_pair(sample_path):
    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="small", seed=3)


def test_registry_lists_methods():
    m = available_methods()
    assert {"affine", "adam"} <= set(m)
    assert all(isinstance(d, str) and d for d in m.values())


@pytest.mark.slow
def test_adam_lowers_tre_without_folding(small_pair, device):
    p = small_pair
    stages = []
    res = register(p.fixed, p.moving, "adam", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config=FAST, device=device,
                   progress=lambda s, f: stages.append(f))
    before = tre(p.fixed_landmarks, p.moving_landmarks).mean()
    after = tre(p.fixed_landmarks, p.moving_landmarks, res.field, res.geometry).mean()
    assert after < 0.4 * before
    assert jacobian_stats(jacobian_determinant(res.field, res.geometry), p.fixed_mask.array)["folding_percent"] < 0.1
    assert res.field.shape == (*p.fixed.geometry.shape, 3) and res.field.dtype == np.float32
    assert stages and stages[-1] == 1.0 and all(0 <= f <= 1 for f in stages)
    assert res.timings["total"] > 0 and "peak_rss_mb" in res.diagnostics
    assert [(lv["stage"], lv["level_mm"]) for lv in res.diagnostics["levels"]] == [("refine", 8.0), ("refine", 4.0)]
    assert res.diagnostics["device"].startswith(device) and (("peak_gpu_mb" in res.diagnostics) == device.startswith("cuda"))


@pytest.mark.slow
def test_affine_recovers_a_known_affine(small_pair, device):
    fixed, mask = small_pair.fixed, small_pair.fixed_mask
    g = fixed.geometry
    c = g.index_to_world(np.array(g.size, float)[None] / 2)[0]
    a = np.array([[0.97, 0.03, 0.0], [-0.02, 1.02, 0.01], [0.0, 0.02, 0.93]])
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c - a @ c + [6.0, -4.0, 9.0]
    minv = np.linalg.inv(m)
    moving = warp_image(fixed.with_array(fixed.array.astype(np.float32)), affine_to_field(minv, g), g, fill=-1024.0)
    mmask = warp_image(mask.with_array(mask.array.astype(np.uint8)), affine_to_field(minv, g), g, mode="nearest")
    res = register(fixed, moving, "affine", fixed_mask=mask, moving_mask=mmask.with_array(mmask.array > 0), device=device)
    pts = small_pair.fixed_landmarks
    est = pts + sample_field_at_points(res.field, g, pts)
    true = pts @ m[:3, :3].T + m[:3, 3]
    assert np.linalg.norm(est - true, axis=1).mean() < 1.5


def test_cancel_stops_the_method(small_pair, device):
    p = small_pair
    ev = threading.Event()
    ev.set()
    with pytest.raises(RegistrationCancelled):
        register(p.fixed, p.moving, "adam", config=FAST, device=device, cancel=ev)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="nope"), "unknown method"),
    (dict(config={"refine_levels_mm": [100.0], "refine_iterations": [5], "refine_learning_rates": [1.0]}), "refine_levels_mm must be between"),
    (dict(config={"refine_levels_mm": [4.0], "refine_iterations": [5, 5], "refine_learning_rates": [1.0]}), "equal length"),
    (dict(config={"bogus": 1}), "unknown option"),
    (dict(config={"refine_iterations": "many"}), "refine_iterations must be a number or a list of numbers"),
    (dict(config={"regularisation": float("nan")}), "regularisation"),
    (dict(config={"precision": "float16"}, device="cpu"), "not allowed on the CPU"),
])
def test_register_rejects_bad_options(small_pair, kwargs, match):
    p = small_pair
    method = kwargs.pop("method", "adam")
    with pytest.raises(DeepLungRegError, match=match):
        register(p.fixed, p.moving, method, **kwargs)


def test_a_number_for_a_per_level_option_means_one_level():
    from DeepLungRegLib.methods.adam import AdamConfig

    cfg = AdamConfig.from_dict({"refine_levels_mm": 4, "refine_iterations": 20, "refine_learning_rates": 0.5})
    assert (cfg.refine_levels_mm, cfg.refine_iterations, cfg.refine_learning_rates) == ((4,), (20,), (0.5,))


def test_register_rejects_bad_images_and_masks(small_pair):
    p = small_pair
    # a mask on another grid is resampled onto its image; one that lies elsewhere is refused
    other = Image(np.ones((4, 4, 4), bool), Geometry((4, 4, 4), (1.0, 1.0, 1.0), (-900.0, -900.0, -900.0)))
    with pytest.raises(DeepLungRegError, match="fixed mask does not overlap its image"):
        register(p.fixed, p.moving, "adam", fixed_mask=other)
    with pytest.raises(DeepLungRegError, match="fixed mask is empty"):
        register(p.fixed, p.moving, "adam", fixed_mask=p.fixed_mask.with_array(np.zeros_like(p.fixed_mask.array)))
    with pytest.raises(DeepLungRegError, match="constant"):
        register(p.fixed.with_array(np.zeros_like(p.fixed.array)), p.moving, "adam")
    with pytest.raises(DeepLungRegError, match="NaN"):
        bad = p.fixed.array.astype(np.float32)
        bad[0, 0, 0] = np.nan
        register(p.fixed.with_array(bad), p.moving, "adam")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the no-CUDA message cannot be checked")
def test_cuda_request_without_gpu_is_refused(small_pair):
    with pytest.raises(DeepLungRegError, match="no CUDA"):
        register(small_pair.fixed, small_pair.moving, "adam", device="cuda")


def test_every_option_of_every_method_has_its_whole_help_text():
    """``methods --options`` and the Slicer settings table read the config docstrings, continuation lines included."""
    for name in available_methods():
        for opt in method_settings(name):
            assert opt["help"], f"{name}.{opt['name']} has no help text"
    helps = {o["name"]: o["help"] for o in method_settings("convex")}
    assert helps["coupling"].endswith("(relative to the typical cost spread, per squared search step).")
    assert helps["refine_iterations"].startswith("Adam iterations") and helps["convex_smoothing_passes"]
    helps = {o["name"]: o["help"] for o in method_settings("embed")}
    assert helps["features"].endswith("the refinement always uses MIND-SSC.")


def test_every_method_writes_its_per_level_records_under_one_key():
    """Per-level records go to ``diagnostics["levels"]`` (their ``stage`` says whose: ``convex``, ``refine``);
    no method writes them under a key of its own."""
    import re
    from pathlib import Path

    import DeepLungRegLib.methods as methods

    sources = {p.name: p.read_text() for p in Path(methods.__file__).parent.glob("*.py")}
    keys = {m.group(1) for text in sources.values() for m in re.finditer(r"""diag\w*\[\s*["'](\w*levels?\w*)["']\s*\]""", text)}
    assert keys == {"levels"}, keys
    assert '"stage": "refine"' in sources["refine.py"] and '"stage": "convex"' in sources["convex.py"]


def test_a_method_without_costs_estimates_its_uncertainty_by_inverse_consistency(small_pair):
    """Issue 31's method-independent estimate: ``affine`` with ``uncertainty`` registers the pair the other way round as
    well, and its map is ``|u(x) + w(x + u(x))|`` for that reverse field ``w``; the progress covers both runs once;
    ``metrics.json`` names the estimate and gives the share of the lung above the thresholds asked for."""
    from DeepLungRegLib.pipeline import RegistrationJob, compute_outputs, summary_lines
    from DeepLungRegLib.transforms import compose_fields

    p = small_pair
    seen = []
    out = compute_outputs(RegistrationJob(p.fixed, p.moving, "affine", p.fixed_mask, p.moving_mask,
                                          config={"uncertainty": True, "uncertainty_estimate": "inverse-consistency",
                                                  "uncertainty_above_mm": [0.05, 1000.0]}, device="cpu"),
                          progress=lambda s, f: seen.append((s, f)))
    back = register(p.moving, p.fixed, "affine", fixed_mask=p.moving_mask, moving_mask=p.fixed_mask, device="cpu")
    expect = np.linalg.norm(compose_fields(out.result.field, p.fixed.geometry, back.field, back.geometry), axis=-1)
    u = out.uncertainty.array
    assert u.shape == p.fixed.geometry.shape and np.isfinite(u).all()
    assert np.allclose(u, expect, atol=0.02) and float(expect.max()) > 0.05  # two affine fits are not exact inverses
    assert out.result.diagnostics["uncertainty_estimate"] == "inverse consistency" and "uncertainty_reverse" in out.result.timings
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(s.startswith("uncertainty (reverse registration)") for s, _ in seen)
    s = out.metrics["uncertainty"]
    assert s["estimate"] == "inverse consistency" and s["both"]["percent_above_1000mm"] == 0.0
    assert 0.0 < s["both"]["percent_above_0.05mm"] <= 100.0 and "percent_above_4mm" not in s["both"]
    line = next(ln for ln in summary_lines(out.metrics) if ln.startswith("Uncertainty"))
    assert "(inverse consistency)" in line and "above 0.05 mm" in line


def test_every_method_offers_the_uncertainty_and_says_which_estimate(small_pair):
    """Each method's config has ``uncertainty``; by default it is the spread of the matching costs (convex's and embed's
    own, register()'s around the final field for the others), on request the inverse consistency (issue 31: a method
    without a cost distribution says which estimate it gives)."""
    from DeepLungRegLib.methods import get_method

    for name in available_methods():
        cfg = get_method(name).config_cls
        assert {"uncertainty", "uncertainty_estimate"} <= {s["name"] for s in method_settings(name)}
        assert (cfg.UNCERTAINTY_ESTIMATE == "matching costs") == (name in ("convex", "embed")), name
        assert cfg.from_dict({"uncertainty": True}).uncertainty_kind() == "matching costs"
        ic = cfg.from_dict({"uncertainty": True, "uncertainty_estimate": "inverse-consistency"})
        assert ic.uncertainty_kind() == "inverse consistency" and not ic.own_uncertainty()  # register() runs the reverse
        assert cfg.from_dict({"uncertainty": True}).own_uncertainty() == (name in ("convex", "embed"))
    p = small_pair
    seen = []
    r = register(p.fixed, p.moving, "affine", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config={"uncertainty": True},
                 device="cpu", progress=lambda s, f: seen.append((s, f)))
    u = r.maps["uncertainty"]
    assert r.diagnostics["uncertainty_estimate"] == "matching costs" and "uncertainty" in r.timings and "uncertainty_reverse" not in r.timings
    assert u.shape == p.fixed.geometry.shape and np.isfinite(u).all() and (u >= 0).all() and float(u.max()) > 0
    assert [f for _, f in seen] == sorted(f for _, f in seen) and any(s == "uncertainty" for s, _ in seen)
