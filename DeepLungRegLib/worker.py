"""One registration out of process: a subprocess that reads a request (a JSON file) and streams its
progress as JSON lines on stdout, cancellable with its whole process tree.

The Slicer module (:class:`DeepLungRegLib.slicer_bridge.background.BackgroundRegistration`), ``benchmark``
(one measurement per process) and ``batch`` (one pair per process, which the Dask task waits on) all run
their work this way.

The protocol: the child writes one JSON object a line on stdout (any other line is ignored):

* ``{"stage": TEXT, "fraction": 0..1}`` while it runs;
* ``{"done": VALUE, ...}`` at the end, with the result's fields (``peak_rss_mb``: the child's own peak
  memory), exit code 0;
* ``{"error": ONE LINE}`` when the request or its inputs are refused (a :class:`DeepLungRegError`), exit code 2.

Anything else (a crash, a kill, out of memory) ends it without an ``error`` line: the parent then reports the
last line of its stderr, and logs the whole stderr.

Parent side: :class:`WorkerProcess` writes the request into a folder, starts ``python -m MODULE request.json``
there (this module for a registration), reads its lines on two threads, and offers a non-blocking
:meth:`~WorkerProcess.poll`, a blocking :meth:`~WorkerProcess.wait` and :meth:`~WorkerProcess.cancel`
(POSIX: its process group; Windows: ``taskkill /T /F``).

A resident child (``WorkerProcess(..., serve=True)``, ``python -m MODULE --serve``; ``batch`` keeps one per Dask
worker) runs the same requests one after another: each request file's path is one line on its stdin, and its
lines end with that request's ``{"done"}`` or ``{"error"}``, and its stderr with the line :data:`REQUEST_END` (so that
the parent tells each request's stderr apart); it ends when its stdin closes (its parent ended or let it go),
interrupting a request that is running. Each ``{"done"}``'s ``peak_rss_mb`` is that request's own (where the
platform cannot reset a process's peak, the child serves one request and ends: it says ``{"last": true}`` before
that request's answer).

Child side: :func:`main` (``python -m DeepLungRegLib.worker REQUEST.json``) runs :func:`register_request`, whose
request is ``{"job": RegistrationJob JSON, "output": DIR, "report": bool, "overwrite": bool}`` and optionally
``"extra_metrics"`` (added to ``metrics.json``) and ``"private_inputs"`` (the job's files are the caller's
private copies: not recorded as the outputs' sources); a request with ``"kind": "sequence"`` runs
:func:`sequence_request` (a 4D-CT, :func:`~DeepLungRegLib.sequence.register_sequence`). Another request kind has its own module whose
``__main__`` calls :func:`main` with its handler (``DeepLungRegLib.benchmark.worker``). Every request may
also hold ``"threads"`` (torch's threads; the parent sets ``OMP_NUM_THREADS`` and friends to it) and
``"exit_with_parent"`` (the child ends, removing what it staged, when its parent dies).

Only the standard library is imported here at module level: it runs on Slicer's own Python.

>>> job = {"fixed": "inhale.nii.gz", "moving": "exhale.nii.gz", "method": "adam"}
>>> w = WorkerProcess({"job": job, "output": "out", "report": True}, folder)
>>> w.wait(progress=print)
{'done': 'out', 'peak_rss_mb': 812.4}
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import DeepLungRegError, RegistrationCancelled, Terminated

log = logging.getLogger(__name__)

#: The folder that holds DeepLungRegLib: the child imports the library from here.
LIBRARY_PARENT = str(Path(__file__).resolve().parents[1])
#: The child of a registration request.
REGISTER_MODULE = "DeepLungRegLib.worker"
#: Windows process creation flags (subprocess names them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
#: The thread counts of the numeric libraries, set in the child's environment to the intended threads
#: (a Dask nanny sets them to 1 in its workers, and a child would inherit that).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
#: Seconds a child whose parent died has to unwind before it ends itself.
ORPHAN_GRACE_S = 30.0
#: A resident child's line on stderr after each request's answer (the parent does not log it).
REQUEST_END = "deeplungreg: end of request"


class WorkerCrashed(RuntimeError):
    """The child ended without its ``{"done"}`` or ``{"error"}`` line (a crash, a kill, out of memory)."""


# ====================================================================== parent side
def _on_windows() -> bool:
    return os.name == "nt"


def popen_kwargs() -> dict:
    """How the child is started, besides its command: in a process group of its own, so that
    :meth:`WorkerProcess.cancel` can end it with every process it starts (POSIX: a new session;
    Windows: a new process group, and no console window)."""
    if _on_windows():
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_tree_command(pid: int) -> list[str]:
    """Windows: the command that ends process ``pid`` and all its descendants."""
    return ["taskkill", "/T", "/F", "/PID", str(int(pid))]


def group_alive(pgid: int) -> bool:
    """POSIX: whether a process of group ``pgid`` still runs (on Linux, zombies waiting for a reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def python_executable() -> str:
    """The Python that runs the child: Slicer's ``PythonSlicer`` inside Slicer, this interpreter elsewhere."""
    try:
        import slicer

        home = getattr(getattr(slicer, "app", None), "slicerHome", None)
    except ImportError:
        home = None
    if home:
        for name in ("PythonSlicer.exe", "PythonSlicer"):
            candidate = Path(home) / "bin" / name
            if candidate.is_file():
                return str(candidate)
    return sys.executable


def child_environment(threads: int | None = None, changes: dict[str, str | None] | None = None) -> dict:
    """The child's environment: this one with ``changes`` (``None`` removes a variable), the library's folder
    first on ``PYTHONPATH`` and, with ``threads``, the numeric libraries' thread counts set to it."""
    env = dict(os.environ)
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([LIBRARY_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if threads:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(int(threads))))
    return env


class WorkerProcess:
    """One request run by a child process (see the module's docstring for the protocol).

    Args:
        request: the request (JSON-able); written to ``folder/request.json``.
        folder: an existing folder of the caller's: the request's file and the child's working directory.
        module: the child's module (``python -m module request.json``).
        python: the Python that runs it (default :func:`python_executable`).
        threads: torch's threads in the child, also set as ``OMP_NUM_THREADS`` etc. (``None``: as inherited).
        env: changes to the child's environment (``None`` removes a variable), see :func:`child_environment`.
        exit_with_parent: the child ends (removing what it staged) when this process dies, killed or not
            (it watches its stdin, a pipe from here). Off for a launcher that may not pass stdin on.
        log_reported_errors: log the child's stderr when it reported an ``{"error"}`` too (a crash is always logged).
        serve: start a resident child (``python -m module --serve``) that runs one request after another, each
            given by :meth:`send` (``request``, if given, is the first); it ends with this process, or on :meth:`close`.

    Attributes:
        state: ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"`` (of the current request; ``"idle"``: a
            resident child before its first request).
        stage, fraction: the last progress report.
        error: the child's one-line error when it failed (its whole stderr is logged).
        reported: whether that error came from the child's own ``{"error"}`` line (else it crashed).
        result: the ``{"done", ...}`` message once it is done.
        pid: the child's process id (the launcher's, when Python is started through one); on POSIX
            also the id of the process group that :meth:`cancel` ends.
    """

    def __init__(self, request: dict | None, folder: str | Path, *, module: str = REGISTER_MODULE, python: str | None = None,
                 threads: int | None = None, env: dict[str, str | None] | None = None, exit_with_parent: bool = False,
                 log_reported_errors: bool = True, serve: bool = False):
        self.folder, self.module, self.serve = Path(folder), module, serve
        self.state, self.stage, self.fraction = "idle", "starting", 0.0
        self.error: str | None = None
        self.reported = False
        self.result: dict | None = None
        self._log_reported = log_reported_errors
        self._threads, self._exit_with_parent = threads, exit_with_parent
        if serve:
            argv = ["--serve"]
        elif request is None:
            raise ValueError("a worker process that is not resident (serve=False) needs its request")
        else:
            argv = [str(self._write(request, self.folder))]
        self._process = subprocess.Popen(
            [python or python_executable(), "-m", module, *argv],
            stdin=subprocess.PIPE if (exit_with_parent or serve) else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            env=child_environment(threads, env), cwd=str(self.folder), **popen_kwargs())
        self.pid = self._process.pid
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        # a resident's requests: how many were sent, where each one's stderr ends (at its REQUEST_END line), whether
        # the child said that it ends after the current one
        self._sent, self._stderr_ends, self._last = 0, [], False
        self._stderr_from = 0  # the stderr's length at the last send
        self._readers = [threading.Thread(target=self._read, args=(self._process.stdout, self._lines.put), daemon=True),
                         threading.Thread(target=self._read, args=(self._process.stderr, self._stderr_sink()), daemon=True)]
        for t in self._readers:
            t.start()
        self._ended_at: float | None = None
        self._answered_at: float | None = None  # when a resident's answer to its current request was read
        if not serve:
            self.state = "running"
        elif request is not None:
            self.send(request)

    def _write(self, request: dict, folder: Path) -> Path:
        request = dict(request)
        if self._threads:
            request["threads"] = int(self._threads)
        if self._exit_with_parent:
            request["exit_with_parent"] = True
        path = Path(folder) / "request.json"
        path.write_text(json.dumps(request, indent=2), encoding="utf-8")
        return path.resolve()

    @property
    def alive(self) -> bool:
        """Whether the child process still runs and, a resident one, can take another request when not busy (it did
        not say that it ends after its current one)."""
        return self._process.poll() is None and not self._last

    def send(self, request: dict, folder: str | Path | None = None) -> None:
        """A resident child (``serve=True``): run ``request`` next; its file is written into ``folder`` (default:
        the child's working folder, given at the start). Poll or wait for it as for a one-request child.

        Raises :class:`WorkerCrashed` when the child has ended, :class:`RuntimeError` while it is still busy."""
        if not self.serve:
            raise RuntimeError("send() is for a resident worker process (serve=True)")
        if self.state == "running":
            raise RuntimeError("the worker process is still running its previous request")
        if self._last:
            raise WorkerCrashed(f"{self._what()} (pid {self.pid}) serves one request on this platform, and has served it")
        if not self.alive:
            raise WorkerCrashed(f"{self._what()} (pid {self.pid}) has ended (exit code {self._process.returncode})")
        path = self._write(request, Path(folder) if folder is not None else self.folder)
        self.state, self.stage, self.fraction = "running", "starting", 0.0
        self.error, self.reported, self.result, self._ended_at, self._answered_at = None, False, None, None, None
        self._sent += 1
        self._stderr_from = len(self._stderr)
        try:
            self._process.stdin.write(str(path) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it ended meanwhile: poll() reports the crash

    def close(self, timeout: float = 10.0) -> None:
        """A resident child: let it end (it does once its stdin closes; a request that is running is interrupted and
        removes what it staged: :attr:`state` ``"cancelled"``); ends the tree after ``timeout`` s."""
        self._close_stdin()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
        if self.state == "running":  # its request answered before the end, or it was interrupted
            for t in self._readers:
                t.join(timeout=5.0)
            self._take(None)
            if self.result is None and not self.reported:
                self.state = "cancelled"
            else:
                self.poll()

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def _stderr_sink(self) -> Callable[[str], None]:
        """What the stderr reader does with a line (it holds no reference to this handle: a dropped one is collected)."""
        lines, ends, serve = self._stderr, self._stderr_ends, self.serve

        def put(line: str) -> None:
            if serve and line.endswith(REQUEST_END):
                if line[:-len(REQUEST_END)].strip():  # the request's last words, written without a newline
                    lines.append(line[:-len(REQUEST_END)])
                ends.append(len(lines))
            else:
                lines.append(line)

        return put

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    # ------------------------------------------------------------------ progress
    def poll(self, progress: Callable[[str, float], None] | None = None) -> str:
        """Read what the child reported since the last call (never blocks); returns :attr:`state`."""
        self._take(progress)
        if self.state != "running":
            return self.state
        # a resident child answered and goes on, once its stderr up to its end-of-request line is read (5 s at most)
        if self.serve and (self.result is not None or self.reported):
            self._answered_at = self._answered_at or time.monotonic()
        if self._answered_at and (len(self._stderr_ends) >= self._sent or time.monotonic() - self._answered_at > 5.0):
            if self.result is not None:
                self.state = "done"
                self._warn_stderr()
            else:
                self._failed()
            return self.state
        if self._process.poll() is None:
            return self.state
        # it has ended: take its last lines once the readers reached the end of its output (a grandchild
        # that keeps the pipes open is not waited for longer than 5 s)
        now = time.monotonic()
        self._ended_at = self._ended_at or now
        if any(t.is_alive() for t in self._readers) and now - self._ended_at < 5.0:
            return self.state
        self._take(progress)
        self._close_stdin()
        if self._process.returncode == 0 and self.result is not None:
            self.state = "done"
            self._warn_stderr()
        else:
            self._failed()
        return self.state

    def _request_stderr(self) -> list[str]:
        """The current request's lines on stderr (a resident's: those since the previous request's end-of-request line)."""
        ends, n = self._stderr_ends, self._sent
        start = 0 if n <= 1 else ends[n - 2] if len(ends) >= n - 1 else self._stderr_from
        end = ends[n - 1] if n >= 1 and len(ends) >= n else len(self._stderr)
        return [ln for ln in self._stderr[start:end] if ln.strip()]

    def _warn_stderr(self) -> None:
        lines = self._request_stderr()
        if lines:
            log.warning("DeepLungReg: %s (pid %d) said on stderr:\n%s", self._what(), self.pid, "\n".join(lines))

    def _take(self, progress) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library's own print
            if not isinstance(msg, dict):
                continue
            if "stage" in msg:
                self.stage, self.fraction = str(msg["stage"]), float(msg.get("fraction", 0.0))
                if progress:
                    progress(self.stage, self.fraction)
            elif "error" in msg:
                self.error, self.reported = " ".join(str(msg["error"]).split()), True
            elif "done" in msg:
                self.result = msg
            elif msg.get("last") is True:
                self._last = True

    def _what(self) -> str:
        return f"the worker process ({self.module})"

    def _failed(self) -> None:
        self.state = "failed"
        code = self._process.returncode
        lines = self._request_stderr()
        if not self.error:
            tail = lines[-1:] or [f"exit code {code}" + (" (killed)" if code is not None and code < 0 else "")]
            self.error = tail[0].removeprefix("deeplungreg: error: ").strip()
        if self.reported and not self._log_reported:
            return
        log.error("DeepLungReg: %s (pid %d) failed with exit code %s: %s\nits output on stderr:\n%s", self._what(), self.pid,
                  code, self.error, "\n".join(lines) or "(none)")

    def wait(self, progress: Callable[[str, float], None] | None = None, cancel: Callable[[], bool] | None = None,
             interval: float = 0.1, idle: Callable[[], None] | None = None, timeout: float | None = None) -> dict:
        """Block until the child ends (``idle`` runs between polls, e.g. ``slicer.app.processEvents``); returns its
        ``{"done", ...}`` message. Raises :class:`RegistrationCancelled` when ``cancel()`` says so (the tree is ended),
        :class:`DeepLungRegError` when the child reported an error, :class:`WorkerCrashed` when it ended otherwise, and
        :class:`TimeoutError` after ``timeout`` s (the tree is ended)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll(progress) == "running":
            if cancel is not None and cancel():
                self.cancel()
                raise RegistrationCancelled("registration cancelled")
            if end is not None and time.monotonic() > end:
                self.cancel()
                raise TimeoutError(f"timed out after {timeout:.0f} s")
            if idle is not None:
                idle()
            time.sleep(interval)
        return self.outcome()

    def outcome(self) -> dict:
        """The ``{"done", ...}`` message of a finished child, or the exception of :meth:`wait` for the others."""
        if self.state == "done":
            return dict(self.result or {})
        if self.state == "cancelled":
            raise RegistrationCancelled("registration cancelled")
        if self.state == "failed":
            raise (DeepLungRegError if self.reported else WorkerCrashed)(self.error or "the worker failed")
        raise RuntimeError("the worker is still running")

    # ------------------------------------------------------------------ cancel
    def cancel(self, timeout: float = 10.0) -> None:
        """End the child and every process it started (a launcher's child Python included). POSIX: SIGTERM to its
        process group (the child removes what it staged), SIGKILL to what is left after ``timeout`` s; Windows:
        ``taskkill /T /F``. Returns once none is left."""
        if self._process.poll() is None or self._tree_alive():
            self._end_tree(timeout)
        self._close_stdin()
        if self.state == "running":
            self.state = "cancelled"

    def _tree_alive(self) -> bool:
        if _on_windows():
            return self._process.poll() is None
        return group_alive(self.pid)

    def _end_tree(self, timeout: float) -> None:
        if _on_windows():
            subprocess.run(kill_tree_command(self.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           creationflags=CREATE_NO_WINDOW, check=False)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            return
        for sig, limit in ((signal.SIGTERM, timeout), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            if self._wait_tree(limit):
                break
        self._process.poll()

    def _wait_tree(self, limit: float) -> bool:
        """POSIX: wait up to ``limit`` s until no process of the child's group is left (True) or not (False)."""
        end = time.monotonic() + limit
        while True:
            self._process.poll()  # reap our own child (the launcher) as soon as it ends
            if self._process.returncode is not None and not group_alive(self.pid):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)

    def _close_stdin(self) -> None:
        stdin = getattr(self._process, "stdin", None)
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass

    def __del__(self):  # a handle dropped while running must not leave a process behind
        proc = getattr(self, "_process", None)
        if proc is None:
            return
        if getattr(self, "state", None) != "running":
            if getattr(self, "serve", False):
                self._close_stdin()  # an idle resident ends (subprocess keeps a running child's Popen, its stdin open)
            return
        try:
            if _on_windows():
                if proc.poll() is None:
                    subprocess.run(kill_tree_command(proc.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   creationflags=CREATE_NO_WINDOW, check=False)
            elif group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


# ====================================================================== child side
def say(**message) -> None:
    """Write one protocol message on stdout."""
    print(json.dumps(message), flush=True)


def _watch_parent(grace: float = ORPHAN_GRACE_S) -> None:
    """End this process when its parent dies: the parent holds the write end of our stdin, so reading it
    ends (EOF) when the parent's process is gone; the main thread is then interrupted (it unwinds and removes
    what it staged), and after ``grace`` s the process ends regardless."""
    fd = sys.stdin.fileno()

    def watch() -> None:
        try:
            while os.read(fd, 65536):  # the raw descriptor: a buffered reader's lock would block the interpreter's exit
                pass
        except OSError:
            pass
        _thread.interrupt_main()
        time.sleep(grace)
        os._exit(137)

    threading.Thread(target=watch, name="deeplungreg-watch-parent", daemon=True).start()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def run_request(handler: Callable[[dict, Callable[[str, float], None]], dict], path: str | Path, *,
                watch_parent: bool = True) -> int:
    """Child side: read the request at ``path``, run ``handler(request, progress)`` (it returns the ``{"done", ...}``
    fields) and say the outcome; returns the exit code: 0 done, 2 refused (``{"error"}``), 130 interrupted or
    orphaned, 143 terminated (SIGTERM, with :func:`main`'s handler). ``watch_parent=False``: the request's
    ``exit_with_parent`` is not acted on (a resident child watches its parent itself)."""
    from .memory import peak_rss_mb
    from .options import read_config_json

    def progress(stage: str, fraction: float) -> None:
        say(stage=stage, fraction=round(float(fraction), 4))

    try:
        request = read_config_json(path, "worker")
        if request.get("exit_with_parent") and watch_parent:
            _watch_parent()
        threads = request.get("threads")
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise DeepLungRegError(f"worker: the request's 'threads' must be a whole number >= 1, got {json.dumps(threads)[:40]}")
            import torch

            torch.set_num_threads(threads)
        result = dict(handler(request, progress))
    except DeepLungRegError as exc:
        say(error=_one_line(exc))
        print(f"deeplungreg: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, RegistrationCancelled):
        print("deeplungreg: interrupted; no partial outputs were left", file=sys.stderr, flush=True)
        return 130
    except Terminated:
        print("deeplungreg: terminated (SIGTERM); no partial outputs were left", file=sys.stderr, flush=True)
        return 143
    result.setdefault("done", True)
    peak = peak_rss_mb()
    if peak is not None:
        result.setdefault("peak_rss_mb", round(peak, 1))
    say(**result)
    return 0


def _on_sigterm(signum, frame) -> None:
    raise Terminated(signum)


def serve(handler: Callable[[dict, Callable[[str, float], None]], dict], grace: float = ORPHAN_GRACE_S) -> int:
    """Child side of a resident worker: run the request whose path is each line of stdin, one after another, until
    stdin closes. Its end while a request runs (the parent died) interrupts that request (which removes what it
    staged; after ``grace`` s the process ends regardless); a request after the end is not started. Returns
    the exit code: 0 at the end of stdin, or a request's 130/143 (interrupted, terminated)."""
    from .memory import release_memory, reset_peak_rss

    requests: queue.Queue = queue.Queue()
    lock = threading.Lock()
    flags = {"busy": False, "gone": False}

    def read() -> None:
        fd, pending = sys.stdin.fileno(), b""
        try:
            while chunk := os.read(fd, 65536):  # the raw descriptor (see _watch_parent)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        requests.put(line.decode("utf-8", "replace").strip())
        except OSError:
            pass
        with lock:
            flags["gone"], busy = True, flags["busy"]
        requests.put(None)
        if busy:
            _thread.interrupt_main()
            time.sleep(grace)
            os._exit(137)

    threading.Thread(target=read, name="deeplungreg-requests", daemon=True).start()
    try:
        while True:
            path = requests.get()
            with lock:
                if path is None or flags["gone"]:
                    return 0
                flags["busy"] = True
            fresh = reset_peak_rss()
            if not fresh:
                say(last=True)  # before the answer: the parent does not send another request
            code = run_request(handler, path, watch_parent=False)
            with lock:
                flags["busy"] = False
            print(REQUEST_END, file=sys.stderr, flush=True)
            if code not in (0, 2):
                return code
            if not fresh:
                return 0  # this platform cannot reset the peak memory: one request per process
            release_memory()
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143


def main(argv: list[str] | None = None, handler: Callable[[dict, Callable[[str, float], None]], dict] | None = None) -> int:
    """``python -m MODULE REQUEST.json`` (one request) or ``python -m MODULE --serve`` (a resident child, see
    :func:`serve`): the child's process (``handler`` defaults to :func:`register_request`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m DeepLungRegLib.worker REQUEST.json | --serve", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="deeplungreg: %(levelname)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)  # a cancel unwinds like Ctrl-C: staged outputs are removed
    if argv[0] == "--serve":
        return serve(handler or handle_request)
    return run_request(handler or handle_request, argv[0])


# ---------------------------------------------------------------------- the registration request
def _check_kinds(values: dict, kinds: dict[str, type], whose: str = "the request's") -> None:
    names = {str: "text", dict: "an object", list: "a list"}
    for key, kind in kinds.items():  # a field of the wrong type: one line, not a traceback
        value = values.get(key)
        if value is not None and not isinstance(value, kind):
            raise DeepLungRegError(f"worker: {whose} {key!r} must be {names[kind]}, got {json.dumps(value)[:40]}")


def register_request(request: dict, progress: Callable[[str, float], None]) -> dict:
    """A registration request: ``{"job": RegistrationJob JSON, "output": DIR, "report": bool, "overwrite": bool}``,
    optionally ``"extra_metrics"`` and ``"private_inputs"``. Runs :func:`~DeepLungRegLib.pipeline.run_registration`;
    returns ``{"done": DIR}``.

    It runs on Slicer's Python (torch, numpy, scipy, SimpleITK): the report (matplotlib) only when asked for."""
    import dataclasses
    import importlib.util

    from .pipeline import RegistrationJob, run_registration

    for key in ("job", "output"):
        if key not in request:
            raise DeepLungRegError(f"worker: the request lacks {key!r}")
    _check_kinds(request, {"job": dict, "output": str, "extra_metrics": dict})
    report = bool(request.get("report", False))
    if report and importlib.util.find_spec("matplotlib") is None:
        raise DeepLungRegError("worker: the report needs matplotlib, which this Python lacks; install it "
                               "(in Slicer: slicer.util.pip_install('matplotlib')) or register without a report folder")
    private = bool(request.get("private_inputs"))
    # a caller's private copies were written from a job checked where it was made: not checked again
    job = RegistrationJob.from_json(request["job"], what="worker", check=not private)
    if private:  # deleted after the run: not the outputs' sources
        job = dataclasses.replace(job, sources=None, check=False)
    run_registration(job, request["output"], overwrite=bool(request.get("overwrite", False)), report=report, progress=progress,
                     extra_metrics=request.get("extra_metrics"))
    return {"done": str(request["output"])}


# ---------------------------------------------------------------------- the 4D-CT request
def sequence_request(request: dict, progress: Callable[[str, float], None]) -> dict:
    """A 4D-CT request: ``{"kind": "sequence", "phases": PATH, "output": DIR}`` and optionally ``"phase_names"`` with
    ``"source"`` (the phases' names and origin where the files at PATH are a caller's private copies, e.g. a Slicer
    sequence's), ``"reference"``, ``"method"``, ``"options"``, ``"device"``, ``"start"``, ``"landmarks"`` (``{phase
    index: [[x, y, z], ...]}``, LPS mm), ``"overwrite"``, ``"report"``. Runs
    :func:`~DeepLungRegLib.sequence.register_sequence` (progress per phase, the phase in the stage); returns
    ``{"done": DIR, "summary": its summary}``."""
    import importlib.util

    import numpy as np

    from .io.phases import read_phases
    from .options import DEFAULT_METHOD
    from .sequence import register_sequence

    for key in ("phases", "output"):
        if key not in request:
            raise DeepLungRegError(f"worker: the request lacks {key!r}")
    _check_kinds(request, {"phases": str, "output": str, "phase_names": list, "source": str, "method": str, "options": dict,
                           "device": str, "start": str, "landmarks": dict})
    report = bool(request.get("report", False))
    if report and importlib.util.find_spec("matplotlib") is None:
        raise DeepLungRegError("worker: the report needs matplotlib, which this Python lacks; install it "
                               "(in Slicer: slicer.util.pip_install('matplotlib')) or register without a report")
    phases = read_phases(request["phases"])
    if request.get("phase_names") is not None:
        source = request.get("source") or request["phases"]
        phases = phases.renamed(request["phase_names"], source, source)
    reference = request.get("reference")
    if reference is not None and (not isinstance(reference, int) or isinstance(reference, bool)):
        raise DeepLungRegError(f"worker: the request's 'reference' must be a phase index, got {json.dumps(reference)[:40]}")
    landmarks = {int(i): np.asarray(points, float) for i, points in (request.get("landmarks") or {}).items()}
    summary = register_sequence(phases, request["output"], reference=reference, method=request.get("method") or DEFAULT_METHOD,
                                options=request.get("options"), device=request.get("device") or "auto", landmarks=landmarks or None,
                                start=request.get("start") or "reference", overwrite=bool(request.get("overwrite", False)),
                                report=report, progress=progress)
    return {"done": str(request["output"]), "summary": summary}


#: The request kinds of ``python -m DeepLungRegLib.worker``: a request's ``"kind"`` (default ``"register"``).
REQUEST_KINDS = {"register": register_request, "sequence": sequence_request}


def handle_request(request: dict, progress: Callable[[str, float], None]) -> dict:
    """Run a request by its ``"kind"`` (:data:`REQUEST_KINDS`; none: a registration)."""
    kind = request.get("kind", "register")
    if kind not in REQUEST_KINDS:
        raise DeepLungRegError(f"worker: unknown request kind {json.dumps(kind)[:40]}; one of {', '.join(REQUEST_KINDS)}")
    return REQUEST_KINDS[kind](request, progress)


if __name__ == "__main__":
    sys.exit(main())
