"""Registration in a separate process, so that Slicer stays responsive and a crash or an
out-of-memory end cannot take the user's scene with it.

:class:`BackgroundRegistration` checks the job on the nodes (as :func:`.workflow.register_nodes`
does), writes its inputs into a private folder, and starts ``deeplungreg worker`` there (the
library's own command, run by Slicer's Python). Progress comes back as JSON lines, which
:meth:`~BackgroundRegistration.poll` reads without blocking (a Slicer widget calls it from a
timer); :meth:`~BackgroundRegistration.cancel` ends the process; when it has finished,
:meth:`~BackgroundRegistration.finish` reads the outputs back and writes them into nodes with
the same code as the in-process path. Until then the scene is not touched, so a failed or
cancelled run leaves it as it was.

>>> run = BackgroundRegistration(scene, fixed_node, moving_node, "embed")
>>> result = run.wait(progress=print)   # or: poll() from a timer, then finish()
"""

from __future__ import annotations

import json
import os
import queue
import shutil
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
from .workflow import NodeRegistration, _checked_outputs, input_nodes, job_from_nodes, write_nodes

#: The library's folder: the worker process imports DeepLungRegLib from here.
_LIBRARY_PARENT = str(Path(__file__).resolve().parents[2])


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
    """One registration of two volume nodes in a worker process (arguments as :func:`.workflow.register_nodes`).

    Attributes:
        state: ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
        stage, fraction: the last progress report.
        error: the worker's one-line error when it failed.
    """

    def __init__(self, scene, fixed_node, moving_node, method: str = DEFAULT_METHOD, *, fixed_mask="auto", moving_mask="auto",
                 fixed_landmarks=None, moving_landmarks=None, device: str = "auto", options: dict | None = None,
                 outputs: dict | None = None, fixed_mask_segments=None, moving_mask_segments=None, show: bool = True,
                 workdir: str | Path | None = None, python: str | None = None):
        self.scene, self.fixed_node, self.moving_node, self.show = scene, fixed_node, moving_node, show
        self.job = job_from_nodes(fixed_node, moving_node, method, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                  fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, options=options,
                                  device=device, fixed_mask_segments=fixed_mask_segments, moving_mask_segments=moving_mask_segments)
        self.inputs = input_nodes(fixed_node, moving_node, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks)
        self.outputs = _checked_outputs(outputs, self.inputs)
        self.state, self.stage, self.fraction, self.error = "running", "starting", 0.0, None
        self.folder = Path(tempfile.mkdtemp(prefix="DeepLungReg-", dir=workdir))
        request = self._write_request()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_LIBRARY_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self._process = subprocess.Popen(
            [python or python_executable(), "-m", "DeepLungRegLib.cli", "worker", str(request)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(self.folder))
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, args=(self._process.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self._process.stderr, self._stderr.append), daemon=True).start()

    # ------------------------------------------------------------------ inputs
    def _write_request(self) -> Path:
        job, d = self.job, self.folder
        req = {"fixed": str(write_image(job.fixed, d / "fixed.nrrd")), "moving": str(write_image(job.moving, d / "moving.nrrd")),
               "method": job.method, "options": job.config.to_dict(), "device": job.device, "output": str(d / "out")}
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
                if not self.error:
                    tail = [ln for ln in self._stderr if ln.strip()][-1:] or [f"exit code {self._process.returncode}"]
                    self.error = tail[0].removeprefix("deeplungreg: error: ")
        return self.state

    def cancel(self) -> None:
        """End the worker; nothing is written into the scene."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self.state = "cancelled"
        self._cleanup()

    def finish(self) -> NodeRegistration:
        """The finished run's outputs, written into nodes (as :func:`.workflow.register_nodes` writes them)."""
        if self.poll() != "done":
            raise DeepLungRegError(f"register: the registration {self.state}" + (f": {self.error}" if self.error else ""))
        try:
            out = read_outputs(self.folder / "out")
            return write_nodes(self.scene, self.job, out, self.fixed_node, self.moving_node, outputs=self.outputs,
                               inputs=self.inputs, show=self.show)
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
        if proc is not None and proc.poll() is None:
            proc.kill()
