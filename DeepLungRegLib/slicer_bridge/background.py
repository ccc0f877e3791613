"""Registration in a separate process, so that Slicer stays responsive and a crash or an
out-of-memory end cannot take the user's scene with it: a pair (:class:`BackgroundRegistration`) or every
phase of a 4D-CT (:class:`BackgroundSequence`, see there), with what they share in one base class.

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

import os
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


class _BackgroundRun:
    """What a run in the worker process shares: a private folder (deleted afterwards), the worker, its state and
    progress, :meth:`poll`, :meth:`cancel`, :meth:`finish` (the outputs into the scene: :meth:`_load`) and :meth:`wait`.

    The worker's progress takes the first :attr:`_share` of the fractions; :meth:`finish`'s loading the rest."""

    #: the share of the progress that the worker's run takes
    _share = 1.0
    #: how error messages name the run
    _owner = "register"

    def _start(self, make_request: Callable[[Path], dict], workdir, python: str | None) -> None:
        """Make the private folder, write what ``make_request(folder)`` needs there, start the worker."""
        self.folder = Path(tempfile.mkdtemp(prefix="DeepLungReg-", dir=workdir))
        try:
            self.worker = WorkerProcess(make_request(self.folder), self.folder, python=python)
        except BaseException:
            self._cleanup()
            raise
        self.pid = self.worker.pid

    @property
    def state(self) -> str:
        return self.worker.state

    @property
    def stage(self) -> str:
        return self.worker.stage

    @property
    def fraction(self) -> float:
        return self._share * self.worker.fraction

    @property
    def error(self) -> str | None:
        return self.worker.error

    def _scaled(self, progress: Callable[[str, float], None] | None, base: float = 0.0, span: float | None = None):
        span = self._share if span is None else span
        return None if progress is None else (lambda stage, f: progress(stage, base + span * f))

    # ------------------------------------------------------------------ progress
    def poll(self, progress: Callable[[str, float], None] | None = None) -> str:
        """Read what the worker reported since the last call (never blocks); returns :attr:`state`."""
        return self.worker.poll(self._scaled(progress))

    def cancel(self, timeout: float = 10.0) -> None:
        """End the worker and every process it started (a launcher's child Python included); nothing is
        written into the scene (see :meth:`DeepLungRegLib.worker.WorkerProcess.cancel`). Returns once none is left."""
        self.worker.cancel(timeout)
        self._cleanup()

    def finish(self, progress: Callable[[str, float], None] | None = None):
        """The finished run's outputs, written into nodes; ``progress`` goes on from the worker's share to 1."""
        if self.poll() != "done":
            raise DeepLungRegError(f"{self._owner}: the registration {self.state}" + (f": {self.error}" if self.error else ""))
        try:
            return self._load(self._scaled(progress, self._share, 1.0 - self._share))
        finally:
            self._cleanup()

    def _load(self, progress: Callable[[str, float], None] | None):
        raise NotImplementedError

    def wait(self, progress: Callable[[str, float], None] | None = None, cancel: Callable[[], bool] | None = None,
             interval: float = 0.1, idle: Callable[[], None] | None = None):
        """Block until the worker ends (``idle`` runs between polls, e.g. ``slicer.app.processEvents``), then
        :meth:`finish`; raises :class:`RegistrationCancelled` when ``cancel()`` says so, :class:`DeepLungRegError`
        when it failed."""
        try:
            self.worker.wait(self._scaled(progress), cancel, interval, idle)
        except DeepLungRegError:
            self._cleanup()
            raise
        except BaseException as exc:
            self._cleanup()
            if self.state == "failed":  # it crashed: one line for the user as well
                raise DeepLungRegError(self.error or "the registration failed") from exc
            raise
        return self.finish(progress)

    def _cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class BackgroundRegistration(_BackgroundRun):
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
        self._start(lambda folder: {"job": self.job.save(folder), "output": str(self._outdir), "report": self.report_folder is not None,
                                    "overwrite": self.report_folder is None, "private_inputs": True}, workdir, python)

    @property
    def _outdir(self) -> Path:
        """Where the worker writes: the kept report folder, or the private folder."""
        return self.report_folder if self.report_folder is not None else self.folder / "out"

    def _load(self, progress) -> NodeRegistration:
        """The outputs written into nodes (as :func:`.workflow.register_nodes` writes them)."""
        return write_nodes(self.scene, self.job, read_outputs(self._outdir), self.nodes, show=self.show)


class BackgroundSequence(_BackgroundRun):
    """Every phase of a 4D-CT registered to a reference phase in a worker process (as :func:`.sequence.register_sequence_node`
    does in this one), so that Slicer stays responsive through the cycle.

    ``phases``: a volume sequence node (its phases are written, one at a time, into the private folder for the worker,
    under the sequence's index values as names), or the path of a 4D-CT the library reads (a folder of phases, a 4D NRRD,
    a DICOM series: passed on as it is). The worker runs :func:`~DeepLungRegLib.sequence.register_sequence` into
    ``outdir`` (the user's folder: a phase folder per phase, ``sequence.json``...; never over an input or a file it did
    not write), reporting per phase; :meth:`cancel` ends it (the phases finished so far stay in ``outdir``, the one
    under way goes, no summary is written, the scene gets nothing); :meth:`finish` loads the results with
    :func:`.sequence.load_sequence_results` (the sequences in one browser, the volume curve, the TRE table) and returns
    ``(summary, nodes)``.

    Other arguments as :func:`.sequence.register_sequence_node`; ``start``: ``"reference"`` or ``"neighbour"``;
    ``report``: also write ``report.html`` (needs matplotlib in the worker's Python).

    Attributes: as :class:`BackgroundRegistration`'s; ``phases``: the :class:`~DeepLungRegLib.io.phases.Phases`
    (checked before the worker starts), ``outdir``: the output folder (absolute; not resolved through links).
    """

    _share = 0.9  # the registration; then the loading into the scene, as register_sequence_node
    _owner = "sequence"

    def __init__(self, scene, phases, outdir: str | Path, method: str = DEFAULT_METHOD, *, reference: int | None = None,
                 options: dict | None = None, device: str = "auto", start: str = "reference", landmarks=None,
                 overwrite: bool = False, report: bool = False, browser_node=None, workdir: str | Path | None = None,
                 python: str | None = None):
        from ..io.phases import read_phases
        from ..methods import get_method
        from ..sequence import read_phase_landmarks
        from ..sequence.run import registration_order
        from .sequence import phases_from_sequence_node

        self.scene, self.browser_node = scene, browser_node
        self.phases_node = phases if hasattr(phases, "IsA") else None
        self.phases = phases_from_sequence_node(phases) if self.phases_node is not None else \
            read_phases(phases, what=f"4D-CT {phases}")
        n = len(self.phases)
        if reference is not None and not 0 <= int(reference) < n:
            raise DeepLungRegError(f"sequence: the reference phase must be an index from 0 to {n - 1}, got {reference}")
        get_method(method).make_config(options)  # a bad setting or start: one line now, not from the worker
        registration_order(n, 0, start)
        if landmarks is not None and not isinstance(landmarks, dict):
            landmarks = read_phase_landmarks(landmarks, self.phases.names)
        self.outdir = Path(os.path.abspath(Path(outdir).expanduser()))
        request = {"kind": "sequence", "output": str(self.outdir), "method": method, "options": dict(options or {}),
                   "device": device, "start": start, "reference": None if reference is None else int(reference),
                   "overwrite": bool(overwrite), "report": bool(report),
                   "landmarks": {str(i): [[float(v) for v in p] for p in pts] for i, pts in (landmarks or {}).items()}}

        def make_request(folder: Path) -> dict:
            if self.phases_node is None:
                return dict(request, phases=str(Path(os.path.abspath(Path(phases).expanduser()))))
            from ..io.images import write_image

            staged = folder / "phases"
            staged.mkdir()
            for i in range(n):  # one phase in memory at a time; uncompressed: written fast, deleted afterwards
                write_image(self.phases[i], staged / f"{i:04d}.nrrd", compress=False)
            return dict(request, phases=str(staged), phase_names=list(self.phases.names), source=str(self.phases.source))

        self._start(make_request, workdir, python)

    @property
    def summary(self) -> dict | None:
        """The run's summary (``sequence.json``) once it is done, else ``None``."""
        return (self.worker.result or {}).get("summary") if self.state == "done" else None

    def _load(self, progress) -> tuple[dict, dict]:
        from .sequence import load_sequence_results

        nodes = load_sequence_results(self.scene, self.outdir, phases_node=self.phases_node, phases=self.phases,
                                      browser_node=self.browser_node, progress=progress)
        return self.summary, nodes
