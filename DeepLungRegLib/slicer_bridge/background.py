"""Registration in a separate process, so that Slicer stays responsive and a crash or an
out-of-memory end cannot take the user's scene with it.

:class:`BackgroundRegistration` checks the job on the nodes (as :func:`.workflow.register_nodes`
does), writes its inputs into a private folder, and starts ``deeplungreg worker`` there (the
library's own command, run by Slicer's Python). Progress comes back as JSON lines, which
:meth:`~BackgroundRegistration.poll` reads without blocking (a Slicer widget calls it from a
timer); :meth:`~BackgroundRegistration.cancel` ends the process and every process it started
(Slicer's ``PythonSlicer`` is a launcher that runs Python as a child process); when it has finished,
:meth:`~BackgroundRegistration.finish` reads the outputs back and writes them into nodes with
the same code as the in-process path. Until then the scene is not touched, so a failed or
cancelled run leaves it as it was.

The worker runs on what a stock Slicer has (torch, numpy, scipy, SimpleITK) and writes only what
:meth:`~BackgroundRegistration.finish` reads back, in a private folder that is deleted afterwards.
With ``report_folder``, it also writes ``deeplungreg register``'s report (which needs matplotlib in
Slicer's Python) into a new subfolder of that folder, which is kept. When the worker fails, its
whole stderr goes to the log (``logging``, Slicer's log inside Slicer), and :attr:`error` is one line.

>>> run = BackgroundRegistration(scene, RegistrationNodes(fixed_node, moving_node), "embed")
>>> result = run.wait(progress=print)   # or: poll() from a timer, then finish()
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import DeepLungRegError, RegistrationCancelled
from ..io.images import Image, write_image
from ..io.landmarks import write_landmarks
from ..pipeline import DEFAULT_METHOD, read_outputs
from .selection import RegistrationNodes
from .workflow import NodeRegistration, job_from_nodes, write_nodes

log = logging.getLogger(__name__)

#: The library's folder: the worker process imports DeepLungRegLib from here.
_LIBRARY_PARENT = str(Path(__file__).resolve().parents[2])

#: Windows process creation flags (subprocess names them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def _on_windows() -> bool:
    return os.name == "nt"


def worker_popen_kwargs() -> dict:
    """How the worker is started, besides its command: in a process group of its own, so that
    :meth:`BackgroundRegistration.cancel` can end it with every process it starts (POSIX: a new
    session; Windows: a new process group, and no console window)."""
    if _on_windows():
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_tree_command(pid: int) -> list[str]:
    """Windows: the command that ends process ``pid`` and all its descendants."""
    return ["taskkill", "/T", "/F", "/PID", str(int(pid))]


def _group_alive(pgid: int) -> bool:
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


def _run_folder_name(fixed_node, moving_node, method: str) -> str:
    """A new folder name for one run's report: the volumes' names, the method and the time."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text or "volume").strip("._") or "volume"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{clean(moving_node.GetName())}-to-{clean(fixed_node.GetName())}-{clean(method)}-{stamp}"


def python_executable() -> str:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` inside Slicer, this interpreter elsewhere."""
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


class BackgroundRegistration:
    """One registration of the chosen nodes (a :class:`~.selection.RegistrationNodes`) in a worker process
    (arguments as :func:`.workflow.register_nodes`).

    Attributes:
        state: ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
        stage, fraction: the last progress report.
        error: the worker's one-line error when it failed (its whole stderr is logged).
        report_folder: with ``report_folder=PARENT``, the new subfolder of ``PARENT`` that receives
            ``deeplungreg register``'s outputs and report (kept); ``None`` without.
        pid: the worker's process id (the launcher's, when Python is started through one); on POSIX
            also the id of the process group that :meth:`cancel` ends.
    """

    def __init__(self, scene, nodes: RegistrationNodes, method: str = DEFAULT_METHOD, *, options: dict | None = None,
                 device: str = "auto", show: bool = True, workdir: str | Path | None = None, python: str | None = None,
                 report_folder: str | Path | None = None):
        self.scene, self.nodes, self.show = scene, nodes, show
        self.fixed_node, self.moving_node = nodes.fixed, nodes.moving
        self.job = job_from_nodes(nodes, method, options=options, device=device)
        self.state, self.stage, self.fraction, self.error = "running", "starting", 0.0, None
        self.report_folder = None if report_folder is None else \
            Path(report_folder).expanduser().resolve() / _run_folder_name(nodes.fixed, nodes.moving, method)
        self.folder = Path(tempfile.mkdtemp(prefix="DeepLungReg-", dir=workdir))
        request = self._write_request()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_LIBRARY_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self._process = subprocess.Popen(
            [python or python_executable(), "-m", "DeepLungRegLib.cli", "worker", str(request)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(self.folder), **worker_popen_kwargs())
        self.pid = self._process.pid
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, args=(self._process.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self._process.stderr, self._stderr.append), daemon=True).start()

    # ------------------------------------------------------------------ inputs
    def _write_request(self) -> Path:
        job, d = self.job, self.folder
        req = {"fixed": str(write_image(job.fixed, d / "fixed.nrrd")), "moving": str(write_image(job.moving, d / "moving.nrrd")),
               "method": job.method, "options": job.config.to_dict(), "device": job.device, "output": str(self._outdir),
               "report": self.report_folder is not None}
        for key, mask in (("fixed_mask", job.fixed_mask), ("moving_mask", job.moving_mask)):
            req[key] = str(write_image(mask.with_array(mask.array.astype("uint8")), d / f"{key}.nrrd")) if isinstance(mask, Image) \
                else (mask or "none")
        if job.fixed_landmarks is not None:
            req["fixed_landmarks"] = str(write_landmarks(job.fixed_landmarks, d / "fixed_landmarks.csv"))
            req["moving_landmarks"] = str(write_landmarks(job.moving_landmarks, d / "moving_landmarks.csv"))
            req["landmark_labels"] = job.landmark_labels
        path = d / "request.json"
        path.write_text(json.dumps(req, indent=2))
        return path

    @property
    def _outdir(self) -> Path:
        """Where the worker writes: the kept report folder, or the private folder."""
        return self.report_folder if self.report_folder is not None else self.folder / "out"

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    # ------------------------------------------------------------------ progress
    def poll(self, progress: Callable[[str, float], None] | None = None) -> str:
        """Read what the worker reported since the last call (never blocks); returns :attr:`state`."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library's own print
            if "stage" in msg:
                self.stage, self.fraction = msg["stage"], float(msg["fraction"])
                if progress:
                    progress(self.stage, self.fraction)
            elif "error" in msg:
                self.error = msg["error"]
        if self.state == "running" and self._process.poll() is not None and self._lines.empty():
            time.sleep(0.05)  # let the reader threads take the last lines
            if not self._lines.empty():
                return self.poll(progress)
            if self._process.returncode == 0:
                self.state = "done"
            else:
                self.state = "failed"
                lines = [ln for ln in self._stderr if ln.strip()]
                if not self.error:
                    tail = lines[-1:] or [f"exit code {self._process.returncode}"]
                    self.error = tail[0].removeprefix("deeplungreg: error: ")
                log.error("DeepLungReg: the registration worker (pid %d) failed with exit code %d: %s\n"
                          "its output on stderr:\n%s", self.pid, self._process.returncode, self.error,
                          "\n".join(lines) or "(none)")
        return self.state

    def cancel(self, timeout: float = 10.0) -> None:
        """End the worker and every process it started (a launcher's child Python included); nothing is
        written into the scene. POSIX: SIGTERM to its process group (the worker removes its staged files),
        SIGKILL to what is left after ``timeout`` s; Windows: ``taskkill /T /F``. Returns once none is left."""
        if self._process.poll() is None or self._tree_alive():
            self._end_tree(timeout)
        self.state = "cancelled"
        self._cleanup()

    def _tree_alive(self) -> bool:
        if _on_windows():
            return self._process.poll() is None
        return _group_alive(self.pid)

    def _end_tree(self, timeout: float) -> None:
        if _on_windows():
            flags = CREATE_NO_WINDOW
            subprocess.run(kill_tree_command(self.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           creationflags=flags, check=False)
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
        """POSIX: wait up to ``limit`` s until no process of the worker's group is left (True) or not (False)."""
        end = time.monotonic() + limit
        while True:
            self._process.poll()  # reap our own child (the launcher) as soon as it ends
            if self._process.returncode is not None and not _group_alive(self.pid):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)

    def finish(self) -> NodeRegistration:
        """The finished run's outputs, written into nodes (as :func:`.workflow.register_nodes` writes them)."""
        if self.poll() != "done":
            raise DeepLungRegError(f"register: the registration {self.state}" + (f": {self.error}" if self.error else ""))
        try:
            out = read_outputs(self._outdir)
            return write_nodes(self.scene, self.job, out, self.nodes, show=self.show)
        finally:
            self._cleanup()

    def wait(self, progress: Callable[[str, float], None] | None = None, cancel: Callable[[], bool] | None = None,
             interval: float = 0.1, idle: Callable[[], None] | None = None) -> NodeRegistration:
        """Block until the worker ends (``idle`` runs between polls, e.g. ``slicer.app.processEvents``);
        raises :class:`RegistrationCancelled` when ``cancel()`` says so, :class:`DeepLungRegError` when it failed."""
        while self.poll(progress) == "running":
            if cancel is not None and cancel():
                self.cancel()
                raise RegistrationCancelled("registration cancelled")
            if idle is not None:
                idle()
            time.sleep(interval)
        if self.state == "failed":
            self._cleanup()
            raise DeepLungRegError(self.error or "the registration failed")
        return self.finish()

    def _cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __del__(self):  # a handle dropped while running must not leave a process behind
        proc = getattr(self, "_process", None)
        if proc is None or getattr(self, "state", None) != "running":
            return
        try:
            if _on_windows():
                if proc.poll() is None:
                    subprocess.run(kill_tree_command(proc.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   creationflags=CREATE_NO_WINDOW, check=False)
            elif _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
