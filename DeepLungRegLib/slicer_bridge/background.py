"""Registration in a separate process, so that Slicer stays responsive and a crash or an
out-of-memory end cannot take the user's scene with it.

:class:`BackgroundRegistration` checks the job on the nodes (as :func:`.workflow.register_nodes`
does), writes its inputs into a private folder, and runs it there in the library's worker process
(:class:`DeepLungRegLib.worker.WorkerProcess`, run by Slicer's Python). Progress comes back as JSON
lines, which :meth:`~BackgroundRegistration.poll` reads without blocking (a Slicer widget calls it
from a timer); :meth:`~BackgroundRegistration.cancel` ends the process and every process it started
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

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import DeepLungRegError
from ..pipeline import DEFAULT_METHOD, read_outputs
from ..worker import WorkerProcess
from .selection import RegistrationNodes
from .workflow import NodeRegistration, job_from_nodes, write_nodes


def _run_folder_name(fixed_node, moving_node, method: str) -> str:
    """A new folder name for one run's report: the volumes' names, the method and the time."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text or "volume").strip("._") or "volume"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{clean(moving_node.GetName())}-to-{clean(fixed_node.GetName())}-{clean(method)}-{stamp}"


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
        self.report_folder = None if report_folder is None else \
            Path(report_folder).expanduser().resolve() / _run_folder_name(nodes.fixed, nodes.moving, method)
        self.folder = Path(tempfile.mkdtemp(prefix="DeepLungReg-", dir=workdir))
        try:
            request = {"job": self.job.save(self.folder), "output": str(self._outdir), "report": self.report_folder is not None,
                       "overwrite": self.report_folder is None, "private_inputs": True}
            self.worker = WorkerProcess(request, self.folder, python=python)
        except BaseException:
            self._cleanup()
            raise
        self.pid = self.worker.pid

    @property
    def _outdir(self) -> Path:
        """Where the worker writes: the kept report folder, or the private folder."""
        return self.report_folder if self.report_folder is not None else self.folder / "out"

    @property
    def state(self) -> str:
        return self.worker.state

    @property
    def stage(self) -> str:
        return self.worker.stage

    @property
    def fraction(self) -> float:
        return self.worker.fraction

    @property
    def error(self) -> str | None:
        return self.worker.error

    # ------------------------------------------------------------------ progress
    def poll(self, progress: Callable[[str, float], None] | None = None) -> str:
        """Read what the worker reported since the last call (never blocks); returns :attr:`state`."""
        return self.worker.poll(progress)

    def cancel(self, timeout: float = 10.0) -> None:
        """End the worker and every process it started (a launcher's child Python included); nothing is
        written into the scene (see :meth:`DeepLungRegLib.worker.WorkerProcess.cancel`). Returns once none is left."""
        self.worker.cancel(timeout)
        self._cleanup()

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
        try:
            self.worker.wait(progress, cancel, interval, idle)
        except DeepLungRegError:
            self._cleanup()
            raise
        except BaseException as exc:
            self._cleanup()
            if self.state == "failed":  # it crashed: one line for the user as well
                raise DeepLungRegError(self.error or "the registration failed") from exc
            raise
        return self.finish()

    def _cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
