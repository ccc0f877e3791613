"""Checks on the Slicer module that need no Slicer: the .ui, the widget names the
code uses, the parameter node's widgets, the CMake file lists and the index entry."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "DeepLungReg"
MODULE_PY = MODULE / "DeepLungReg.py"
UI = MODULE / "Resources" / "UI" / "DeepLungReg.ui"
METHOD_TABLE = MODULE / "Resources" / "MethodTable.json"


@pytest.fixture(scope="module")
def ui_tree() -> ET.ElementTree:
    return ET.parse(UI)  # raises if the .ui is not well-formed XML


@pytest.fixture(scope="module")
def module_ast() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


def _widget_names(tree: ET.ElementTree) -> set[str]:
    return {w.get("name") for w in tree.iter("widget")} | {w.get("name") for w in tree.iter("layout")}


def _cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"no set({variable} ...) in the CMake file"
    return [t for t in m.group(1).split() if not t.startswith("#")]


def test_ui_parses_and_is_a_qt_designer_file(ui_tree):
    root = ui_tree.getroot()
    assert root.tag == "ui" and root.find("class").text == "DeepLungReg"
    assert root.find("widget").get("class") == "qMRMLWidget"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("qMRML", "ctk"))} <= declared


def test_every_widget_the_code_uses_exists(ui_tree, module_ast):
    names = _widget_names(ui_tree)
    used = set()
    for node in ast.walk(module_ast):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            used.add(node.attr)
        # Names passed as strings, e.g. getattr(self.ui, "showWarpedButton").
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"[a-z]\w*(Button|Selector|ComboBox|Label|Table|TableView|Slider|CheckBox|LineEdit|Bar)", node.value):
            used.add(node.value)
    assert used, "the widget code uses no widgets?"
    missing = sorted(used - names)
    assert not missing, f"DeepLungReg.py uses widgets missing from DeepLungReg.ui: {missing}"


def _module_constant(module_ast: ast.Module, name: str):
    assign = next(n for n in module_ast.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name)
    return ast.literal_eval(assign.value)


def test_every_parameter_has_exactly_one_widget(ui_tree, module_ast):
    """Each parameter is bound to one widget of the .ui, or (the settings table, the segment selectors,
    which the parameter node wrapper cannot bind) written by the widget code from the widget named."""
    cls = next(n for n in module_ast.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegParameterNode")
    in_code = _module_constant(module_ast, "PARAMETERS_SET_IN_CODE")
    assert set(in_code.values()) <= _widget_names(ui_tree)
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)} - set(in_code)
    bound: dict[str, list[str]] = {}
    for w in ui_tree.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.setdefault(prop.find("string").text, []).append(w.get("name"))
    assert fields, "no parameter-node fields found"
    assert sorted(fields - set(bound)) == [], f"parameters without a widget: {sorted(fields - set(bound))}"
    assert sorted(set(bound) - fields) == [], f"widgets bound to unknown parameters: {sorted(set(bound) - fields)}"
    assert all(len(v) == 1 for v in bound.values()), {k: v for k, v in bound.items() if len(v) > 1}


def test_module_has_the_four_classes_and_imports_no_library_at_load(module_ast):
    classes = {n.name: n for n in module_ast.body if isinstance(n, ast.ClassDef)}
    for name, base in (("DeepLungReg", "ScriptedLoadableModule"), ("DeepLungRegWidget", "ScriptedLoadableModuleWidget"),
                       ("DeepLungRegLogic", "ScriptedLoadableModuleLogic"), ("DeepLungRegTest", "ScriptedLoadableModuleTest")):
        assert name in classes and base in {getattr(b, "id", None) for b in classes[name].bases}, name
    # Dependencies are installed at the point of use, never at import: no torch or library import at the top.
    top = []
    for n in module_ast.body:
        if isinstance(n, ast.Import):
            top += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            top.append(n.module)
    assert not [m for m in top if m.split(".")[0] in {"torch", "DeepLungRegLib", "scipy", "numpy", "SimpleITK"}], top
    logic = classes["DeepLungRegLogic"]
    register = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "register")
    args = [a.arg for a in register.args.args]
    # one RegistrationNodes (DeepLungRegLib.slicer_bridge) of inputs and outputs, the method, and method settings as keywords
    assert args[:3] == ["self", "nodes", "method"] and register.args.kwarg is not None


def test_module_cmake_lists_every_module_file():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    scripts = [s.replace("${MODULE_NAME}", "DeepLungReg") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "DeepLungReg") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    assert sorted(scripts) == sorted(p.name for p in MODULE.glob("*.py"))
    on_disk = sorted(str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file())
    assert sorted(resources) == on_disk
    lib = _cmake_list(text, "DeepLungRegLib_PYTHON_SCRIPTS")
    lib_on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "DeepLungRegLib").rglob("*.py"))
    assert sorted(lib) == lib_on_disk, (f"DeepLungReg/CMakeLists.txt is out of step with DeepLungRegLib/: "
                                        f"missing {sorted(set(lib_on_disk) - set(lib))}, extra {sorted(set(lib) - set(lib_on_disk))}")
    data = _cmake_list(text, "DeepLungRegLib_DATA")
    data_on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "DeepLungRegLib" / "data").rglob("*")
                          if p.is_file() and p.suffix not in (".py", ".pyc"))
    assert sorted(data) == data_on_disk, f"DeepLungReg/CMakeLists.txt installs {data}, DeepLungRegLib/data holds {data_on_disk}"


def test_extension_cmake_and_tests_are_wired():
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(DeepLungReg)" in top
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch', top)
    for url_var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in re.search(rf'set\({url_var}\s+"([^"]+)"', top).group(1).split():
            rel = url.split("/main/", 1)[1]
            assert (ROOT / rel).is_file(), f"{url_var} points at {rel}, which is not in the repository"
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text()
    py = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    m = re.search(r"slicer_add_python_unittest\(SCRIPT\s+(\S+)\)", py)
    assert m and m.group(1).endswith("${MODULE_NAME}.py")


#: The rules of Slicer's extension catalog entry schema v1.0.1 (Slicer/Schemas/slicer-extension-catalog-
#: entry-schema-v1.0.1.json, the version our entry names), written out here so that the test runs offline.
CATALOG_ENTRY_SCHEMA_V1_0_1 = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "enum": [1, 3, 5]},
    },
}


def test_extensions_index_entry_is_valid_against_the_catalog_schema():
    import jsonschema

    entry = json.loads((ROOT / "ExtensionsIndex" / "DeepLungReg.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    jsonschema.Draft7Validator.check_schema(CATALOG_ENTRY_SCHEMA_V1_0_1)
    jsonschema.validate(entry, CATALOG_ENTRY_SCHEMA_V1_0_1, cls=jsonschema.Draft7Validator)
    # the validator does reject what the catalog rejects
    for broken in ({**entry, "tier": 2}, {**entry, "scm_type": "svn"}, {**entry, "description": "x"},
                   {k: v for k, v in entry.items() if k != "scm_url"}, {**entry, "build_dependencies": "PyTorch"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, CATALOG_ENTRY_SCHEMA_V1_0_1, cls=jsonschema.Draft7Validator)
    # and it agrees with the extension's CMake description
    top = (ROOT / "CMakeLists.txt").read_text()
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"([^"]+)"', top).group(1).split() == entry["build_dependencies"]
    assert entry["scm_url"].removesuffix(".git") == re.search(r'set\(EXTENSION_HOMEPAGE\s+"([^"]+)"', top).group(1)


def test_lung_segments_are_chosen_with_the_segment_selector(module_ast, ui_tree):
    """The .ui has a multi-selection segment selector per mask (no typed names); the parameter node keeps
    the ticked segment IDs as a JSON list, and segments typed by name in older scenes still read."""
    from typing import Optional

    selectors = {w.get("name"): w for w in ui_tree.iter("widget") if w.get("class") == "qMRMLSegmentSelectorWidget"}
    assert sorted(selectors) == ["fixedMaskSegmentsSelector", "movingMaskSegmentsSelector"]
    for w in selectors.values():
        props = {p.get("name"): p[0].text for p in w.findall("property")}
        assert props["multiSelection"] == "true" and props["segmentationNodeSelectorVisible"] == "false"
    assert not [w.get("name") for w in ui_tree.iter("widget") if "Segments" in (w.get("name") or "") and w.get("class") == "QLineEdit"]
    # each selector gets the scene (as every MRML widget of the .ui does)
    receivers = {c.find("receiver").text for c in ui_tree.getroot().iter("connection")}
    assert set(selectors) <= receivers
    segments = _module_function(module_ast, "segmentList", {"Optional": Optional, "json": json})
    assert segments("") is None and segments("[]") is None and segments(" , ") is None
    assert segments('["Segment_1", "Segment_3"]') == ["Segment_1", "Segment_3"]
    assert segments("left lung, right lung,") == ["left lung", "right lung"]  # an older scene's typed names


def test_method_choices_match_the_registry(module_ast):
    from DeepLungRegLib.methods import available_methods

    choices = _module_constant(module_ast, "METHOD_CHOICES")
    assert sorted(choices) == sorted(available_methods()), "update METHOD_CHOICES in DeepLungReg/DeepLungReg.py"
    table = json.loads(METHOD_TABLE.read_text(encoding="utf-8"))
    assert sorted(table["methods"]) == sorted(choices)
    cls = next(n for n in module_ast.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegParameterNode")
    # Combo boxes bind to str parameters only through a Choice annotation.
    for n in cls.body:
        if isinstance(n, ast.AnnAssign) and n.target.id in ("method", "device"):
            assert "Choice(" in ast.unparse(n.annotation)
    # The module's default method is the library's.
    from DeepLungRegLib.options import DEFAULT_METHOD

    method = next(n for n in cls.body if isinstance(n, ast.AnnAssign) and n.target.id == "method")
    assert ast.literal_eval(method.value) == DEFAULT_METHOD
    logic = next(n for n in module_ast.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegLogic")
    for fn in (f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name in ("register", "startRegistration")):
        defaults = dict(zip([a.arg for a in fn.args.args][-len(fn.args.defaults):], fn.args.defaults))
        assert ast.literal_eval(defaults["method"]) == DEFAULT_METHOD, fn.name


def test_the_library_data_is_package_data():
    """Every file under DeepLungRegLib/data goes into the wheel (pyproject's package-data globs), and the
    library finds the weights there (importlib.resources), not in a folder beside the package."""
    import fnmatch

    from DeepLungRegLib.data import weights_dir
    from DeepLungRegLib.networks import network_names
    from DeepLungRegLib.networks.registry import WEIGHTS_DIR, shipped_weights

    globs = json.loads(re.search(r'^"DeepLungRegLib\.data" = (\[.*\])$', (ROOT / "pyproject.toml").read_text(), re.M).group(1))
    data = ROOT / "DeepLungRegLib" / "data"
    files = [str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)
    assert WEIGHTS_DIR == weights_dir() == data / "weights"
    assert all(shipped_weights(name).parent == data / "weights" for name in network_names())


def _module_function(module_ast: ast.Module, name: str, namespace: dict):
    """A module-level function of the Slicer module, compiled alone (the module itself needs Slicer)."""
    fn = next(n for n in module_ast.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(MODULE_PY), "exec"), namespace)
    return namespace[name]


def test_pip_requirements_are_checked_by_version(module_ast):
    from typing import Optional

    unmet = _module_function(module_ast, "unmetRequirements", {"Optional": Optional})
    assert unmet(["numpy>=1.0", "scipy"]) == []
    assert unmet(["numpy>=999", "numpy<1.0", "surely-not-a-package-deeplungreg>=1"]) == [
        "numpy>=999", "numpy<1.0", "surely-not-a-package-deeplungreg>=1"]
    assign = next(n for n in module_ast.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PIP_REQUIREMENTS")
    assert "tqdm" not in ast.literal_eval(assign.value)  # the command line's progress bar is not installed into Slicer


def test_a_torch_that_does_not_load_gets_a_message_that_says_what_to_do(module_ast, monkeypatch):
    """On Windows a torch build that does not fit fails with OSError (a DLL), not ImportError."""
    import importlib.abc
    import sys
    from typing import Optional

    load_error = _module_function(module_ast, "torchLoadError", {"Optional": Optional})

    class _Fails(importlib.abc.MetaPathFinder):
        def __init__(self, exc):
            self.exc = exc

        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                raise self.exc
            return None

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    for exc, words in ((OSError("[WinError 126] c10.dll"), "does not load on this computer"),
                       (ModuleNotFoundError("No module named 'torch'"), "install the 'PyTorch' extension")):
        finder = _Fails(exc)
        sys.meta_path.insert(0, finder)
        try:
            assert words in load_error()
        finally:
            sys.meta_path.remove(finder)


def test_license_and_help_link():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and 'license = "BSD-3-Clause"' in (ROOT / "pyproject.toml").read_text()
    assert "README_URL" in MODULE_PY.read_text() and "user's guide" in MODULE_PY.read_text()


def test_the_sample_pair_is_offered_in_sample_data(module_ast, monkeypatch):
    """At startup the module registers the sample pair with the Sample Data module: both volumes and both
    point lists, from files that exist, under the node names the module picks them by, with a thumbnail."""
    import logging
    import os
    import sys
    import types

    from DeepLungRegLib.data import SAMPLE_PAIR, sample_path

    calls = []
    logic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=logic))
    register = _module_function(module_ast, "registerSampleData", {"os": os, "logging": logging, "__file__": str(MODULE_PY)})
    register()
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in MODULE_PY.read_text()
    (kw,) = calls
    assert kw["category"] == "DeepLungReg" and Path(kw["thumbnailFileName"]).is_file()
    assert kw["fileNames"] == [name for name, _, _ in SAMPLE_PAIR]
    assert kw["nodeNames"] == [node for _, node, _ in SAMPLE_PAIR]
    assert kw["loadFileType"] == ["VolumeFile", "VolumeFile", "MarkupsFile", "MarkupsFile"]
    from urllib.parse import unquote, urlparse

    for uri, name in zip(kw["uris"], kw["fileNames"]):
        path = Path(unquote(urlparse(uri).path))
        assert path == sample_path(name) and path.is_file(), uri
    # the thumbnail ships with the module
    resources = [s.replace("${MODULE_NAME}", "DeepLungReg") for s in _cmake_list((MODULE / "CMakeLists.txt").read_text(), "MODULE_PYTHON_RESOURCES")]
    assert str(Path(kw["thumbnailFileName"]).relative_to(MODULE)) in resources


def test_the_sample_pair_files_are_a_pair():
    """The inhale is the demo CT; the exhale is on its grid, int16, gzip; the landmark lists hold the same
    labels in the same order, and the pair is a few MB."""
    import numpy as np

    from DeepLungRegLib import read_image, read_landmarks
    from DeepLungRegLib.data import DEMO_CT, SAMPLE_PAIR, sample_path

    inhale, exhale, fixed_points, moving_points = (sample_path(name) for name, _, _ in SAMPLE_PAIR)
    assert inhale == sample_path(DEMO_CT)
    a, b = read_image(inhale), read_image(exhale)
    assert b.geometry.same_as(a.geometry) and b.array.dtype == np.int16 and not np.array_equal(a.array, b.array)
    header = exhale.read_bytes()[:1000].split(b"\n\n")[0].decode().splitlines()
    assert "encoding: gzip" in header and "type: short" in header, header
    docs = [json.loads(p.read_text())["markups"][0] for p in (fixed_points, moving_points)]
    labels = [[c["label"] for c in d["controlPoints"]] for d in docs]
    assert labels[0] == labels[1] and len(labels[0]) >= 50
    assert all(d["type"] == "Fiducial" for d in docs)
    f, m = read_landmarks(fixed_points), read_landmarks(moving_points)
    assert f.shape == m.shape and 3.0 < np.linalg.norm(m - f, axis=1).mean() < 15.0
    assert sum(sample_path(name).stat().st_size for name, _, _ in SAMPLE_PAIR) < 8e6


def test_the_module_picks_the_sample_pair_only_when_no_moving_volume_is_chosen(module_ast):
    """With the sample pair in the scene, entering the module chooses inhale, exhale and both landmark lists,
    unless the user has chosen a moving volume already."""
    import types

    logic = next(n for n in module_ast.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegLogic")
    fn = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "useSamplePair")
    namespace = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(MODULE_PY), "exec"), namespace)
    use = namespace["useSamplePair"]
    pair = {"fixed": "inhale", "moving": "exhale", "fixed_landmarks": "F", "moving_landmarks": "M"}
    fake = types.SimpleNamespace(samplePairNodes=lambda: pair)
    empty = types.SimpleNamespace(fixedVolume="first volume", movingVolume=None, fixedLandmarks=None, movingLandmarks=None)
    use(fake, empty)
    assert (empty.fixedVolume, empty.movingVolume, empty.fixedLandmarks, empty.movingLandmarks) == ("inhale", "exhale", "F", "M")
    chosen = types.SimpleNamespace(fixedVolume="a", movingVolume="b", fixedLandmarks=None, movingLandmarks=None)
    use(fake, chosen)
    assert (chosen.fixedVolume, chosen.movingVolume, chosen.fixedLandmarks) == ("a", "b", None)
    use(types.SimpleNamespace(samplePairNodes=lambda: None), empty := types.SimpleNamespace(fixedVolume=None, movingVolume=None))
    assert empty.movingVolume is None
    use(fake, None)  # no parameter node yet
    assert "self.logic.useSamplePair(self._parameterNode)" in MODULE_PY.read_text()


# ----------------------------------------------------------------- method settings
def _method_table_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_method_table", ROOT / "scripts" / "make_method_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_method_table_is_in_step_with_the_option_declarations():
    """The module reads descriptions and settings from Resources/MethodTable.json (no torch at opening); made
    again here from the declarations, it is the same, byte for byte (else: python scripts/make_method_table.py)."""
    script = _method_table_script()
    again = script.build_table()
    assert script.TABLE_PATH == METHOD_TABLE
    on_disk = METHOD_TABLE.read_text(encoding="utf-8")
    assert json.loads(on_disk) == again and on_disk == script.render(again), \
        "DeepLungReg/Resources/MethodTable.json is out of step: run python scripts/make_method_table.py"
    from DeepLungRegLib.methods import available_methods, method_settings
    from DeepLungRegLib.options import DEFAULT_METHOD

    assert again["default_method"] == DEFAULT_METHOD
    assert {m: e["description"] for m, e in again["methods"].items()} == available_methods()
    for method, entry in again["methods"].items():
        assert [r["name"] for r in entry["settings"]] == [s["name"] for s in method_settings(method)]
    # a changed declaration shows as a difference
    import dataclasses

    from DeepLungRegLib.methods import get_method

    cls = get_method("convex").config_cls
    field = next(f for f in dataclasses.fields(cls) if f.name == "temperature")
    changed = dict(field.metadata, hi=20.0)
    object.__setattr__(field, "metadata", changed)
    try:
        assert script.build_table() != again
    finally:
        object.__setattr__(field, "metadata", dict(changed, hi=10.0))


def _editor_functions(module_ast):
    from typing import Optional

    namespace = {"Optional": Optional, "json": json, "_": lambda text: text, "os": __import__("os"),
                 "SPINBOX_MAX": _module_constant(module_ast, "SPINBOX_MAX")}
    for name in ("listText", "parseListText", "editorSpec", "storedMethodOptions"):
        _module_function(module_ast, name, namespace)
    return namespace


def test_every_setting_of_every_method_has_a_typed_editor_with_its_declared_default_and_range(module_ast):
    """Built from the method table as the widget builds it: a spin box per number with the declared range and a
    default it shows exactly, a check box per switch, a combo box per choice, a checked line edit per list."""
    import dataclasses

    from DeepLungRegLib.methods import available_methods, get_method

    ns = _editor_functions(module_ast)
    table = json.loads(METHOD_TABLE.read_text(encoding="utf-8"))
    seen = set()
    for method in available_methods():
        rows = {r["name"]: r for r in table["methods"][method]["settings"]}
        fields = dataclasses.fields(get_method(method).config_cls)
        assert sorted(rows) == sorted(f.name for f in fields), method
        for f in fields:
            spec = ns["editorSpec"](rows[f.name])
            lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
            default, kind = f.default, str(f.type).replace(" ", "")
            where = f"{method}.{f.name}"
            seen.add(spec["widget"])
            if kind == "int":
                assert spec["widget"] == ("QDoubleSpinBox" if hi > ns["SPINBOX_MAX"] else "QSpinBox"), where
                assert spec["decimals"] == 0 and (spec["minimum"], spec["maximum"]) == (lo, hi), where
            elif kind == "float":
                assert spec["widget"] == "QDoubleSpinBox" and (spec["minimum"], spec["maximum"]) == (lo, hi), where
                assert round(default, spec["decimals"]) == default and round(lo, spec["decimals"]) == lo, where
            elif kind == "bool":
                assert spec["widget"] == "QCheckBox", where
            elif kind == "str" and choices:
                assert spec["widget"] == "QComboBox" and spec["items"] == list(choices) and default in choices, where
            elif kind == "str":
                assert spec["widget"] == "QLineEdit" and spec["kind"] == "text", where
            elif kind.startswith("tuple["):
                assert spec["widget"] == "QLineEdit" and (spec["minimum"], spec["maximum"]) == (lo, hi), where
                # the line edit's text of the default reads back as the default
                assert ns["parseListText"](ns["listText"](default), spec["kind"], lo, hi) == list(default), where
            else:
                raise AssertionError(f"{where}: no editor for type {kind}")
            assert spec["default"] == (list(default) if isinstance(default, tuple) else default), where
            if lo is not None:
                assert lo <= (min(default) if isinstance(default, tuple) and default else default if not isinstance(default, tuple) else lo) and spec["rangeText"]
    assert seen == {"QSpinBox", "QDoubleSpinBox", "QCheckBox", "QComboBox", "QLineEdit"}
    # the widget code makes each of these widgets
    make = next(f for c in module_ast.body if isinstance(c, ast.ClassDef) and c.name == "DeepLungRegWidget"
                for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "_makeEditor")
    assert seen - {"QLineEdit"} <= {n.value for n in ast.walk(make) if isinstance(n, ast.Constant)}


def test_list_settings_are_checked_and_kept_settings_read_back(module_ast):
    ns = _editor_functions(module_ast)
    parse = ns["parseListText"]
    assert parse("6, 4 2.5", "float_list", 0.5, 32) == [6.0, 4.0, 2.5]
    assert parse("80,60", "int_list", 0, 5000) == [80, 60]
    for text, kind, words in (("", "float_list", "at least"), ("6, x", "float_list", "x is not a number"),
                              ("8, 2.5", "int_list", "2.5 is not a whole number"), ("64", "float_list", "64 is outside")):
        with pytest.raises(ValueError, match=words):
            parse(text, kind, 0.5, 32)
    stored = ns["storedMethodOptions"]
    assert stored("") == {} and stored("regularisation=2; iterations=5") == {} and stored("[1]") == {}
    assert stored('{"convex": {"regularisation": 2.0}, "x": 3}') == {"convex": {"regularisation": 2.0}}


# ---------------------------------------------------------------------- translation
#: Qt setters and Slicer dialogs whose text arguments a user reads.
TEXT_CALLS = {"setText", "setToolTip", "setWindowTitle", "setPlaceholderText", "setStatusTip", "setTitle",
              "setHorizontalHeaderLabels", "setVerticalHeaderLabels", "addItem", "setItemText", "setLabelText",
              "errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay",
              "tryWithErrorDisplay", "getOpenFileName", "getSaveFileName", "getExistingDirectory", "QLabel", "QPushButton"}
#: Widget and module properties that a user reads.
TEXT_PROPERTIES = {"text", "toolTip", "placeholderText", "windowTitle", "statusTip", "title", "helpText", "acknowledgementText"}


def _untranslated(node: ast.AST) -> list[ast.AST]:
    """String literals in an expression that reach the user without ``_()``/``translate()``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node] if re.search(r"[A-Za-z]{2}", node.value) else []
    if isinstance(node, ast.JoinedStr):
        return [node]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [n for e in node.elts for n in _untranslated(e)]
    if isinstance(node, ast.BinOp):
        return _untranslated(node.left) + _untranslated(node.right)
    if isinstance(node, ast.IfExp):
        return _untranslated(node.body) + _untranslated(node.orelse)
    return []


def untranslated_text(tree: ast.AST) -> list[str]:
    """Where user-visible text is a bare literal (``file line: code``), outside the self-test class; and
    ``_()`` of an f-string (formatted before the translation is looked up)."""
    problems = []
    skip = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name.endswith("Test") for n in ast.walk(c)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        found = []
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("_", "tr") and node.args and isinstance(node.args[0], ast.JoinedStr):
                found.append(node)
            if name in TEXT_CALLS:
                found += [n for a in node.args for n in _untranslated(a)]
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Attribute) and t.attr in TEXT_PROPERTIES for t in node.targets):
                found += _untranslated(node.value)
        problems += [f"line {n.lineno}: {ast.unparse(n)[:70]}" for n in found]
    return problems


def test_user_visible_text_goes_through_tr(module_ast):
    """As the Extension Wizard template: ``from slicer.i18n import tr as _``; every text set on a widget or shown
    in a dialog is ``_("...")`` (with ``.format`` for values), so that it can be translated."""
    imports = {(n.module, a.name, a.asname) for n in module_ast.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("slicer.i18n", "tr", "_") in imports and ("slicer.i18n", "translate", None) in imports
    problems = untranslated_text(module_ast)
    assert not problems, "user-visible text without _() in DeepLungReg.py:\n" + "\n".join(problems)
    # the scan does find what it looks for
    bad = ast.parse('self.ui.statusLabel.text = "Done."\nw.setToolTip(f"{n} points")\nx = _(f"{n} points")\n'
                    'slicer.util.errorDisplay("Failed: " + str(e))\nok = _("Done.")\nw.setText(name)')
    assert len(untranslated_text(bad)) == 4


def test_segments_saved_by_name_in_older_scenes_are_found_by_id(module_ast):
    """Older scenes saved lung segments by name (any case); the selector works with IDs: names become the IDs the
    segmentation has, IDs stay, what it lacks is dropped, and nothing is found without a segmentation."""
    import types

    ids_of = _module_function(module_ast, "segmentIDsOf", {})
    segments = {"Segment_1": "Left lung", "Segment_2": "right lung", "Segment_7": "Trachea"}
    order = list(segments)

    class Segmentation:
        def GetSegment(self, segment_id):
            return segments.get(segment_id) and types.SimpleNamespace(GetName=lambda: segments[segment_id])

        def GetNumberOfSegments(self):
            return len(order)

        def GetNthSegment(self, i):
            return types.SimpleNamespace(GetName=lambda: segments[order[i]])

        def GetNthSegmentID(self, i):
            return order[i]

    node = types.SimpleNamespace(GetSegmentation=Segmentation)
    assert ids_of(node, ["left lung", "RIGHT LUNG"]) == ["Segment_1", "Segment_2"]
    assert ids_of(node, ["Segment_7", "left lung", "Segment_7", "spleen"]) == ["Segment_7", "Segment_1"]
    assert ids_of(None, ["left lung"]) == []


# ---------------------------------------------------------------------- 4D-CT
def test_the_4dct_section_runs_in_the_background_polled_by_a_timer(ui_tree, module_ast):
    """The 4D-CT section: a sequence selector, an output folder, the reference phase (-1: automatic), the start, Apply,
    Cancel, a progress bar and a status line, bound to the parameter node; the widget starts the run in the worker
    process and a QTimer polls it (never a blocking wait in the GUI), the Logic does the work."""
    from DeepLungRegLib.sequence.run import STARTS

    assert _module_constant(module_ast, "SEQUENCE_STARTS") == list(STARTS)
    section = next(w for w in ui_tree.iter("widget") if w.get("name") == "sequenceCollapsibleButton")
    inside = {w.get("name"): w for w in section.iter("widget")}
    expected = {"sequenceInputSelector": "qMRMLNodeComboBox", "sequenceOutputFolderButton": "ctkDirectoryButton",
                "sequenceReferenceSpinBox": "QSpinBox", "sequenceStartComboBox": "QComboBox", "sequenceApplyButton": "QPushButton",
                "sequenceCancelButton": "QPushButton", "sequenceProgressBar": "QProgressBar", "sequenceStatusLabel": "QLabel"}
    assert {name: inside[name].get("class") for name in expected if name in inside} == expected

    def prop(name, key):
        p = next(p for p in inside[name].findall("property") if p.get("name") == key)
        return [e.text for e in p.iter() if e.text and e.text.strip()]

    assert prop("sequenceInputSelector", "nodeTypes") == ["vtkMRMLSequenceNode"]
    assert prop("sequenceReferenceSpinBox", "minimum") == ["-1"] and prop("sequenceReferenceSpinBox", "specialValueText")
    bound = {n: prop(n, "SlicerParameterName")[0] for n in expected if any(p.get("name") == "SlicerParameterName"
                                                                          for p in inside[n].findall("property"))}
    assert bound == {"sequenceInputSelector": "sequenceInput", "sequenceOutputFolderButton": "sequenceOutputFolder",
                     "sequenceReferenceSpinBox": "sequenceReference", "sequenceStartComboBox": "sequenceStart"}
    assert "sequenceInputSelector" in {c.find("receiver").text for c in ui_tree.getroot().iter("connection")}
    widget = next(n for n in module_ast.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegWidget")
    methods = {f.name: ast.unparse(f) for f in widget.body if isinstance(f, ast.FunctionDef)}
    assert "startSequenceFromParameterNode" in methods["onSequenceApplyButton"] and "_sequenceTimer.start()" in methods["onSequenceApplyButton"]
    assert ".poll(" in methods["onSequencePoll"] and "finishSequence" in methods["onSequencePoll"]
    assert "QTimer" in methods["setup"] and "'timeout()', self.onSequencePoll" in methods["setup"]
    assert ".cancel()" in methods["onSequenceCancelButton"] and "onSequenceCancelButton" in methods["onSceneStartClose"]
    assert not [name for name, text in methods.items() if "Sequence" in name and ".wait(" in text]
    logic = next(n for n in module_ast.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegLogic")
    assert {"startSequence", "startSequenceFromParameterNode", "finishSequence", "registerSequence"} <= {
        f.name for f in logic.body if isinstance(f, ast.FunctionDef)}
