"""Typed option sets: ranges declared once, shared groups, one name per option (the names of version 1 read
only from what it saved, with a DeprecationWarning), and the registration job checked once before any work."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from DeepLungRegLib.cli import _parse_options
from DeepLungRegLib.errors import DeepLungRegError
from DeepLungRegLib.geometry import Geometry
from DeepLungRegLib.io.images import Image
from DeepLungRegLib.methods import available_methods, get_method, method_settings
from DeepLungRegLib.methods.common import MindOptions, RegionOptions
from DeepLungRegLib.methods.refine import RefineOptions, Refinement
from DeepLungRegLib.networks import network_names
from DeepLungRegLib.pipeline import RegistrationJob

ROOT = Path(__file__).resolve().parents[2]

# The names of version 1 appear in this file only in the tables whose names end in _V1 (the scan below
# checks it): what version 1 saved, and its flags.

#: configs as version 1 wrote them (metrics.json "config", tune's tuned.json), with the old names
SAVED_V1 = {
    "adam": {"levels_mm": [8.0, 4.0], "iterations": [60, 40], "learning_rates": [1.0, 0.5], "smoothing_passes": 3},
    "convex": {"adam_levels_mm": [3.0], "adam_iterations": [20], "adam_learning_rates": [0.3], "adam_smoothing_passes": 1,
               "smoothing_passes": 3},
    "embed": {"refine_levels_mm": [4.0], "refine_iterations": [10], "refine_learning_rates": [0.3], "smoothing_passes": 3},
    "mlvirnet": {"finetune": 30, "finetune_level_mm": 3.0, "finetune_learning_rate": 0.5, "smoothing_passes": 3},
}
#: version 1's flags of ``register`` and what replaces them
FLAGS_V1 = {"--finetune": "-O refine_iterations=N"}
#: version 1's name of the smoothing passes: the refinement's in adam, embed and the networks, the discrete stage's in convex
SMOOTHING_V1 = "smoothing_passes"
#: uses of old names that the scan below must find
USES_V1 = ("deeplungreg register --finetune 30", '{"adam_levels_mm": [3.0]}', "-O learning_rates=[1,0.5]", "smoothing_passes=3")


def _old_names() -> set[str]:
    """Every old name of every method's options that is no method's current option name."""
    current = {f.name for m in available_methods() for f in dataclasses.fields(get_method(m).config_cls)}
    old = {k for m in available_methods() for k in get_method(m).config_cls.aliases()}
    return old - current | {flag.lstrip("-") for flag in FLAGS_V1}


@pytest.mark.parametrize("method", sorted(SAVED_V1))
def test_configs_saved_with_the_old_names_load_with_a_deprecation_warning_naming_the_new_one(method):
    cls = get_method(method).config_cls
    old_names = set(SAVED_V1[method]) & set(cls.aliases())
    with pytest.warns(DeprecationWarning) as caught:
        cfg = cls.from_dict(SAVED_V1[method])
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert len(messages) == len(old_names) >= 1
    for old, value in SAVED_V1[method].items():
        new = cls.aliases().get(old, old)
        expected = tuple(value) if isinstance(value, list) else (value,) if isinstance(getattr(cfg, new), tuple) else value
        assert getattr(cfg, new) == expected
        if old != new:
            assert any(f"{old!r} is now called {new!r}" in m for m in messages), (old, messages)
            with pytest.raises(AttributeError):
                getattr(cfg, old)  # the old name is no attribute: code uses the new one
    # written back with the new names only, and read back the same without a warning
    saved = cfg.to_dict()
    assert not set(saved) & old_names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cls.from_dict(saved) == cfg


def test_an_old_config_file_is_read_by_the_command_line_with_a_warning(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"method": "mlvirnet", "config": SAVED_V1["mlvirnet"]}))
    with pytest.warns(DeprecationWarning) as caught:
        options = _parse_options(["regularisation=2"], str(path), "mlvirnet")
    assert len(caught) == 4 and f"'{next(iter(SAVED_V1['mlvirnet']))}' is now called 'refine_iterations'" in str(caught[0].message)
    assert options == {"refine_iterations": 30, "refine_levels_mm": 3.0, "refine_learning_rates": 0.5,
                       "refine_smoothing_passes": 3, "regularisation": 2}


def test_a_config_file_with_a_bom_is_read_once_and_its_method_checked(tmp_path):
    """A file saved by Windows Notepad starts with a BOM: the options were read, but the method it names was read
    again without the BOM's allowance (a JSONDecodeError traceback). Now one read gives both."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"method": "convex", "config": {"regularisation": 2.0}}).encode())
    assert _parse_options([], str(path), "convex") == {"regularisation": 2.0}
    with pytest.raises(DeepLungRegError, match="holds options of method 'convex', not 'adam'; pass --method convex"):
        _parse_options([], str(path), "adam")


def test_smoothing_passes_names_the_stage_it_smooths():
    """Version 1's name of the smoothing passes meant the refinement in adam, embed and the networks but the
    discrete stage in convex; the new names say which."""
    assert get_method("convex").config_cls.aliases()[SMOOTHING_V1] == "convex_smoothing_passes"
    for m in ("adam", "embed", *network_names()):
        assert get_method(m).config_cls.aliases()[SMOOTHING_V1] == "refine_smoothing_passes"


def test_a_new_and_an_old_name_for_one_option_are_refused():
    with pytest.raises(DeepLungRegError, match="given twice"), pytest.warns(DeprecationWarning):
        get_method("adam").config_cls.from_dict({"iterations": [5, 5, 5], "refine_iterations": [5, 5, 5]})


@pytest.mark.parametrize("method", sorted(SAVED_V1))
def test_typed_options_take_the_current_names_only(method, tmp_path):
    """``-O``, benchmark variants and tune grids are typed by a user now: an old name is one line naming the new one."""
    from DeepLungRegLib.benchmark.runner import run_benchmark
    from DeepLungRegLib.evaluation.tuning import candidate_grid

    cls = get_method(method).config_cls
    old, value = next((k, v) for k, v in SAVED_V1[method].items() if k in cls.aliases())
    new = cls.aliases()[old]
    with pytest.raises(DeepLungRegError, match=rf"register: option '{old}' is now called '{new}'; use -O {new}=VALUE$"):
        _parse_options([f"{old}={json.dumps(value)}"], None, method)
    spec = [{"kind": "pairdir", "path": str(tmp_path), "name": "x"}]
    with pytest.raises(DeepLungRegError, match=rf"benchmark: option '{old}' is now called '{new}'; use {method}:{new}=VALUE"):
        run_benchmark(spec, [f"{method}:{old}={json.dumps(value)}"], tmp_path / "out", check_baselines=False)
    with pytest.raises(DeepLungRegError, match=rf"tune: option '{old}' is now called '{new}'"):
        candidate_grid(method, {old: [value]})


@pytest.mark.parametrize("flag", sorted(FLAGS_V1))
def test_the_command_line_refuses_a_removed_flag_in_one_line_naming_its_replacement(flag, tmp_path, capsys):
    from DeepLungRegLib.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["register", "f.nii.gz", "m.nii.gz", "-o", str(tmp_path / "o"), "--method", "mlvirnet", flag, "30"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"deeplungreg: error: register: {flag} is no longer an option; use {FLAGS_V1[flag]}"]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    shown = capsys.readouterr().out
    assert "--option" in shown and flag not in shown


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "Testing").rglob("*.py")),
             *sorted((ROOT / "scripts").glob("*.py")), *sorted((ROOT / "DeepLungReg").glob("*.py"))]
    return [p for p in files if p.is_file()]


def _without_v1_tables(path: Path) -> str:
    """The text of ``path``; in this file, the tables of old names (top-level names ending in _V1) blanked out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.resolve() == Path(__file__).resolve():
        for node in ast.parse("\n".join(lines)).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id.endswith("_V1") for t in targets):
                for i in range(node.lineno - 1, node.end_lineno):
                    lines[i] = ""
    return "\n".join(lines)


def test_no_document_test_or_script_uses_an_old_option_name():
    """One name per option: README, docs, tests, scripts and the Slicer module use the current names only
    (version 1's names live only in the method configs' ALIASES, for reading what it saved, and in the tables above)."""
    old = _old_names()
    assert set(SAVED_V1["mlvirnet"]) | set(SAVED_V1["convex"]) <= old  # the scan knows what to look for
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, old), key=len, reverse=True)) + r")\b")
    files = _scanned_files()
    assert len(files) > 20
    hits = [f"{p.relative_to(ROOT)}:{i}: {m.group(1)}" for p in files
            for i, line in enumerate(_without_v1_tables(p).splitlines(), 1) for m in pattern.finditer(line)]
    assert not hits, hits


def test_the_scan_finds_an_old_name():
    """The scan above would see a use, and it blanks out only the _V1 tables."""
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _old_names()), key=len, reverse=True)) + r")\b")
    assert all(pattern.search(use) for use in USES_V1)
    assert not pattern.search('{"refine_levels_mm": [3.0], "refine_smoothing_passes": 2, "convex_smoothing_passes": 2}')
    me = Path(__file__)
    assert pattern.search(me.read_text()) and not pattern.search(_without_v1_tables(me))
    assert "def test_the_scan_finds_an_old_name" in _without_v1_tables(me)


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
    adam = get_method("adam").config_cls.from_dict({"refine_levels_mm": [8.0], "refine_iterations": [5], "refine_learning_rates": [1.0]})
    r = Refinement.of(adam, residual=False, label="adam")
    assert (r.refine_levels_mm, r.refine_iterations, r.refine_learning_rates, r.residual, r.folding_weight) == ((8.0,), (5,), (1.0,), False, 0.0)
    convex = get_method("convex").config_cls()
    rc = Refinement.of(convex)
    assert rc.mask_dilation_mm == convex.mask_dilation_mm == 4.0 and rc.refine_smoothing_passes == convex.refine_smoothing_passes
    net = get_method("mlvirnet").config_cls()
    assert not Refinement.of(net).enabled  # the network alone by default
    assert Refinement.of(get_method("mlvirnet").config_cls.from_dict({"refine_iterations": 30})).enabled
    assert not Refinement.of(get_method("convex").config_cls.from_dict({"refine_levels_mm": [], "refine_iterations": [],
                                                                         "refine_learning_rates": []})).enabled
    with pytest.raises(DeepLungRegError, match="non-empty"):
        get_method("adam").config_cls.from_dict({"refine_levels_mm": [], "refine_iterations": [], "refine_learning_rates": []})


def _image(seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    return Image((rng.normal(size=(8, 8, 8)) * 100 - 600).astype(np.float32), Geometry((8, 8, 8), (2.0, 2.0, 2.0)))


def test_a_registration_job_is_checked_once_when_it_is_made():
    f, m = _image(0), _image(1)
    job = RegistrationJob(f, m, "adam", config={"refine_iterations": [5, 5, 5]})
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
