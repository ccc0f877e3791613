"""Landmark files. In memory, landmarks are always ``(N, 3)`` LPS mm.

Supported formats (chosen by file ending, or ``fmt=``):

* ``dirlab`` (``.txt`` without an elastix header): 1-based voxel ``x y z``
  per line; the voxel ``spacing`` must be given (world origin 0, identity
  direction, as DIR-Lab defines it).
* ``csv``: a header with ``x,y,z`` columns (others ignored), mm, LPS.
* ``mrk.json``: Slicer markups JSON, honouring ``coordinateSystem`` (RAS/LPS).
* ``fcsv``: Slicer fiducial CSV, honouring the ``# CoordinateSystem`` line.
* ``elastix`` (``.txt`` starting with ``point`` or ``index``): elastix point
  sets; ``index`` needs the image ``geometry``.
* ``pts``: whitespace ``x y z`` in mm with ``#`` comments.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry, lps_to_ras, ras_to_lps

FORMATS = ("dirlab", "csv", "mrk.json", "fcsv", "elastix", "elastix-index", "pts")
#: A coordinate beyond this many mm (a kilometre) is not a point of a scan; larger values overflow in TRE and statistics.
MAX_COORD_MM = 1e6
_DECIMAL_COMMA = "; are decimal commas used (80,5 for 80.5)? Write decimal points"


def _detect(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".mrk.json") or name.endswith(".json"):
        return "mrk.json"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".pts"):
        return "pts"
    if name.endswith(".txt"):
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline().strip().lower()
        return "elastix" if first in ("point", "index") else "dirlab"
    raise DeepLungRegError(f"read_landmarks: cannot tell the format of {path}; use .csv, .mrk.json, .fcsv, .txt (DIR-Lab or elastix) or .pts")


def _numeric_rows(lines: list[str], path: Path, ncols: int = 3) -> np.ndarray:
    rows = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != ncols:
            hint = _DECIMAL_COMMA if "," in line and len(parts) > ncols else ""
            raise DeepLungRegError(f"read_landmarks: {path} line {n} has {len(parts)} values, expected {ncols}{hint}")
        try:
            vals = [float(p) for p in parts]
        except ValueError as exc:
            raise DeepLungRegError(f"read_landmarks: {path} line {n} is not numeric: {line[:60]!r}") from exc
        rows.append(vals)
    return np.asarray(rows, dtype=float).reshape(-1, ncols)


def read_landmarks(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    geometry: Geometry | None = None,
) -> np.ndarray:
    """Read landmarks into an ``(N, 3)`` array of LPS mm points.

    Args:
        path: the landmark file.
        fmt: one of :data:`FORMATS`; guessed from the file when omitted.
        spacing: voxel spacing ``(sx, sy, sz)`` in mm, required for DIR-Lab files.
        geometry: image grid, required for elastix ``index`` files.
    """
    path = Path(path)
    if not path.is_file():
        raise DeepLungRegError(f"read_landmarks: {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    fmt = fmt or _detect(path)
    if fmt not in FORMATS:
        raise DeepLungRegError(f"read_landmarks: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    text = path.read_text(encoding="utf-8-sig", errors="replace")  # a byte-order mark (Excel writes one) is read
    if fmt == "dirlab":
        if spacing is None:
            raise DeepLungRegError(f"read_landmarks: {path} is a DIR-Lab voxel file; its voxel spacing must be given (--spacing SX SY SZ)")
        sp = np.asarray(spacing, dtype=float)
        if sp.shape != (3,) or np.any(sp <= 0):
            raise DeepLungRegError(f"read_landmarks: spacing must be three positive numbers, got {spacing}")
        pts = (_numeric_rows(text.splitlines(), path) - 1.0) * sp
    elif fmt == "pts":
        pts = _numeric_rows(text.splitlines(), path)
    elif fmt in ("elastix", "elastix-index"):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        kind = lines[0].strip().lower() if lines else ""
        if kind not in ("point", "index"):
            raise DeepLungRegError(f"read_landmarks: {path} is not an elastix point file (first line must be 'point' or 'index')")
        try:
            count = int(lines[1].split()[0])
        except (IndexError, ValueError) as exc:
            raise DeepLungRegError(f"read_landmarks: {path} has no point count on line 2") from exc
        pts = _numeric_rows(lines[2:], path)
        if len(pts) != count:
            raise DeepLungRegError(f"read_landmarks: {path} announces {count} points but holds {len(pts)}")
        if kind == "index":
            if geometry is None:
                raise DeepLungRegError(f"read_landmarks: {path} holds voxel indices; the image geometry is needed to convert them")
            pts = geometry.index_to_world(pts)
    elif fmt == "csv":
        reader = csv.DictReader(_io.StringIO(text))
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if not all(k in cols for k in ("x", "y", "z")):
            raise DeepLungRegError(f"read_landmarks: {path} needs a header with x,y,z columns, got {reader.fieldnames}")
        rows = []
        for r in reader:
            n, extra, missing = reader.line_num, r.get(None, []), [k for k, v in r.items() if v is None]
            if extra or missing:  # more (or fewer) values than the header has columns
                have = len(reader.fieldnames) + len(extra) - len(missing)
                hint = _DECIMAL_COMMA if extra else ""
                raise DeepLungRegError(f"read_landmarks: {path} line {n} has {have} values for the "
                                       f"{len(reader.fieldnames)} columns {','.join(reader.fieldnames)}{hint}")
            try:
                rows.append([float(r[cols[k]]) for k in ("x", "y", "z")])
            except ValueError as exc:
                raise DeepLungRegError(f"read_landmarks: {path} line {n} has a non-numeric coordinate: "
                                       f"{','.join(r[cols[k]] for k in ('x', 'y', 'z'))!r}") from exc
        pts = np.asarray(rows, dtype=float).reshape(-1, 3)
    elif fmt == "fcsv":
        system = "RAS"
        for line in text.splitlines():
            if line.startswith("#") and "coordinatesystem" in line.lower().replace(" ", ""):
                value = line.split("=", 1)[1].strip().upper()
                system = {"0": "RAS", "1": "LPS"}.get(value, value)
        columns = next((ln.split("=", 1)[1].split(",") for ln in text.splitlines()
                        if ln.startswith("#") and ln[1:].strip().lower().startswith("columns") and "=" in ln), None)
        rows = []
        for n, r in enumerate(csv.reader(_io.StringIO(text)), 1):
            if not r or not "".join(r).strip() or r[0].startswith("#"):
                continue
            if len(r) < 4 or (columns and len(r) > len(columns)):
                hint = _DECIMAL_COMMA if len(r) >= 4 else ""
                expected = f"{len(columns)} (its columns line)" if columns else "at least 4 (id,x,y,z)"
                raise DeepLungRegError(f"read_landmarks: {path} line {n} has {len(r)} values, expected {expected}{hint}")
            try:
                rows.append([float(v) for v in r[1:4]])
            except ValueError as exc:
                raise DeepLungRegError(f"read_landmarks: {path} line {n} has a non-numeric coordinate: {','.join(r[1:4])!r}") from exc
        pts = np.asarray(rows, dtype=float).reshape(-1, 3)
        if system not in ("RAS", "LPS"):
            raise DeepLungRegError(f"read_landmarks: {path} has unknown coordinate system {system!r}")
        if system == "RAS":
            pts = ras_to_lps(pts)
    else:  # mrk.json
        try:
            doc = json.loads(text)
            markup = doc["markups"][0]
        except (json.JSONDecodeError, KeyError, IndexError) as exc:
            raise DeepLungRegError(f"read_landmarks: {path} is not a Slicer markups JSON file") from exc
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("RAS", "LPS"):
            raise DeepLungRegError(f"read_landmarks: {path} has unknown coordinate system {system!r}")
        positions = [cp.get("position") if isinstance(cp, dict) else None for cp in markup.get("controlPoints", [])]
        for i, pos in enumerate(positions):
            if not (isinstance(pos, list) and len(pos) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pos)):
                raise DeepLungRegError(f"read_landmarks: {path} control point {i + 1} has no position of three numbers (got {pos!r})")
        pts = np.asarray(positions, dtype=float).reshape(-1, 3)
        if system == "RAS":
            pts = ras_to_lps(pts)
    if len(pts) == 0:
        raise DeepLungRegError(f"read_landmarks: {path} holds no landmarks")
    check_points(pts, str(path), "read_landmarks")
    return pts


def check_points(points: np.ndarray, what: str, owner: str = "register") -> None:
    """Refuse landmarks with a coordinate that is not a finite number of mm within :data:`MAX_COORD_MM`
    (NaN, Inf, or values like 1e308 whose differences overflow), naming the first such point."""
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    bad = ~np.all(np.isfinite(pts) & (np.abs(pts) <= MAX_COORD_MM), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DeepLungRegError(f"{owner}: {what} point {i + 1} ({', '.join(f'{v:g}' for v in pts[i])}) has a coordinate that is "
                               f"NaN, infinite or beyond ±{MAX_COORD_MM:g} mm ({int(bad.sum())} such points)")


def check_pairing(fixed, moving, owner: str = "register", names: tuple[str, str] = ("fixed landmarks", "moving landmarks")) -> int:
    """The one check that two landmark sets correspond: both or neither, each ``(N, 3)`` with the same ``N > 0``,
    every coordinate finite (:func:`check_points`). ``names`` name the two sets (files or point lists) in the
    one-line error. Returns ``N`` (0 for neither)."""
    if (fixed is None) != (moving is None):
        raise DeepLungRegError(f"{owner}: give both {names[0]} and {names[1]}, or neither")
    if fixed is None:
        return 0
    p, q = np.asarray(fixed, dtype=float), np.asarray(moving, dtype=float)
    for pts, name in ((p, names[0]), (q, names[1])):
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise DeepLungRegError(f"{owner}: {name} must be N points of 3 coordinates, got an array of shape {pts.shape}")
    if len(p) != len(q):
        raise DeepLungRegError(f"{owner}: {names[0]} has {len(p)} points but {names[1]} has {len(q)}; "
                               "landmarks must correspond one to one")
    if len(p) == 0:
        raise DeepLungRegError(f"{owner}: {names[0]} holds no points")
    check_points(p, names[0].removesuffix("s"), owner)
    check_points(q, names[1].removesuffix("s"), owner)
    return len(p)


def write_landmarks(
    points: np.ndarray,
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    labels: list[str] | None = None,
    coordinate_system: str = "LPS",
) -> Path:
    """Write ``(N, 3)`` LPS mm landmarks in the format given by ``fmt`` or the ending.

    DIR-Lab output needs ``spacing`` and is rounded to whole 1-based voxels
    only if the values are whole; otherwise fractional voxels are written.
    """
    path = Path(path)
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    if not np.all(np.isfinite(pts)):
        raise DeepLungRegError("write_landmarks: points contain NaN/Inf")
    name = path.name.lower()
    if fmt is None:
        fmt = "mrk.json" if name.endswith(".json") else "fcsv" if name.endswith(".fcsv") else "csv" if name.endswith(".csv") else "pts" if name.endswith(".pts") else "elastix" if name.endswith(".txt") and spacing is None else "dirlab" if name.endswith(".txt") else None
    if fmt not in FORMATS or fmt == "elastix-index":
        raise DeepLungRegError(f"write_landmarks: cannot write format {fmt!r} for {path}")
    labels = labels or [f"L{i + 1}" for i in range(len(pts))]
    system = coordinate_system.upper()
    out = lps_to_ras(pts) if system == "RAS" else pts
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["label", "x", "y", "z"])
            for lab, p in zip(labels, pts):
                w.writerow([lab, *(f"{v:.4f}" for v in p)])
    elif fmt == "dirlab":
        if spacing is None:
            raise DeepLungRegError("write_landmarks: DIR-Lab output needs the voxel spacing")
        vox = pts / np.asarray(spacing, dtype=float) + 1.0
        path.write_text("".join("\t".join(f"{v:g}" for v in row) + "\n" for row in np.round(vox, 4)))
    elif fmt == "pts":
        path.write_text("#X Y Z\n" + "".join(" ".join(f"{v:.4f}" for v in p) + "\n" for p in pts))
    elif fmt == "elastix":
        path.write_text(f"point\n{len(pts)}\n" + "".join(" ".join(f"{v:.6f}" for v in p) + "\n" for p in pts))
    elif fmt == "fcsv":
        lines = ["# Markups fiducial file version = 4.11", f"# CoordinateSystem = {system}",
                 "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
        lines += [f"{i + 1},{p[0]:.4f},{p[1]:.4f},{p[2]:.4f},0,0,0,1,1,1,0,{lab},," for i, (lab, p) in enumerate(zip(labels, out))]
        path.write_text("\n".join(lines) + "\n")
    else:
        doc = {
            "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
            "markups": [{
                "type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm",
                "controlPoints": [{"id": str(i + 1), "label": lab, "position": [float(v) for v in p], "positionStatus": "defined"}
                                  for i, (lab, p) in enumerate(zip(labels, out))],
            }],
        }
        path.write_text(json.dumps(doc, indent=2))
    return path
