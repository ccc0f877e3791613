"""The Slicer module's path on what a stock Slicer has (issue 27).

* Every DeepLungRegLib module that the Slicer module and its worker import (transitively) imports at
  module level only the standard library and :data:`DeepLungRegLib.slicer_python.SLICER_PACKAGES`.
* The module's background path (BackgroundRegistration on slicer-core nodes) runs a worker on a Python
  that has only torch, numpy, scipy and SimpleITK, started through a launcher that runs that Python as a
  child process, as Slicer's ``PythonSlicer`` does; a cancelled run leaves no process of its group.
  ``scripts/make_stock_python.sh`` builds that Python (``.ci/run`` does); without it these tests skip,
  and under DEEPLUNGREG_REQUIRE_SHARED=1 (CI) they fail.
* The worker's start flags on Windows (new process group, no console window) and its tree kill.
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, read_image
from DeepLungRegLib.slicer_python import SLICER_PACKAGES, available_in_slicer
from DeepLungRegLib.transforms import resample_to_spacing
from conftest import pair_nodes

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "DeepLungRegLib"
MODULE = ROOT / "DeepLungReg" / "DeepLungReg.py"
STOCK_DIR = Path(os.environ.get("DEEPLUNGREG_STOCK_PYTHON_DIR") or ROOT / "build" / "stock-python")


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
    roots |= set(_function_imports(LIB / "worker.py", "DeepLungRegLib.worker", "register_request"))
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


# ----------------------------------------------------------------- the stock Python and its launcher
@pytest.fixture(scope="session")
def stock_python() -> Path:
    """The launcher of a Python with only torch, numpy, scipy and SimpleITK (scripts/make_stock_python.sh)."""
    launcher = STOCK_DIR / "PythonSlicer"
    if not (launcher.is_file() and os.access(launcher, os.X_OK)):
        msg = (f"needs the stock-Slicer Python in {STOCK_DIR} (scripts/make_stock_python.sh builds it; "
               "or set DEEPLUNGREG_STOCK_PYTHON_DIR)")
        if os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; DEEPLUNGREG_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    # it is what it claims: torch and friends import, matplotlib and tqdm do not
    probe = ("import importlib.util as u, torch, numpy, scipy, SimpleITK; "
             "print([m for m in ('matplotlib', 'tqdm', 'dask', 'trame', 'slicer') if u.find_spec(m)])")
    out = subprocess.run([str(launcher), "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the stock Python has more than Slicer: {out.stdout}"
    return launcher


def _group_members(pgid: int) -> dict[int, str]:
    """Linux: the live (not zombie) processes of process group ``pgid``, by pid, with their command lines."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members[int(stat.parent.name)] = cmdline
    return members


@pytest.fixture(scope="module")
def small_pair(sample_path):
    from DeepLungRegLib.simulation import simulate_breathing

    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="small", seed=3)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc (Linux)")
def test_background_path_on_a_stock_slicer_python_through_a_launcher(small_pair, slicer_core, stock_python, tmp_path, caplog):
    """The module's Apply path on what a stock Slicer has: the worker completes through a launcher that runs
    Python as a child, writes only what the module reads, and a cancelled run leaves no process of its group."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.pipeline import IMAGE_OUTPUTS
    from DeepLungRegLib.slicer_bridge.background import BackgroundRegistration

    p = small_pair
    hs = b.new_scene()
    fixed, moving, fmask, fl, ml = pair_nodes(b, hs.scene, p)
    work = tmp_path / "work"
    work.mkdir()

    run = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask="auto", fixed_landmarks=fl,
                                                     moving_landmarks=ml), "affine", device="cpu",
                                 options={"levels_mm": [8.0], "iterations": [40]},
                                 workdir=work, show=False, python=str(stock_python))
    res = run.wait()
    assert run.state == "done", run.error
    m = res.metrics
    assert m["method"] == "affine" and m["tre_after"]["mean"] < 0.6 * m["tre_before"]["mean"]
    assert res.transform is not None and res.warped is not None and res.tre_table is not None
    # only what the module reads back: no report, no figures
    assert set(m["output_files"]) == {"displacement.nii.gz", "metrics.json", *IMAGE_OUTPUTS.values()}
    assert not list(work.iterdir())  # the private folder is gone

    # the report on request needs matplotlib: on a stock Python, one clear line in the GUI, the whole stderr in the log
    caplog.set_level(logging.ERROR, logger="DeepLungRegLib.worker")
    bad = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None), "affine", device="cpu",
                                 options={"levels_mm": [8.0], "iterations": [5]}, workdir=work, show=False,
                                 python=str(stock_python), report_folder=tmp_path / "reports")
    with pytest.raises(DeepLungRegError, match="report needs matplotlib") as err:
        bad.wait()
    assert "\n" not in str(err.value)
    logged = [r.getMessage() for r in caplog.records]
    assert any("stderr" in text and "deeplungreg: error: worker: the report needs matplotlib" in text for text in logged), logged

    # a second run, cancelled while it registers: neither the launcher nor its child Python is left
    slow = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [400, 400], "refine_learning_rates": [0.5, 0.25], "affine_init": False}
    n_nodes = hs.scene.GetNumberOfNodes()
    run2 = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None), "adam",
                                  device="cpu", options=slow, workdir=work, show=False, python=str(stock_python))
    deadline = time.monotonic() + 300
    while run2.poll() == "running" and run2.fraction < 0.2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run2.state == "running" and run2.fraction >= 0.2
    members = _group_members(run2.pid)
    assert run2.pid in members and len(members) >= 2, members  # the launcher and its child, the worker Python
    assert any("-m DeepLungRegLib.worker" in cmd for pid, cmd in members.items() if pid != run2.pid), members
    run2.cancel()
    assert run2.state == "cancelled" and run2.worker.returncode is not None
    assert _group_members(run2.pid) == {}
    for pid in members:  # every one of them ended (or is a zombie waiting for its reaper)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
    assert hs.scene.GetNumberOfNodes() == n_nodes and not list(work.iterdir())


def test_report_on_request_is_kept_in_a_new_folder(small_pair, slicer_core, tmp_path):
    """With a report folder (and matplotlib in the worker's Python), the run's outputs and report go into a new
    subfolder of it, which is kept; the scene gets the same nodes as without."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.slicer_bridge.background import BackgroundRegistration

    p = small_pair
    hs = b.new_scene()
    fixed = b.volume_node_from_image(hs.scene, p.fixed, "inhale")
    moving = b.volume_node_from_image(hs.scene, p.moving, "exhale")
    reports = tmp_path / "my reports"
    reports.mkdir()
    (reports / "notes.txt").write_text("the user's own file")
    run = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask="none", moving_mask="none"), "affine", device="cpu",
                                 options={"levels_mm": [8.0], "iterations": [20]}, workdir=tmp_path, show=False,
                                 report_folder=reports)
    res = run.wait()
    assert run.report_folder.parent == reports and run.report_folder.name.startswith("exhale-to-inhale-affine-")
    kept = {f.name for f in run.report_folder.iterdir()}
    assert {"report.html", "overlay.png", "grid.png", "metrics.json", "displacement.nii.gz", "warped.nii.gz"} <= kept
    assert (reports / "notes.txt").read_text() == "the user's own file"
    assert res.transform is not None and res.warped is not None
    assert not (tmp_path / run.folder.name).exists()  # the private folder is gone, the report folder kept


# ----------------------------------------------------------------- Windows: start flags and tree kill
def test_worker_start_flags_per_platform(monkeypatch):
    from DeepLungRegLib import worker

    assert worker.CREATE_NO_WINDOW == getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
    assert worker.CREATE_NEW_PROCESS_GROUP == getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
    with monkeypatch.context() as m:
        m.setattr(worker.os, "name", "nt")
        kw = worker.popen_kwargs()
    assert set(kw) == {"creationflags"}
    assert kw["creationflags"] & worker.CREATE_NO_WINDOW and kw["creationflags"] & worker.CREATE_NEW_PROCESS_GROUP
    with monkeypatch.context() as m:
        m.setattr(worker.os, "name", "posix")
        assert worker.popen_kwargs() == {"start_new_session": True}
    assert worker.kill_tree_command(4321) == ["taskkill", "/T", "/F", "/PID", "4321"]


def test_cancel_on_windows_kills_the_tree_without_a_window(monkeypatch, tmp_path):
    """On Windows, cancel ends the worker's whole tree with taskkill /T /F, itself started without a console;
    the Slicer module's cancel also removes its private folder."""
    from DeepLungRegLib import worker
    from DeepLungRegLib.slicer_bridge.background import BackgroundRegistration

    class FakeProcess:
        pid, returncode, stdin = 4321, None, None

        def poll(self):
            return self.returncode

        def wait(self, timeout=None):
            return self.returncode

    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        proc.returncode = 1  # taskkill ended it
        return subprocess.CompletedProcess(cmd, 0)

    proc = FakeProcess()
    monkeypatch.setattr(worker, "_on_windows", lambda: True)
    monkeypatch.setattr(worker.subprocess, "run", fake_run)
    w = object.__new__(worker.WorkerProcess)
    w._process, w.pid, w.state = proc, proc.pid, "running"
    run = object.__new__(BackgroundRegistration)
    run.worker, run.folder = w, tmp_path / "private"
    run.folder.mkdir()
    run.cancel()
    assert [c for c, _ in calls] == [["taskkill", "/T", "/F", "/PID", "4321"]]
    assert calls[0][1]["creationflags"] & worker.CREATE_NO_WINDOW
    assert run.state == "cancelled" and not run.folder.exists()


def test_progress_without_tqdm(monkeypatch, capsys):
    """The CLI's progress bar is optional: without tqdm (Slicer's Python) progress callbacks do nothing."""
    import builtins

    from DeepLungRegLib.cli import _Progress

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with _Progress("register") as bar:
        bar("registering", 0.5)
    assert bar.bar is None and capsys.readouterr().err == ""


def test_worker_is_hidden_from_help(capsys):
    from DeepLungRegLib.cli import build_parser, main

    help_text = build_parser().format_help()
    assert "register" in help_text and "worker" not in help_text.replace("workers", "")
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--help"])
    assert exc.value.code == 0 and "request" in capsys.readouterr().out
