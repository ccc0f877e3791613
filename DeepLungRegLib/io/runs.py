"""A registration's output folder as a typed record: what its ``metrics.json`` and its manifest hold.

``metrics.json`` is written by :func:`write_metrics` and read by :meth:`RunFolder.read` (a folder a
user names: every problem is one line) or :meth:`RunFolder.find` (a folder a program looks into: a
missing, damaged or partial record is ``None``), and nowhere else. ``deeplungreg review``, ``batch``
(its results and its resume), the Slicer module's background path and ``register --overwrite``
all go through it.

Fields of ``metrics.json`` (those that :meth:`RunFolder.check` types are marked *checked*):
``method``, ``fixed_grid`` (*checked*), ``job`` (the job's JSON form,
:meth:`DeepLungRegLib.pipeline.RegistrationJob.to_json`), ``jacobian`` (*checked*), ``tre_before``,
``tre_after``, ``tre_per_landmark``, ``landmarks`` (*checked*), ``ventilation``, ``timings_s``,
``diagnostics``, ``config``, ``batch`` (what ``deeplungreg batch`` adds), ``output_files`` (the
manifest) and ``output_records`` (size and SHA-256 of each file: what a later ``--overwrite`` may
replace). Folders written before the ``job`` field name their images under ``inputs``.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeepLungRegError
from .outputs import MANIFEST_FILE, MANIFEST_KEY, RECORD_KEY, read_records, replace_file

#: The record of a registration's outputs (written last: its presence marks a complete set).
METRICS_FILE = MANIFEST_FILE
#: The key of ``metrics.json`` that holds the job (:meth:`DeepLungRegLib.pipeline.RegistrationJob.to_json`).
JOB_KEY = "job"


def _non_finite(value, where: str = "") -> str | None:
    """The path (``tre_after.max``, ``diagnostics.loss[3]``) of the first non-finite float in ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(the value itself)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def metrics_json(metrics: dict) -> str:
    """``metrics`` as JSON text, refusing NaN and Infinity (which JSON does not have) with the field's name."""
    try:
        return json.dumps(metrics, indent=2, allow_nan=False)
    except ValueError as exc:
        raise DeepLungRegError(f"register: metrics.json would hold a non-finite number in {_non_finite(metrics)}; "
                               "it is not written (please report this with the inputs)") from exc


def write_metrics(path: str | os.PathLike, metrics: dict) -> Path:
    """Write ``metrics.json`` (the only writer): a new file, or an existing one replaced at once with its
    mode kept, so that a kill never leaves half a record (its ``output_records`` decide what a rerun may replace)."""
    path = Path(path)
    text = metrics_json(metrics)
    if not os.path.lexists(path):
        path.write_text(text, encoding="utf-8")
        return path
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=stat.S_IMODE(os.stat(path).st_mode))
    return path


# ------------------------------------------------------------------ the checks of what the viewers read
#: What a field that is not there reads as.
_MISSING = object()


def _shown(value) -> str:
    """A field's value as its JSON, cut short."""
    if value is _MISSING:
        return "missing"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value, n: int | None = None) -> bool:
    return isinstance(value, list) and (n is None or len(value) == n) and all(_is_number(v) for v in value)


def check_metrics(metrics: dict, path: str | os.PathLike = METRICS_FILE, owner: str = "review") -> None:
    """Check the types of the fields of ``metrics.json`` that the viewers read; the first wrong one
    is one line that names it, what it should be and what it holds (instead of a traceback later on)."""

    def want(ok: bool, name: str, should: str, value) -> None:
        if not ok:
            got = "but it is missing" if value is _MISSING else f"not {_shown(value)}"
            raise DeepLungRegError(f"{owner}: {path} is damaged: field '{name}' should be {should}, {got}")

    def obj(name: str, value) -> dict:
        want(isinstance(value, dict), name, "an object ({...})", value)
        return value

    want(isinstance(metrics["method"], str) and bool(metrics["method"]), "method", "the method's name", metrics["method"])
    grid = obj("fixed_grid", metrics["fixed_grid"])
    for key, n, should in (("size", 3, "3 whole numbers of voxels"), ("spacing", 3, "3 spacings in mm"),
                           ("origin", 3, "3 numbers (mm)"), ("direction", 9, "9 numbers (the direction matrix)")):
        value = grid.get(key, _MISSING)
        ok = _numbers(value, n) and (key != "size" or all(float(v).is_integer() and v > 0 for v in value)) \
            and (key != "spacing" or all(v > 0 for v in value))
        want(ok, f"fixed_grid.{key}", should, value)
    jac = obj("jacobian", metrics.get("jacobian", _MISSING))
    for key in ("folding_percent", "sd_log_j", "min_j", "max_j"):
        want(_is_number(jac.get(key)), f"jacobian.{key}", "a number", jac.get(key, _MISSING))
    for key in (JOB_KEY, "inputs"):
        if key in metrics:
            inputs = obj(key, metrics[key])
            for which in ("fixed", "moving"):
                want(inputs.get(which) is None or isinstance(inputs[which], str), f"{key}.{which}", "a file path (text)",
                     inputs.get(which))
    for which in ("tre_before", "tre_after") if ("tre_before" in metrics or "tre_after" in metrics) else ():
        tre = obj(which, metrics.get(which, _MISSING))
        for key in ("n", "mean", "std", "p95", "max"):
            want(_is_number(tre.get(key)), f"{which}.{key}", "a number", tre.get(key, _MISSING))
    for key in ("timings_s", "diagnostics"):
        if key in metrics:
            obj(key, metrics[key])
    total = metrics.get("timings_s", {}).get("total")
    want(total is None or _is_number(total), "timings_s.total", "a number of seconds", total)
    device = metrics.get("diagnostics", {}).get("device")
    want(device is None or isinstance(device, str), "diagnostics.device", "text", device)
    want(metrics.get("config") is None or isinstance(metrics["config"], dict), "config", "an object ({...}) or null",
         metrics.get("config"))
    n = None
    if "landmarks" in metrics:
        lm = obj("landmarks", metrics["landmarks"])
        for key in ("fixed_lps", "moving_lps", "mapped_lps"):
            if key == "mapped_lps" and key not in lm:  # where the field maps each fixed point (runs since 4D-CT)
                continue
            points = lm.get(key, _MISSING)
            ok = isinstance(points, list) and len(points) > 0 and all(_numbers(p, 3) for p in points)
            want(ok, f"landmarks.{key}", "a list of [x, y, z] points (numbers, mm)", points)
            want(n is None or len(points) == n, f"landmarks.{key}", f"{n} points like landmarks.fixed_lps", points)
            n = len(points)
        labels = lm.get("labels", _MISSING)
        want(isinstance(labels, list) and all(isinstance(t, str) for t in labels), "landmarks.labels", "a list of names (text)",
             labels)
        want(len(labels) == n, "landmarks.labels", f"{n} names, one per point", labels)
    if "tre_per_landmark" in metrics:
        per = metrics["tre_per_landmark"]
        want(isinstance(per, list) and all(isinstance(p, dict) and _is_number(p.get("before")) and _is_number(p.get("after"))
                                           for p in per), "tre_per_landmark", 'a list of {"before": mm, "after": mm}', per)
        want(n is None or len(per) == n, "tre_per_landmark", f"{n} entries, one per landmark", per)


# ------------------------------------------------------------------ the folder
@dataclass
class RunFolder:
    """One registration's output folder, read back.

    Attributes:
        path: the folder.
        metrics: its ``metrics.json``, whole.
    """

    path: Path
    metrics: dict

    @classmethod
    def read(cls, folder: str | os.PathLike, owner: str = "review") -> "RunFolder":
        """The folder a user named; every problem (no folder, no or a damaged ``metrics.json``, a field of
        the wrong type) is one line that names it."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DeepLungRegError(f"{owner}: {folder} is not a folder")
        path = folder / METRICS_FILE
        if not path.is_file():
            raise DeepLungRegError(f"{owner}: {folder} is not a registration output (it has no {METRICS_FILE}); "
                                   "make one with 'deeplungreg register FIXED MOVING -o FOLDER'")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DeepLungRegError(f"{owner}: {path} is damaged ({exc})") from exc
        except OSError as exc:
            raise DeepLungRegError(f"{owner}: cannot read {path} ({exc.strerror or exc})") from exc
        if not isinstance(metrics, dict) or "method" not in metrics or "fixed_grid" not in metrics:
            raise DeepLungRegError(f"{owner}: {path} is not the metrics of a registration")
        check_metrics(metrics, path, owner)
        return cls(folder, metrics)

    @classmethod
    def find(cls, folder: str | os.PathLike) -> "RunFolder | None":
        """A complete registration output in ``folder`` (a ``metrics.json`` of ours and every file its manifest
        lists), else ``None``: a program's look into a folder (``batch``'s resume), not a user's request."""
        try:
            run = cls.read(folder)
        except DeepLungRegError:
            return None
        return run if run.complete else None

    # ------------------------------------------------------------------ what it holds
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def method(self) -> str:
        return self.metrics["method"]

    @property
    def files(self) -> list[str]:
        """The manifest: the files the run wrote (``metrics.json`` among them); empty in a folder without one."""
        files = self.metrics.get(MANIFEST_KEY)
        return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []

    @property
    def complete(self) -> bool:
        """Whether every file the manifest lists is there (a whole output, not one a kill cut short)."""
        return bool(self.files) and all((self.path / name).is_file() for name in self.files)

    @property
    def records(self) -> dict[str, dict] | None:
        """Size and SHA-256 of each file the run wrote (what a later ``--overwrite`` may replace)."""
        return read_records(self.metrics_path, RECORD_KEY)

    @staticmethod
    def records_in(folder: str | os.PathLike) -> dict[str, dict] | None:
        """:attr:`records` of whatever ``metrics.json`` of ours ``folder`` holds (``None``: none, or not ours), without
        the checks of :meth:`read`: what decides, before a run, which files a rerun may replace."""
        return read_records(Path(folder) / METRICS_FILE, RECORD_KEY)

    @property
    def job(self) -> dict:
        """The job's JSON form (:meth:`DeepLungRegLib.pipeline.RegistrationJob.to_json`); for a folder of an older
        version, what it recorded of it (its ``inputs``: the image and landmark paths)."""
        job = self.metrics.get(JOB_KEY)
        if isinstance(job, dict):
            return dict(job)
        old = self.metrics.get("inputs")
        return {"method": self.method, **(old if isinstance(old, dict) else {})}

    def input_path(self, which: str) -> str | None:
        """The path of the registered ``"fixed"`` or ``"moving"`` image, as the job recorded it (``None``: not recorded)."""
        value = self.job.get(which)
        return value if isinstance(value, str) and value else None

    @property
    def landmarks(self) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """``(fixed (N, 3), moving (N, 3), labels)`` in LPS mm, as registered, or ``None`` without landmarks."""
        lm = self.metrics.get("landmarks")
        if not isinstance(lm, dict) or "tre_per_landmark" not in self.metrics:
            return None
        return np.asarray(lm["fixed_lps"], float), np.asarray(lm["moving_lps"], float), list(lm["labels"])

    @property
    def tre(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(before, after)``: TRE in mm per landmark, or ``None`` without landmarks."""
        per = self.metrics.get("tre_per_landmark")
        if per is None:
            return None
        return np.array([p["before"] for p in per], float), np.array([p["after"] for p in per], float)

    def update(self, **fields) -> None:
        """Add ``fields`` to ``metrics.json`` (replaced at once; its records stay those of the other files)."""
        self.metrics.update(fields)
        write_metrics(self.metrics_path, self.metrics)
