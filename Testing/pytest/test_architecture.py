"""The library's structure: imports run only downwards, one registry per concept, frames converted in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "DeepLungRegLib"
#: Lowest first: a package may import only those before it (and itself).
LAYERS = ["errors", "data", "options", "slicer_python", "memory", "device", "geometry", "io", "ops", "transforms", "features", "losses", "metrics", "keypoints",
          "segmentation", "simulation", "networks", "methods", "evaluation", "training", "report", "pipeline", "sequence", "worker", "batch", "slicer_bridge", "browser",
          "benchmark", "cli", "__init__"]


def _imports(path: Path):
    parts = path.relative_to(LIB).parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = list(parts[:-1])
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            full = base + [m for m in (node.module or "").split(".") if m] or base + [node.names[0].name]
            if not full:
                full = [node.names[0].name]
            yield node.lineno, full[0].removesuffix(".py")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("DeepLungRegLib."):
            yield node.lineno, node.module.split(".")[1]


def test_no_import_runs_upwards():
    rank = {n: i for i, n in enumerate(LAYERS)}
    upward = []
    for path in LIB.rglob("*.py"):
        me = path.relative_to(LIB).parts[0].removesuffix(".py")
        assert me in rank, f"{me} is not placed in LAYERS"
        for line, other in _imports(path):
            if other != me and rank.get(other, -1) > rank[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line} {me} -> {other}")
    assert not upward, upward


@pytest.mark.slow
def test_running_a_network_method_does_not_import_the_training_package():
    code = ("import sys; from DeepLungRegLib.methods import available_methods, get_method; "
            "import DeepLungRegLib.networks as n; assert set(n.network_names()) <= set(available_methods()); "
            "print('DeepLungRegLib.training' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_no_code_names_a_network_method_by_comparison():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in LIB.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if "cfg.method ==" in line or "cfg.method !=" in line]
    assert not hits, hits


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports, at module level or inside a function (not under ``TYPE_CHECKING``)."""
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}

    def resolve(base: list[str], names: list[str]) -> str | None:
        full = ".".join(base + names)
        while full and full not in modules:
            full = full.rpartition(".")[0]
        return full or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: set[str] = set()
        stack = [ast.parse(path.read_text(), str(path))]
        while stack:
            node = stack.pop()
            if _is_type_checking(node):
                continue
            stack.extend(ast.iter_child_nodes(node))
            targets: list[str | None] = []
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                mod = [m for m in (node.module or "").split(".") if m]
                targets = [resolve(base, mod + [a.name]) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve([], a.name.split(".")) for a in node.names]
            edges.update(t for t in targets if t and t != name and t.startswith("DeepLungRegLib"))
        graph[name] = edges
    return graph


def test_no_import_circle():
    """No two library modules import each other, directly or round a longer circle (deferred imports count too)."""
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        on_stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = on_stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_import_graph_sees_deferred_imports():
    """The circle check would see a function-level import (the kind the last two circles used)."""
    graph = _import_graph()
    assert "DeepLungRegLib.networks.registry" in graph["DeepLungRegLib.networks.config"]
    assert "DeepLungRegLib.slicer_bridge.nodes" in graph["DeepLungRegLib.slicer_bridge.review"]


def test_grid_sample_only_in_transforms():
    """Normalised grid_sample coordinates exist only inside the transforms package (one resampler, one point sampler)."""
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in LIB.rglob("*.py") if p.relative_to(LIB).parts[0] != "transforms"
            for i, line in enumerate(p.read_text().splitlines(), 1) if "grid_sample(" in line]
    assert not hits, hits


# ------------------------------------------------------------------- portable
UNIX_ONLY = {"resource", "fcntl", "termios", "tty", "pty", "pwd", "grp", "posix", "crypt", "syslog", "spwd", "nis", "curses",
             "readline", "posixpath"}


def test_no_unix_only_module_is_imported_anywhere_in_the_library():
    import ast

    offenders = []
    for path in [*(ROOT / "DeepLungRegLib").rglob("*.py"), *(ROOT / "DeepLungReg").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in UNIX_ONLY]
    assert not offenders, offenders
