"""Shared fixtures. Tests that need ../shared/data skip with a reason on a
user's clone; with DEEPLUNGREG_REQUIRE_SHARED=1 (set by .ci/run) they fail
instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib.geometry import Geometry

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"


def _shared_dir() -> Path:
    env = os.environ.get("DEEPLUNGREG_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = _shared_dir()
    if not d.is_dir():
        msg = f"needs the reference data in {d} (../shared/data beside the repository, or set DEEPLUNGREG_SHARED_DATA)"
        if os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; DEEPLUNGREG_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    return d


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx



def pair_nodes(bridge, scene, pair, n: int = 30):
    """A simulated pair as a user's nodes: inhale and exhale volumes, the inhale lung labelmap, and the first
    ``n`` landmarks as two point lists (the fixed one labelled ``L0``...). Returns ``(fixed, moving, mask, F, M)``."""
    fixed = bridge.volume_node_from_image(scene, pair.fixed, "inhale")
    moving = bridge.volume_node_from_image(scene, pair.moving, "exhale")
    mask = bridge.volume_node_from_image(scene, pair.fixed_mask, "inhale lungs", labelmap=True)
    fl = bridge.markups_from_landmarks(scene, pair.fixed_landmarks[:n], "F", labels=[f"L{i}" for i in range(n)])
    ml = bridge.markups_from_landmarks(scene, pair.moving_landmarks[:n], "M")
    return fixed, moving, mask, fl, ml

@pytest.fixture
def oblique() -> Geometry:
    """An oblique, anisotropic, off-origin grid."""
    return Geometry((24, 20, 16), (1.5, 2.0, 3.0), (-35.0, 12.5, 104.0), rotation(0.2, -0.15, 0.35).ravel())


@pytest.fixture(scope="session")
def sample_path() -> Path:
    assert SAMPLE.exists(), f"the bundled sample {SAMPLE} is missing"
    return SAMPLE


@pytest.fixture(scope="session")
def slicer_core():
    """The ``slicer`` package from the slicer-core wheel (skip without it; CI forbids the skip)."""
    try:
        import slicer  # noqa: F401
        import slicer.util  # noqa: F401
    except ImportError as exc:
        msg = f"needs slicer-core (pip install 'slicer-core==5.11.0.*'): {exc}"
        if os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; DEEPLUNGREG_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    # Offscreen rendering: prefer EGL so VTK does not try an X display first.
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    return slicer


def _test_device() -> str:
    return os.environ.get("DEEPLUNGREG_TEST_DEVICE", "cpu") or "cpu"


@pytest.fixture(scope="session")
def device() -> str:
    """The device the device-parametrised tests run on: ``DEEPLUNGREG_TEST_DEVICE`` (``cpu`` by default,
    ``cuda`` on a GPU machine: ``DEEPLUNGREG_TEST_DEVICE=cuda pytest ...``). Asking for CUDA where torch
    sees none skips (CI makes the skip fail)."""
    import torch

    dev = _test_device()
    if dev.startswith("cuda") and not torch.cuda.is_available():
        msg = f"DEEPLUNGREG_TEST_DEVICE={dev} but torch reports no CUDA GPU"
        if os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; DEEPLUNGREG_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    return dev


def on_cuda(device: str) -> bool:
    """True when the tests run on a GPU (for a tolerance stated for CUDA only)."""
    return str(device).startswith("cuda")


def pytest_collection_modifyitems(config, items):
    """Tests that take the ``device`` fixture are marked ``device`` (``pytest -m device`` runs just those),
    and tests that take the ``slicer_core`` fixture, directly or through another fixture, ``slicer``;
    tests marked ``cuda`` (CUDA against the CPU) run only where torch sees a GPU."""
    import torch

    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU (marked cuda)")
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "device" in fixtures:
            item.add_marker(pytest.mark.device)
        if "slicer_core" in fixtures:
            item.add_marker(pytest.mark.slicer)
        if skip is not None and item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# ------------------------------------------------------------------ --check-modules (make test-fast)
LIBRARY = ROOT / "DeepLungRegLib"


def library_modules() -> dict[str, Path]:
    """Every module of the library by its dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _has_functions(path: Path) -> bool:
    import ast

    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(ast.parse(path.read_text())))


class ModuleCheck:
    """Which library modules the tests that ran exercised: a module counts once one of its functions (or
    methods) has run during the tests' setup, call or teardown, in this process; a module without any
    function counts once it is imported. A profile hook (Python calls only, not line tracing) records the
    first call per file from the end of collection, and takes itself off once every module has been seen."""

    def __init__(self):
        self.modules = library_modules()
        self.by_file = {str(path): name for name, path in self.modules.items() if _has_functions(path)}
        self.seen: set[str] = set()

    def _profile(self, frame, event, arg):
        if event == "call":
            name = self.by_file.get(frame.f_code.co_filename)
            if name is not None and frame.f_code.co_name != "<module>":
                self.seen.add(name)
                del self.by_file[frame.f_code.co_filename]
                if not self.by_file:
                    self.stop()

    def start(self):
        import threading

        threading.setprofile(self._profile)
        sys.setprofile(self._profile)

    def stop(self):
        import threading

        sys.setprofile(None)
        threading.setprofile(None)

    def missing(self) -> list[str]:
        imported = {name for name in self.modules if name in sys.modules}
        plain = {name for name, path in self.modules.items() if str(path) not in self.by_file and name not in self.seen}
        return sorted(set(self.modules) - self.seen - (plain & imported))


def pytest_addoption(parser):
    parser.addoption("--check-modules", action="store_true",
                     help="fail the session unless the tests that ran exercised every DeepLungRegLib module (one of its "
                          "functions ran in this process); make test-fast uses it")


def pytest_collection_finish(session):
    if session.config.getoption("--check-modules", default=False):
        session.config._module_check = ModuleCheck()
        session.config._module_check.start()


def pytest_sessionfinish(session, exitstatus):
    check = getattr(session.config, "_module_check", None)
    if check is None or session.testscollected == 0:
        return
    check.stop()
    wrong = sorted(name for name in check.modules if name in sys.modules and getattr(sys.modules[name], "__file__", None)
                   and not Path(sys.modules[name].__file__).resolve().is_relative_to(LIBRARY))
    missing = check.missing()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write("\n")
    write = reporter.write_line if reporter else (lambda line, **markup: print(line))
    if wrong:
        write(f"--check-modules: DeepLungRegLib was imported from outside {LIBRARY}: {', '.join(wrong)}", red=True)
    if missing:
        write(f"--check-modules: {len(missing)} of {len(check.modules)} DeepLungRegLib modules were not exercised by the "
              f"tests that ran: {', '.join(missing)}", red=True)
    else:
        write(f"--check-modules: the tests that ran exercised all {len(check.modules)} DeepLungRegLib modules")
    if (wrong or missing) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
