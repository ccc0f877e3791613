"""The test suite's own markers: every test that needs chromium/Playwright is marked ``browser``, every test
that needs Dask distributed ``dask``, and every test that imports ``slicer`` takes the ``slicer_core`` fixture
(conftest then marks it ``slicer``) or is marked ``slicer``. A static walk over Testing/pytest: a test's
needs are read from its own source and from the fixtures it takes, through the fixtures they take."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

#: what a test's source (or a fixture's it takes) says when it needs each optional component
NEEDS = {
    "browser": re.compile(r"playwright|chromium"),
    "dask": re.compile(r'importorskip\(\s*"distributed"|\bdistributed\.|LocalCluster|\[\s*"batch"\s*,|"DeepLungRegLib\.cli",\s*"batch"'),
    "slicer": re.compile(r"^\s*(import slicer\b|from slicer\b)|\bslicer_core\b", re.M),
}


def _marks(decorators: list[ast.expr]) -> set[str]:
    """The ``pytest.mark.X`` names among decorators (or the elements of a ``pytestmark`` value)."""
    names = set()
    for d in decorators:
        for node in ast.walk(d):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
                names.add(node.attr)
    return names


def _is_fixture(node: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in node.decorator_list)


class Module:
    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text()
        self.lines = self.text.splitlines()
        self.tree = ast.parse(self.text, str(path))
        self.fixtures: dict[str, ast.FunctionDef] = {}
        self.imported: dict[str, str] = {}  # name -> helper module it comes from
        self.marks: set[str] = set()
        self.module_needs = ""
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef) and _is_fixture(node):
                self.fixtures[node.name] = node
            elif isinstance(node, ast.ImportFrom) and node.module and (node.module == "conftest" or node.module.startswith("helpers_")):
                for a in node.names:
                    self.imported[a.asname or a.name] = node.module
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
                self.marks |= _marks([node.value])
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            elif not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
                self.module_needs += self.source(node) + "\n"  # module-level code, e.g. importorskip

    def source(self, node: ast.AST) -> str:
        return "\n".join(self.lines[node.lineno - 1:node.end_lineno])

    def tests(self):
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield node, set()
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                for sub in node.body:
                    if isinstance(sub, ast.FunctionDef) and sub.name.startswith("test_"):
                        yield sub, _marks(node.decorator_list)


MODULES = {p.stem: Module(p) for p in sorted(HERE.glob("*.py")) if p.name.startswith(("test_", "helpers_")) or p.name == "conftest.py"}


def _fixture(module: Module, name: str) -> tuple[Module, ast.FunctionDef] | None:
    """Where a fixture a test of ``module`` takes is defined: the module itself, a helper it imports it from, or conftest."""
    if name in module.fixtures:
        return module, module.fixtures[name]
    if name in module.imported and module.imported[name] in MODULES:
        return _fixture(MODULES[module.imported[name]], name)
    conftest = MODULES["conftest"]
    return (conftest, conftest.fixtures[name]) if name in conftest.fixtures else None


def _needs_text(module: Module, node: ast.FunctionDef, seen: set[tuple[str, str]]) -> str:
    """The source of a test or fixture and of every fixture it takes, transitively."""
    text = module.source(node)
    for arg in node.args.args:
        found = _fixture(module, arg.arg)
        if found is None or (found[0].path.name, arg.arg) in seen:
            continue
        seen.add((found[0].path.name, arg.arg))
        text += "\n" + (arg.arg if arg.arg == "slicer_core" else _needs_text(*found, seen))
    return text


def unmarked(names=None) -> list[str]:
    problems = []
    for name, module in MODULES.items():
        if names is not None and name not in names:
            continue
        if not name.startswith("test_") or name == "test_suite_markers":
            continue
        for test, class_marks in module.tests():
            marks = _marks(test.decorator_list) | class_marks | module.marks
            text = module.module_needs + _needs_text(module, test, set())
            for marker, pattern in NEEDS.items():
                if not pattern.search(text):
                    continue
                if marker == "slicer":
                    if "slicer_core" in text or "slicer" in marks:
                        continue  # conftest marks slicer_core's tests; an explicit mark is as good
                elif marker in marks:
                    continue
                problems.append(f"{module.path.name}::{test.name} needs {marker} but is not marked @pytest.mark.{marker}")
    return problems


def test_every_test_that_needs_an_optional_component_is_marked_with_it():
    problems = unmarked()
    assert not problems, "\n".join(problems)


def test_the_walk_sees_a_need_through_a_fixture(tmp_path, monkeypatch):
    """A fixture that starts a LocalCluster makes the tests that take it need dask; the mark clears it."""
    path = tmp_path / "test_fake.py"
    path.write_text('import pytest\n\n@pytest.fixture\ndef client():\n    return distributed.LocalCluster()\n\n'
                    'def test_a(client):\n    pass\n\n@pytest.mark.dask\ndef test_b(client):\n    pass\n\n'
                    'def test_c(tmp_path):\n    from playwright.sync_api import sync_playwright\n')
    monkeypatch.setitem(MODULES, "test_fake", Module(path))
    problems = unmarked({"test_fake"})
    assert problems == ["test_fake.py::test_a needs dask but is not marked @pytest.mark.dask",
                        "test_fake.py::test_c needs browser but is not marked @pytest.mark.browser"]


@pytest.mark.parametrize("marker", ["slow", "slicer", "browser", "dask"])
def test_the_markers_are_registered(pytestconfig, marker):
    assert any(line.split(":")[0] == marker for line in pytestconfig.getini("markers"))
