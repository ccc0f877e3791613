"""Typed option sets: ranges declared once, shared groups, old names as aliases, and the registration job
checked once before any work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from DeepLungRegLib.errors import DeepLungRegError
from DeepLungRegLib.geometry import Geometry
from DeepLungRegLib.io.images import Image
from DeepLungRegLib.methods import available_methods, get_method, method_settings
from DeepLungRegLib.methods.common import MindOptions, RegionOptions
from DeepLungRegLib.methods.refine import RefineOptions, Refinement
from DeepLungRegLib.networks import network_names
from DeepLungRegLib.pipeline import RegistrationJob

#: configs as version 1 wrote them (metrics.json "config", tune's tuned.json), with the old names
SAVED_V1 = {
    "adam": {"levels_mm": [8.0, 4.0], "iterations": [60, 40], "learning_rates": [1.0, 0.5], "smoothing_passes": 3},
    "convex": {"adam_levels_mm": [3.0], "adam_iterations": [20], "adam_learning_rates": [0.3], "adam_smoothing_passes": 1,
               "smoothing_passes": 3},
    "embed": {"refine_levels_mm": [4.0], "refine_iterations": [10], "refine_learning_rates": [0.3], "smoothing_passes": 3},
    "mlvirnet": {"finetune": 30, "finetune_level_mm": 3.0, "finetune_learning_rate": 0.5, "smoothing_passes": 3},
}


@pytest.mark.parametrize("method", sorted(SAVED_V1))
def test_configs_saved_with_the_old_names_load_unchanged(method):
    cls = get_method(method).config_cls
    cfg = cls.from_dict(SAVED_V1[method])
    for old, value in SAVED_V1[method].items():
        new = cls.canonical(old)
        expected = tuple(value) if isinstance(value, list) else (value,) if isinstance(getattr(cfg, new), tuple) else value
        assert getattr(cfg, new) == expected and getattr(cfg, old) == expected  # the old name still reads
    # written back with the new names only, and read back the same
    saved = cfg.to_dict()
    assert not set(saved) & (set(SAVED_V1[method]) - {f.name for f in dataclasses.fields(cls)})
    assert cls.from_dict(saved) == cfg


def test_smoothing_passes_names_the_stage_it_smooths():
    """The old ``smoothing_passes`` meant the refinement in adam, embed and the networks but the discrete
    stage in convex; the new names say which."""
    assert get_method("convex").config_cls.canonical("smoothing_passes") == "convex_smoothing_passes"
    for m in ("adam", "embed", *network_names()):
        assert get_method(m).config_cls.canonical("smoothing_passes") == "refine_smoothing_passes"


def test_a_new_and_an_old_name_for_one_option_are_refused():
    with pytest.raises(DeepLungRegError, match="given twice"):
        get_method("adam").config_cls.from_dict({"iterations": [5, 5, 5], "refine_iterations": [5, 5, 5]})


@pytest.mark.parametrize("method", sorted(available_methods()))
def test_every_declared_range_is_enforced_and_named(method):
    """Each option's range lives next to its field; a value past either end is refused with the option's name."""
    cls = get_method(method).config_cls
    checked = 0
    for opt in method_settings(method):
        if opt["range"] is None:
            continue
        lo, hi = opt["range"]
        default = opt["default"]
        for bad in (hi * 2 + 1, lo - 1):
            value = [bad] * len(default) if isinstance(default, list) else bad
            if opt["type"].startswith(("int", "tuple[int")):
                value = [int(v) for v in value] if isinstance(value, list) else int(value)
            with pytest.raises(DeepLungRegError, match=opt["name"]):
                cls.from_dict({opt["name"]: value})
        checked += 1
    assert checked >= 5


def test_shared_groups_mean_the_same_in_every_method():
    """MIND-SSC, working region and refinement options have one declaration (range and help) wherever they appear."""
    groups = {f.name: f.metadata for g in (MindOptions, RegionOptions, RefineOptions) for f in dataclasses.fields(g)}
    users = 0
    for method in available_methods():
        fields = {f.name: f for f in dataclasses.fields(get_method(method).config_cls)}
        for name, meta in groups.items():
            if name in fields:
                assert (fields[name].metadata["lo"], fields[name].metadata["hi"]) == (meta["lo"], meta["hi"]), (method, name)
        users += set(groups) <= set(fields)
    assert users >= 3 + len(network_names()) - 1  # adam, convex, embed and every network method have all three groups


def test_the_refinement_is_one_typed_component_built_from_each_config():
    adam = get_method("adam").config_cls.from_dict({"levels_mm": [8.0], "iterations": [5], "learning_rates": [1.0]})
    r = Refinement.of(adam, residual=False, label="adam")
    assert (r.levels_mm, r.iterations, r.learning_rates, r.residual, r.folding_weight) == ((8.0,), (5,), (1.0,), False, 0.0)
    convex = get_method("convex").config_cls()
    rc = Refinement.of(convex)
    assert rc.mask_dilation_mm == convex.mask_dilation_mm == 4.0 and rc.smoothing_passes == convex.refine_smoothing_passes
    net = get_method("mlvirnet").config_cls()
    assert not Refinement.of(net).enabled  # the network alone by default
    assert Refinement.of(get_method("mlvirnet").config_cls.from_dict({"finetune": 30})).enabled
    assert not Refinement.of(get_method("convex").config_cls.from_dict({"refine_levels_mm": [], "refine_iterations": [],
                                                                         "refine_learning_rates": []})).enabled
    with pytest.raises(DeepLungRegError, match="non-empty"):
        get_method("adam").config_cls.from_dict({"levels_mm": [], "iterations": [], "learning_rates": []})


def _image(seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    return Image((rng.normal(size=(8, 8, 8)) * 100 - 600).astype(np.float32), Geometry((8, 8, 8), (2.0, 2.0, 2.0)))


def test_a_registration_job_is_checked_once_when_it_is_made():
    f, m = _image(0), _image(1)
    job = RegistrationJob(f, m, "adam", config={"iterations": [5, 5, 5]})
    assert job.config.refine_iterations == (5, 5, 5) and type(job.config).__name__ == "AdamConfig"
    pts = np.zeros((2, 3)) + 4.0
    assert RegistrationJob(f, m, fixed_landmarks=pts, moving_landmarks=pts).landmark_labels == ["P-1", "P-2"]
    for kwargs, match in [
        (dict(method="nope"), "unknown method"),
        (dict(config={"regularisation": -1.0}), "regularisation must be between"),
        (dict(fixed_landmarks=pts), "both fixed landmarks and moving landmarks, or neither"),
        (dict(fixed_landmarks=pts, moving_landmarks=pts[:1]), "fixed landmarks has 2 points but moving landmarks has 1"),
        (dict(config={"precision": "float16"}, device="cpu"), "not allowed on the CPU"),
    ]:
        with pytest.raises(DeepLungRegError, match=match):
            RegistrationJob(f, m, **kwargs)
    with pytest.raises(DeepLungRegError, match="constant"):
        RegistrationJob(f, m.with_array(np.zeros_like(m.array)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the no-CUDA message cannot be checked")
def test_a_missing_gpu_is_reported_before_any_work():
    with pytest.raises(DeepLungRegError, match="no CUDA"):
        RegistrationJob(_image(0), _image(1), device="cuda")
