"""The library's structure: imports run only downwards, one registry per concept, frames converted in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "DeepLungRegLib"
#: Lowest first: a package may import only those before it (and itself).
LAYERS = ["errors", "data", "options", "memory", "device", "geometry", "io", "ops", "transforms", "features", "losses", "metrics", "keypoints",
          "segmentation", "simulation", "networks", "methods", "evaluation", "training", "report", "pipeline", "batch", "slicer_bridge", "browser",
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
