"""What ``deeplungreg review`` opens: the output folder of ``deeplungreg register``, checked before any
viewer starts, and turned back into the job and outputs that the Slicer bridge writes as nodes.

The folder holds the field, the warped image and the maps, and ``metrics.json`` (TRE per landmark,
the landmarks themselves and the paths of the registered images). The images themselves are read
from those paths (or from ``--fixed``/``--moving``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import read_image
from ..io.roles import ROLES, maps
from ..pipeline import RegistrationJob, RegistrationOutputs, read_outputs

#: Files the page cannot do without.
REQUIRED_FILES = ("metrics.json", ROLES["transform"].file, ROLES["warped"].file)
#: Views shown only when their file or data is there: the maps of the table of output roles.
OPTIONAL_VIEWS = {role.name: role.file for role in maps()}


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


def check_metrics(metrics: dict, path: str | Path = "metrics.json") -> None:
    """Check the types of the fields of ``metrics.json`` that the review page reads; the first wrong one
    is one line that names it, what it should be and what it holds (instead of a traceback later on)."""

    def want(ok: bool, name: str, should: str, value) -> None:
        if not ok:
            got = "but it is missing" if value is _MISSING else f"not {_shown(value)}"
            raise DeepLungRegError(f"review: {path} is damaged: field '{name}' should be {should}, {got}")

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
    if "inputs" in metrics:
        inputs = obj("inputs", metrics["inputs"])
        for key in ("fixed", "moving"):
            want(inputs.get(key) is None or isinstance(inputs[key], str), f"inputs.{key}", "a file path (text)", inputs.get(key))
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
        for key in ("fixed_lps", "moving_lps"):
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


@dataclass
class ReviewFolder:
    """A registration output folder that the review page can show.

    Attributes:
        path: the folder.
        metrics: its ``metrics.json``.
        fixed_path, moving_path: the registered images.
        views: which optional views exist: ``"jacobian"``, ``"ventilation"``, ``"ventilation_hu"``, ``"landmarks"``.
    """

    path: Path
    metrics: dict
    fixed_path: Path
    moving_path: Path
    views: dict[str, bool]

    @classmethod
    def open(cls, folder: str | Path, *, fixed: str | Path | None = None, moving: str | Path | None = None) -> "ReviewFolder":
        """Check ``folder``; every problem is one line that names what is missing."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DeepLungRegError(f"review: {folder} is not a folder")
        if not (folder / "metrics.json").is_file():
            raise DeepLungRegError(f"review: {folder} is not a registration output (it has no metrics.json); "
                                   "make one with 'deeplungreg register FIXED MOVING -o FOLDER'")
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DeepLungRegError(f"review: {folder / 'metrics.json'} is damaged ({exc})") from exc
        if not isinstance(metrics, dict) or "method" not in metrics or "fixed_grid" not in metrics:
            raise DeepLungRegError(f"review: {folder / 'metrics.json'} is not the metrics of a registration")
        check_metrics(metrics, folder / "metrics.json")
        missing = [f for f in REQUIRED_FILES[1:] if not (folder / f).is_file()]
        if missing:
            raise DeepLungRegError(f"review: {folder} lacks {' and '.join(missing)}, which the page needs")
        inputs = metrics.get("inputs", {})
        paths = []
        for which, given in (("fixed", fixed), ("moving", moving)):
            path = given or inputs.get(which)
            if not path:
                raise DeepLungRegError(f"review: {folder / 'metrics.json'} does not name the {which} image (an output of "
                                       f"an older version); pass --{which} FILE")
            if not Path(path).is_file():
                raise DeepLungRegError(f"review: the {which} image {path} does not exist"
                                       + ("" if given else f" (metrics.json names it); pass --{which} FILE"))
            paths.append(Path(path))
        views = {name: (folder / f).is_file() for name, f in OPTIONAL_VIEWS.items()}
        views["landmarks"] = "landmarks" in metrics and "tre_per_landmark" in metrics
        return cls(folder, metrics, paths[0], paths[1], views)

    def job(self) -> RegistrationJob:
        """The registration's job, rebuilt: its images, method, options and landmarks."""
        fixed = read_image(self.fixed_path, what=f"fixed image {self.fixed_path}")
        moving = read_image(self.moving_path, what=f"moving image {self.moving_path}")
        grid = Geometry.from_dict(self.metrics["fixed_grid"])
        if not fixed.geometry.same_as(grid):
            raise DeepLungRegError(f"review: the fixed image {self.fixed_path} is not the one registered into {self.path} "
                                   f"(its grid is {list(fixed.geometry.size)} voxels at {list(np.round(fixed.geometry.spacing, 3))} mm, "
                                   f"the registration's {list(grid.size)} at {list(np.round(grid.spacing, 3))} mm)")
        lm = self.metrics.get("landmarks") if self.views["landmarks"] else None
        fl = None if lm is None else np.asarray(lm["fixed_lps"], dtype=float)
        ml = None if lm is None else np.asarray(lm["moving_lps"], dtype=float)
        return RegistrationJob(fixed, moving, self.metrics["method"], None, None, fl, ml,
                               None if lm is None else list(lm["labels"]), self.metrics.get("config"), "cpu")

    def outputs(self) -> RegistrationOutputs:
        """The field, the warped image and the maps, read back."""
        return read_outputs(self.path)
