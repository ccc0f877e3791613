"""The cohort file of ``deeplungreg batch``: one row per inhale/exhale pair, checked as a whole before any work.

Columns: ``id,fixed,moving`` and, optionally, ``fixed_mask,moving_mask,fixed_landmarks,moving_landmarks``.
Paths may be relative to the file's folder. A mask cell may also be ``auto`` (the automatic lung
mask, the default for an empty cell) or ``none``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ..errors import DeepLungRegError

REQUIRED_COLUMNS = ("id", "fixed", "moving")
OPTIONAL_COLUMNS = ("fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks")
#: An id names the pair's output folder: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class CohortRow:
    """One pair of a cohort (absolute paths; masks ``"auto"``, ``"none"`` or a path).

    Attributes:
        line: the row's line in the cohort file (0 for rows given in Python).
    """

    id: str
    fixed: str
    moving: str
    fixed_mask: str = "auto"
    moving_mask: str = "auto"
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    line: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def job(self, method: str, options: dict | None = None, device: str = "auto") -> dict:
        """The pair as a job's JSON form (:meth:`DeepLungRegLib.pipeline.RegistrationJob.to_json`), with the cohort's
        method, options and device: what a batch task registers (``RegistrationJob.from_json``)."""
        return {"fixed": self.fixed, "moving": self.moving, "method": method, "options": dict(options or {}), "device": device,
                "fixed_mask": self.fixed_mask, "moving_mask": self.moving_mask, "fixed_landmarks": self.fixed_landmarks,
                "moving_landmarks": self.moving_landmarks, "landmark_labels": None, "landmark_spacing": None}


def read_cohort(path: str | Path) -> list[CohortRow]:
    """The rows of a cohort CSV file; every bad row is reported at once, with its line number."""
    path = Path(path)
    if not path.is_file():
        raise DeepLungRegError(f"batch: cohort file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            unknown = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if not header or unknown or missing:
                what = ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []) + \
                       ([f"missing column(s) {', '.join(missing)}"] if missing else [])
                raise DeepLungRegError(f"batch: {path} line 1: {'; '.join(what) or 'no header'}; the columns are "
                                       f"{', '.join(REQUIRED_COLUMNS)} and optionally {', '.join(OPTIONAL_COLUMNS)}")
            raw = []
            for record in reader:
                cells = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None}
                if None in record:
                    cells["__extra__"] = "x"
                if any(cells.values()):
                    raw.append((reader.line_num, cells))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DeepLungRegError(f"batch: {path} is not a readable CSV file ({exc})") from exc
    return check_rows(raw, path.parent, str(path))


def cohort_rows(rows: Iterable[CohortRow | dict], base: str | Path = ".") -> list[CohortRow]:
    """Rows given in Python (dicts or :class:`CohortRow`), checked like a cohort file's."""
    raw = []
    for i, r in enumerate(rows, 1):
        d = r.to_dict() if isinstance(r, CohortRow) else dict(r)
        line = int(d.pop("line", 0) or 0) or i
        raw.append((line, {k: "" if v is None else str(v) for k, v in d.items()}))
    return check_rows(raw, Path(base), "cohort")


def check_rows(raw: list[tuple[int, dict[str, str]]], base: Path, source: str) -> list[CohortRow]:
    """:class:`CohortRow` objects from ``(line, cells)``; raises one error that lists every bad row."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    rows = []

    def resolve(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    for line, cells in raw:
        bad = []
        if "__extra__" in cells:
            bad.append("more cells than columns")
        unknown = sorted(set(cells) - set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS) - {"__extra__"})
        if unknown:
            bad.append(f"unknown column(s) {', '.join(unknown)}")
        pid = cells.get("id", "")
        if not ID_PATTERN.match(pid):
            bad.append(f"id {pid!r} is not a folder name (letters, digits, '.', '_', '-')" if pid else "no id")
        elif pid in seen:
            bad.append(f"id {pid!r} repeats line {seen[pid]}")
        else:
            seen[pid] = line
        paths = {}
        for col in ("fixed", "moving"):
            if not cells.get(col):
                bad.append(f"no {col} image")
            elif not resolve(cells[col]).exists():
                bad.append(f"{col} image {cells[col]} does not exist")
            else:
                paths[col] = str(resolve(cells[col]))
        for col in ("fixed_mask", "moving_mask"):
            v = cells.get(col, "") or "auto"
            if v.lower() in ("auto", "none"):
                paths[col] = v.lower()
            elif not resolve(v).is_file():
                bad.append(f"{col.replace('_', ' ')} {v} does not exist")
            else:
                paths[col] = str(resolve(v))
        fl, ml = cells.get("fixed_landmarks", ""), cells.get("moving_landmarks", "")
        if bool(fl) != bool(ml):
            bad.append("give both fixed_landmarks and moving_landmarks, or neither")
        for col, v in (("fixed_landmarks", fl), ("moving_landmarks", ml)):
            if v and not resolve(v).is_file():
                bad.append(f"{col.replace('_', ' ')} {v} does not exist")
            elif v:
                paths[col] = str(resolve(v))
        if bad:
            problems.append(f"line {line}: {', '.join(bad)}")
        else:
            rows.append(CohortRow(pid, paths["fixed"], paths["moving"], paths["fixed_mask"], paths["moving_mask"],
                                  paths.get("fixed_landmarks"), paths.get("moving_landmarks"), line))
    if problems:
        raise DeepLungRegError(f"batch: {source} has {len(problems)} bad row(s): {'; '.join(problems)}")
    if not rows:
        raise DeepLungRegError(f"batch: {source} holds no pairs")
    return rows
