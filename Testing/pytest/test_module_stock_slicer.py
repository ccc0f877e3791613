"""The Slicer module's path on what a stock Slicer has (issue 27): every DeepLungRegLib module that the Slicer
module and its worker import (transitively) imports at module level only the standard library and
:data:`DeepLungRegLib.slicer_python.SLICER_PACKAGES`."""

from __future__ import annotations

import ast
from pathlib import Path

from DeepLungRegLib.slicer_python import SLICER_PACKAGES, available_in_slicer


ROOT = Path(__file__).resolve().parents[2]


LIB = ROOT / "DeepLungRegLib"


MODULE = ROOT / "DeepLungReg" / "DeepLungReg.py"


# ----------------------------------------------------------------- the imports on the module's path
def _module_file(name: str) -> Path | None:
    """The file of DeepLungRegLib module ``name`` (dotted), or None when it is not one of ours."""
    parts = name.split(".")
    if parts[0] != "DeepLungRegLib":
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = current.split(".") if is_package else current.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports(tree: ast.AST, current: str, is_package: bool, module_level: bool) -> list[tuple[str, int]]:
    """The modules imported in ``tree`` (``module_level``: not inside functions, nor under ``if TYPE_CHECKING``),
    with their lines; ``from pkg import name`` also yields ``pkg.name`` (a submodule when it is one)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if module_level and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.extend((".".join(parts[: i + 1]), node.lineno) for i in range(len(parts)))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, current, is_package)
            if base == "__future__":
                return
            parts = base.split(".")
            found.extend((".".join(parts[: i + 1]), node.lineno) for i in range(len(parts)))
            found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names
                         if _module_file(f"{base}.{alias.name}") is not None)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _function_imports(path: Path, module: str, function: str) -> list[str]:
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return [name for name, _ in _imports(fn, module, False, module_level=False)]


def slicer_path_roots() -> list[str]:
    """What the Slicer module imports from DeepLungRegLib (anywhere in the file), and what ``deeplungreg worker`` runs."""
    module_tree = ast.parse(MODULE.read_text())
    roots = {name for name, _ in _imports(module_tree, "DeepLungReg", False, module_level=False)
             if name.startswith("DeepLungRegLib")}
    roots |= {"DeepLungRegLib.cli", "DeepLungRegLib.slicer_bridge.background", "DeepLungRegLib.worker"}
    roots |= set(_function_imports(LIB / "cli.py", "DeepLungRegLib.cli", "cmd_worker"))
    for request in ("register_request", "sequence_request"):
        roots |= set(_function_imports(LIB / "worker.py", "DeepLungRegLib.worker", request))
    return sorted(r for r in roots if r.startswith("DeepLungRegLib"))


def outside_imports(roots: list[str]) -> tuple[set[str], list[str]]:
    """Walk the module-level imports from ``roots`` through DeepLungRegLib; returns the modules visited and
    ``"module:line imports name"`` for every import that a stock Slicer lacks."""
    seen: set[str] = set()
    bad: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for imported, line in _imports(tree, name, path.name == "__init__.py", module_level=True):
            if imported.startswith("DeepLungRegLib"):
                if _module_file(imported) is not None:
                    todo.append(imported)
            elif not available_in_slicer(imported):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    return seen, sorted(set(bad))


def test_the_module_path_imports_only_what_slicer_bundles():
    """Everything the module and its worker import from the library, transitively, imports at module level only
    the standard library and what Slicer 5.8-5.12 bundle (one list: DeepLungRegLib.slicer_python)."""
    roots = slicer_path_roots()
    assert {"DeepLungRegLib.pipeline", "DeepLungRegLib.slicer_bridge.background", "DeepLungRegLib.worker"} <= set(roots)
    seen, bad = outside_imports(roots)
    # the walk reaches the registration itself (not only the front modules)
    for module in ("DeepLungRegLib.pipeline", "DeepLungRegLib.methods.convex", "DeepLungRegLib.slicer_bridge.workflow",
                   "DeepLungRegLib.io.outputs", "DeepLungRegLib.segmentation.lung_mask"):
        assert module in seen, module
    assert not bad, "imports at module level that a stock Slicer lacks:\n" + "\n".join(bad)
    # the Slicer module's own module-level imports likewise
    module_level = {name for name, _ in _imports(ast.parse(MODULE.read_text()), "DeepLungReg", False, module_level=True)}
    assert all(available_in_slicer(name) for name in module_level), sorted(n for n in module_level if not available_in_slicer(n))


def test_the_walk_catches_an_import_outside_the_list(tmp_path, monkeypatch):
    """The check itself: a module-level matplotlib/tqdm import on the path is reported, one inside a function is not."""
    assert not available_in_slicer("matplotlib.pyplot") and not available_in_slicer("tqdm")
    assert {"numpy", "scipy", "SimpleITK", "torch", "vtk"} <= SLICER_PACKAGES and available_in_slicer("json")
    source = "import numpy\nimport matplotlib.pyplot as plt\n\ndef f():\n    from tqdm import tqdm\n"
    tree = ast.parse(source)
    names = [n for n, _ in _imports(tree, "DeepLungRegLib.x", False, module_level=True)]
    assert "matplotlib" in names and "tqdm" not in names
