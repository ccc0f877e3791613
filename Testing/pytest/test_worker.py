"""DeepLungRegLib.worker: the protocol of a request run out of process (progress, done, a refused input,
a crash), the child's threads and environment, a child that ends with its parent, and a resident child that
serves one request after another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from DeepLungRegLib.errors import DeepLungRegError
from DeepLungRegLib.worker import WorkerCrashed, WorkerProcess, group_alive

CHILD = '''
import atexit, os, sys, time
from pathlib import Path
import DeepLungRegLib.memory
from DeepLungRegLib.errors import DeepLungRegError
from DeepLungRegLib.worker import main

if os.environ.get("DLR_TEST_NO_PEAK_RESET"):  # as on macOS and Windows: a resident serves one request
    DeepLungRegLib.memory.reset_peak_rss = lambda: False
    atexit.register(time.sleep, 1.0)  # an interpreter's end that takes a while (torch's, say)

def handler(request, progress):
    kind = request["kind"]
    if kind == "ok":
        print("a library's own print")
        for i in range(5):
            progress("step", i / 4)
        return {"done": "ok", "value": 3}
    if kind == "refuse":
        raise DeepLungRegError("test: a bad\\n   input")
    if kind == "crash":
        raise ValueError("boom")
    if kind == "unterminated":  # stderr without a final newline
        sys.stderr.write("a warning without its newline")
        return {"done": "unterminated"}
    if kind == "exit":  # ends at once, silently (as when killed for memory)
        os._exit(request["code"])
    if kind == "alloc":  # touch this many MB, then let them go
        block = bytearray(request["mb"] * 2**20)
        del block
        return {"done": "alloc", "pid": os.getpid()}
    if kind == "env":
        import torch
        return {"done": "env", "omp": os.environ.get("OMP_NUM_THREADS"), "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                "torch": torch.get_num_threads()}
    try:  # "slow": until interrupted
        for i in range(6000):
            progress("slow", i / 6000)
            time.sleep(0.05)
    finally:
        Path(request["marker"]).write_text("unwound")

if __name__ == "__main__":
    sys.exit(main(handler=handler))
'''


@pytest.fixture
def child(tmp_path):
    """A child module with a test handler, importable by the child through ``PYTHONPATH``."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "dlr_test_child.py").write_text(CHILD)
    return {"module": "dlr_test_child", "env": {"PYTHONPATH": str(tmp_path / "mods")}}


def _start(tmp_path, child, request, name, **kw):
    folder = tmp_path / name
    folder.mkdir()
    return WorkerProcess(request, folder, module=child["module"], env=child["env"], **kw)


def test_progress_then_done_with_the_result_fields(tmp_path, child):
    w = _start(tmp_path, child, {"kind": "ok"}, "ok")
    seen = []
    result = w.wait(progress=lambda stage, f: seen.append((stage, f)), interval=0.02)
    assert w.state == "done" and w.returncode == 0 and w.error is None
    assert [f for _, f in seen] == [0.0, 0.25, 0.5, 0.75, 1.0] and {s for s, _ in seen} == {"step"}
    assert result["done"] == "ok" and result["value"] == 3 and result["peak_rss_mb"] > 1.0
    assert json.loads((tmp_path / "ok" / "request.json").read_text()) == {"kind": "ok"}


def test_a_refused_input_is_one_line_and_a_crash_is_told_apart(tmp_path, child, caplog):
    w = _start(tmp_path, child, {"kind": "refuse"}, "refuse")
    with pytest.raises(DeepLungRegError, match=r"^test: a bad input$"):
        w.wait(interval=0.02)
    assert w.state == "failed" and w.reported and w.returncode == 2
    crash = _start(tmp_path, child, {"kind": "crash"}, "crash")
    with pytest.raises(WorkerCrashed, match=r"^ValueError: boom$"):
        crash.wait(interval=0.02)
    assert crash.state == "failed" and not crash.reported and crash.returncode == 1
    # the whole stderr (the traceback) is in the log
    assert any("Traceback" in r.getMessage() and "ValueError: boom" in r.getMessage() for r in caplog.records)


def test_the_child_gets_the_threads_asked_for_and_the_environment_changes(tmp_path, child, monkeypatch):
    """As in a Dask worker: OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_ set by its nanny; the child gets 2 threads
    and no trim threshold."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    env = {**child["env"], "MALLOC_TRIM_THRESHOLD_": None}
    w = WorkerProcess({"kind": "env"}, tmp_path, module=child["module"], env=env, threads=2)
    result = w.wait(interval=0.05)
    assert (result["omp"], result["trim"], result["torch"]) == ("2", None, 2)


def test_a_resident_child_serves_one_request_after_another(tmp_path, child):
    """``serve=True`` (batch's process per Dask worker): one process answers request after request, a refused one
    included, each with its own peak memory; close() lets it end; a crash ends it and is told as a crash."""
    w = WorkerProcess(None, tmp_path, module=child["module"], env=child["env"], serve=True)
    assert w.state == "idle" and w.alive
    seen = []
    w.send({"kind": "ok"}, tmp_path)
    assert w.wait(progress=lambda stage, f: seen.append(f), interval=0.02)["value"] == 3 and seen[-1] == 1.0
    w.send({"kind": "refuse"})
    with pytest.raises(DeepLungRegError, match=r"^test: a bad input$"):
        w.wait(interval=0.02)
    assert w.state == "failed" and w.reported and w.alive  # a refused request does not end it
    w.send({"kind": "alloc", "mb": 400})
    big = w.wait(interval=0.02)
    w.send({"kind": "alloc", "mb": 1})
    small = w.wait(interval=0.02)
    assert big["pid"] == small["pid"] == w.pid
    if sys.platform.startswith("linux"):  # each request's own peak (elsewhere a resident serves one request and ends)
        assert big["peak_rss_mb"] > small["peak_rss_mb"] + 300
    with pytest.raises(RuntimeError, match="previous request"):
        w.send({"kind": "slow", "marker": str(tmp_path / "m")})
        w.send({"kind": "ok"})
    w.cancel()
    assert not w.alive and w.state == "cancelled"
    with pytest.raises(WorkerCrashed, match="has ended"):
        w.send({"kind": "ok"})
    idle = WorkerProcess({"kind": "ok"}, tmp_path, module=child["module"], env=child["env"], serve=True)
    idle.wait(interval=0.02)
    idle.close()
    assert idle.returncode == 0
    crash = WorkerProcess({"kind": "crash"}, tmp_path, module=child["module"], env=child["env"], serve=True)
    with pytest.raises(WorkerCrashed, match=r"^ValueError: boom$"):
        crash.wait(interval=0.02)
    assert not crash.alive and not crash.reported


def test_a_request_file_that_cannot_be_read_is_refused_in_one_line(tmp_path, capsys):
    """Not a traceback that would end a resident child: a request file that is not UTF-8 text, or not readable."""
    from DeepLungRegLib.worker import run_request

    bad = tmp_path / "request.json"
    bad.write_bytes(b'{"kind": "\xff"}')
    assert run_request(lambda request, progress: {}, bad) == 2
    assert "request.json" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert run_request(lambda request, progress: {}, folder) == 2
    bom = tmp_path / "bom.json"  # as Windows' Notepad saves it: read
    bom.write_bytes(b'\xef\xbb\xbf{"kind": "bom"}')
    assert run_request(lambda request, progress: {"done": request["kind"]}, bom) == 0


def test_a_resident_childs_error_is_its_current_requests_own(tmp_path, child, monkeypatch, caplog):
    """The stderr of a refused request (its "deeplungreg: error:" line comes after its answer) read late by the
    parent: it is not taken for the next request's error, nor logged as what the next request said."""
    import queue

    read = WorkerProcess._read

    def slow_stderr(stream, put):  # the stderr reader runs behind (as a busy parent's thread may)
        if isinstance(getattr(put, "__self__", None), queue.Queue):
            return read(stream, put)
        return read(stream, lambda line: (time.sleep(0.3), put(line)))

    monkeypatch.setattr(WorkerProcess, "_read", staticmethod(slow_stderr))
    w = WorkerProcess(None, tmp_path, module=child["module"], env=child["env"], serve=True)
    w.send({"kind": "refuse"})
    with pytest.raises(DeepLungRegError, match=r"^test: a bad input$"):
        w.wait(interval=0.02)
    w.send({"kind": "ok"})
    w.wait(interval=0.02)
    assert not any("said on stderr" in r.getMessage() for r in caplog.records)
    w.send({"kind": "exit", "code": 3})
    with pytest.raises(WorkerCrashed, match=r"^exit code 3$"):
        w.wait(interval=0.02)


def test_a_resident_childs_stderr_without_a_final_newline_is_its_requests_own(tmp_path, child, caplog):
    w = WorkerProcess(None, tmp_path, module=child["module"], env=child["env"], serve=True)
    w.send({"kind": "unterminated"})
    assert w.wait(interval=0.02, timeout=4.0)["done"] == "unterminated"  # not stuck waiting for the end-of-request line
    assert [r.getMessage().splitlines()[1:] for r in caplog.records if "said on stderr" in r.getMessage()] == \
        [["a warning without its newline"]]
    w.send({"kind": "exit", "code": 3})
    with pytest.raises(WorkerCrashed, match=r"^exit code 3$"):
        w.wait(interval=0.02)


def test_a_resident_child_that_cannot_reset_its_peak_says_it_ends_after_its_request(tmp_path, child, monkeypatch):
    """macOS, Windows: the child serves one request and ends; the parent knows it at the answer (batch does not keep
    it, to send it the next pair, which would be lost and told as a crash, and retried)."""
    from DeepLungRegLib.batch import run

    env = {**child["env"], "DLR_TEST_NO_PEAK_RESET": "1"}
    w = WorkerProcess({"kind": "ok"}, tmp_path, module=child["module"], env=env, serve=True)
    assert w.wait(interval=0.02)["value"] == 3
    assert not w.alive  # its process still ends (1 s)
    with pytest.raises(WorkerCrashed):
        w.send({"kind": "ok"})
    monkeypatch.setattr(run, "_RESIDENT", {})
    run._keep_resident(w, ("key",))
    assert run._RESIDENT.get(("key",), []) == []
    w.close()
    assert w.returncode == 0 and w.state == "done"


def test_closing_a_busy_resident_child_interrupts_its_request(tmp_path, child):
    marker = tmp_path / "unwound.txt"
    w = WorkerProcess({"kind": "slow", "marker": str(marker)}, tmp_path, module=child["module"], env=child["env"], serve=True)
    while w.poll() == "running" and w.fraction == 0.0:
        time.sleep(0.02)
    w.close()
    assert w.state == "cancelled" and marker.read_text() == "unwound" and not w.alive


@pytest.mark.skipif(os.name == "nt", reason="kills the parent with SIGKILL")
@pytest.mark.parametrize("serve", [False, True], ids=["one-request", "resident"])
def test_a_child_ends_and_unwinds_when_its_parent_is_killed(tmp_path, child, serve):
    """A batch pair's process when its Dask worker is killed: it sees its stdin close, unwinds (its ``finally``
    runs) and ends; without ``exit_with_parent`` (or a resident's request line) a child would run on as an orphan."""
    marker = tmp_path / "unwound.txt"
    (tmp_path / "w").mkdir()
    parent = textwrap.dedent(f"""
        import sys, time
        from DeepLungRegLib.worker import WorkerProcess
        w = WorkerProcess({{"kind": "slow", "marker": {str(marker)!r}}}, {str(tmp_path / "w")!r}, module={child["module"]!r},
                          env={child["env"]!r}, exit_with_parent=not {serve!r}, serve={serve!r})
        while w.poll() == "running" and w.fraction == 0.0:
            time.sleep(0.05)
        print(w.pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        pid = int(proc.stdout.readline())
        assert group_alive(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 60
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(pid)
        assert marker.read_text() == "unwound"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.name == "nt", reason="group_alive is POSIX")
def test_a_dropped_handle_leaves_no_process_behind(tmp_path, child):
    """A handle dropped while its child runs a request ends it (``__del__``); a resident's dropped while idle ends
    too (its stdin closes): the readers' threads must not keep the handle."""
    import gc

    marker = tmp_path / "unwound.txt"
    busy = _start(tmp_path, child, {"kind": "slow", "marker": str(marker)}, "busy")
    idle = WorkerProcess({"kind": "ok"}, tmp_path, module=child["module"], env=child["env"], serve=True)
    idle.wait(interval=0.02)
    while busy.poll() == "running" and busy.fraction == 0.0:
        time.sleep(0.02)
    pids = [busy.pid, idle.pid]
    del busy, idle
    gc.collect()
    deadline = time.monotonic() + 30
    while any(group_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(group_alive(pid) for pid in pids)
