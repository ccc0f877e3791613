"""Tests of DeepLungRegLib/slicer_bridge/background.py on what a stock Slicer has (issue 27).

* The module's background path (BackgroundRegistration on slicer-core nodes) runs a worker on a Python
  that has only torch, numpy, scipy and SimpleITK, started through a launcher that runs that Python as a
  child process, as Slicer's ``PythonSlicer`` does; a cancelled run leaves no process of its group.
  ``scripts/make_stock_python.sh`` builds that Python (``.ci/run`` does); without it these tests skip,
  and under DEEPLUNGREG_REQUIRE_SHARED=1 (CI) they fail.
* The worker's start flags on Windows (new process group, no console window) and its tree kill.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import pair_nodes
from DeepLungRegLib import DeepLungRegError, read_image
from DeepLungRegLib.transforms import resample_to_spacing

from helpers_sequence import FAST_AFFINE, cycle4  # noqa: F401  (a fixture)
from helpers_slicer import hs


ROOT = Path(__file__).resolve().parents[2]


STOCK_DIR = Path(os.environ.get("DEEPLUNGREG_STOCK_PYTHON_DIR") or ROOT / "build" / "stock-python")


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


@pytest.mark.slow
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
    # every image output but the uncertainty (written only by convex with uncertainty on)
    assert set(m["output_files"]) == {"displacement.nii.gz", "metrics.json", *IMAGE_OUTPUTS.values()} - {"uncertainty.nii.gz"}
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_4dct_cycle_registers_on_a_stock_slicer_python(cycle4, slicer_core, stock_python, tmp_path):
    """The module's 4D-CT section on what a stock Slicer has: the sequence's phases registered by the worker on a
    Python without matplotlib, through a launcher, and loaded into the scene."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.io.phases import read_phases
    from DeepLungRegLib.slicer_bridge.background import BackgroundSequence
    from DeepLungRegLib.slicer_bridge.sequence import sequence_node_from_phases

    hs = b.new_scene()
    seq = sequence_node_from_phases(hs.scene, read_phases(cycle4[0] / "phases"), "4D-CT")
    work = tmp_path / "work"
    work.mkdir()
    run = BackgroundSequence(hs.scene, seq, tmp_path / "out", "affine", options=FAST_AFFINE, reference=2, workdir=work,
                             python=str(stock_python))
    summary, nodes = run.wait()
    assert run.state == "done", run.error
    assert summary["reference"] == 2 and nodes["warped"].GetNumberOfDataNodes() == 4 and nodes["browser"].GetMasterSequenceNode() is seq
    assert (tmp_path / "out" / "sequence.json").is_file() and not list(work.iterdir())
