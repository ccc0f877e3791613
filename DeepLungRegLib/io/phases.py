"""Reading a 4D-CT: the phases of one breathing cycle, each a scalar 3D :class:`~.images.Image`.

A 4D-CT comes as

* a folder of phase volumes (NIfTI, NRRD, MHA/MHD files), in natural name order (``phase_10`` after
  ``phase_9``);
* a folder of DICOM series folders, one per phase, ordered by their temporal position
  (TemporalPositionIdentifier, else TriggerTime), else by name;
* a 4D image file (a 4D NRRD as ITK writes it, ``kinds: domain domain domain domain``, or as Slicer
  writes a sequence, ``kinds: list domain domain domain``, which SimpleITK reads as a 3D image with one
  component per phase);
* a folder holding one DICOM series of several phases, split by the temporal position tag, else
  TriggerTime, else by series, else by repeated slice positions (in instance-number order).

:func:`read_phases` checks the whole cycle from the headers (one grid for all phases, at least two
phases, no gap in the numbering) without reading a voxel, and returns a lazy :class:`Phases` that reads
a phase when it is asked for and keeps none: a registration over the cycle holds at most two.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import DeepLungRegError
from ..geometry import Geometry
from .headers import check_header, keep_locale
from .images import Image, _suffix, check_input_path, image_from_sitk

#: The image files a phase folder may hold (other files, e.g. ``.raw`` data of ``.mhd`` headers, are not phases).
PHASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: DICOM tags that order the phases of a 4D-CT.
TEMPORAL_POSITION = "0020|0100"
TRIGGER_TIME = "0018|1060"
SERIES_UID = "0020|000e"
POSITION = "0020|0032"
ORIENTATION = "0020|0037"
INSTANCE = "0020|0013"
ROWS, COLUMNS, PIXEL_SPACING = "0028|0010", "0028|0011", "0028|0030"


def natural_key(name: str) -> tuple:
    """Sort key of ``name`` with its runs of digits compared as numbers (``phase_9`` before ``phase_10``)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t)


def _check_numbering(names: list[str], what: str) -> None:
    """Refuse a gap in the phase numbers: names alike but for one number (``phase_00`` ... ``phase_90``), whose
    numbers must go up in equal steps."""
    parts = [re.split(r"(\d+)", n) for n in names]
    if len({len(p) for p in parts}) != 1:
        return
    varying = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    if len(varying) != 1 or not all(p[varying[0]].isdigit() for p in parts):
        return
    _check_steps([int(p[varying[0]]) for p in parts], names, what, "numbered")


def _check_steps(numbers: list[float], names: list[str], what: str, kind: str) -> None:
    """Numbers of the phases in order must go up in equal steps (the smallest step): name the first missing one."""
    nums = np.asarray(numbers, dtype=float)
    steps = np.diff(nums)
    if len(steps) == 0 or np.any(steps <= 0):
        return
    step = steps.min()
    if np.allclose(steps, step, rtol=1e-3, atol=1e-6):
        return
    at = int(np.argmax(steps > step * (1 + 1e-3)))
    missing = nums[at] + step
    shown = int(missing) if float(missing).is_integer() else round(float(missing), 3)
    raise DeepLungRegError(f"read_phases: {what}: a phase is missing: the phases are {kind} in steps of {step:g}, but "
                           f"none has {shown} between {names[at]} and {names[at + 1]}")


@dataclass(frozen=True)
class _Source:
    """How to read one phase: a file, a list of DICOM slice files, or an index into a 4D file."""

    name: str
    grid: Geometry  # must agree between phases (within Geometry.same_as's tolerance)
    read: Callable[[], sitk.Image | Image]  # an Image as it is (a Slicer volume node's copy), a SimpleITK image checked


class Phases(Sequence):
    """The phases of a 4D-CT, read one at a time when asked for (``phases[i]`` reads phase ``i``; nothing is kept).

    Attributes:
        names: a name per phase (a file or folder name, or ``phase_XX``), in cycle order.
        source: the path they were read from.
    """

    def __init__(self, sources: list[_Source], source: Path, what: str):
        self._sources = sources
        self.names = tuple(s.name for s in sources)
        self.source = source
        self._what = what

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, index: int) -> Image:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("Phases: index one phase at a time (a slice would read them all)")
        src = self._sources[index]
        what = f"phase {src.name} of {self._what}"
        try:
            with keep_locale():
                img = src.read()
        except DeepLungRegError:
            raise
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            raise DeepLungRegError(f"read_phases: cannot read {what}: {lines[-1] if lines else 'unknown reader error'}") from exc
        return img if isinstance(img, Image) else image_from_sitk(img, what=what)

    def __repr__(self) -> str:
        return f"Phases({len(self)} phases from {self.source}: {', '.join(self.names)})"

    def renamed(self, names: Sequence[str], source: str | os.PathLike, what: str) -> Phases:
        """These phases, read from where they are, under other names, ``source`` and ``what``: e.g. a Slicer
        sequence's phases written to files for a worker process keep the sequence's index values and name."""
        names = [str(n) for n in names]
        if len(names) != len(self):
            raise DeepLungRegError(f"read_phases: {len(names)} names given for the {len(self)} phases of {self._what}")
        return Phases([replace(s, name=n) for s, n in zip(self._sources, names)], Path(source), what)


def _grid(size, spacing, origin, direction, what: str) -> Geometry:
    try:
        return Geometry(tuple(size), tuple(spacing), tuple(origin), tuple(direction))
    except DeepLungRegError as exc:
        raise DeepLungRegError(f"read_phases: {what} has no valid grid ({exc})") from exc


def _shown(values) -> tuple:
    return tuple(round(float(v), 6) for v in values) if not isinstance(values[0], int) else tuple(values)


def _check_grids(sources: list[_Source], what: str, owner: str = "read_phases") -> None:
    if len(sources) < 2:
        n = len(sources)
        raise DeepLungRegError(f"{owner}: {what} holds {'no phase' if n == 0 else 'a single phase (' + sources[0].name + ')'}; "
                               "a 4D-CT needs at least two")
    first = sources[0]
    for s in sources[1:]:
        if not s.grid.same_as(first.grid):  # a tolerance, not rounding: 1e-6 mm apart is one grid, 1e-3 is not
            a, b = s.grid, first.grid
            field = "size" if a.size != b.size else next(
                (k for k in ("spacing", "origin") if not np.allclose(getattr(a, k), getattr(b, k), rtol=1e-4, atol=1e-4)), "direction")
            raise DeepLungRegError(f"{owner}: {what}: phase {s.name} is on a different grid than phase {first.name} "
                                   f"({field} {_shown(getattr(a, field))} vs {_shown(getattr(b, field))}); "
                                   "all phases must share one grid")


def phases_from_readers(readers: list[tuple[str, Geometry, Callable[[], sitk.Image | Image]]], source: Path, what: str, *,
                        owner: str = "read_phases") -> Phases:
    """A lazy :class:`Phases` from ``(name, grid, read)`` per phase, checked as :func:`read_phases` checks a cycle (at
    least two phases, one grid), for a 4D-CT held elsewhere than in files (a Slicer volume sequence).

    Args:
        readers: per phase, in cycle order: its name, its grid (known without reading a voxel) and ``read()``, which
            returns the phase as an :class:`~.images.Image` or a SimpleITK image.
        source: where the phases come from (``Phases.source``).
        what: how error messages name the 4D-CT; ``owner`` starts them.
    """
    sources = [_Source(name, grid, read) for name, grid, read in readers]
    _check_grids(sources, what, owner)
    return Phases(sources, source, what)


# ------------------------------------------------------------------ files
def _file_info(path: Path, what: str) -> sitk.ImageFileReader:
    read = check_header(path, what)  # a truncated or damaged file: one line, before any voxel is read
    if read is not None:  # its header was read there
        return read
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with keep_locale():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DeepLungRegError(f"read_phases: cannot read {what}") from exc
    return reader


def _stem(path: Path) -> str:
    """A phase file's name without its suffix: its phase's name."""
    return path.name[: -len(_suffix(path))] if _suffix(path) else path.name


def _file_source(path: Path) -> _Source:
    what = f"phase file {path}"
    info = _file_info(path, what)
    if info.GetDimension() != 3 or info.GetNumberOfComponents() != 1:
        raise DeepLungRegError(f"read_phases: {what} is not a scalar 3D volume (dimension {info.GetDimension()}, "
                               f"{info.GetNumberOfComponents()} components); a phase folder holds one 3D volume per phase")
    return _Source(_stem(path), _grid(info.GetSize(), info.GetSpacing(), info.GetOrigin(), info.GetDirection(), what),
                   lambda: sitk.ReadImage(str(path)))


def _read_4d_file(path: Path) -> list[_Source]:
    what = f"4D image {path}"
    info = _file_info(path, what)
    dim, comps = info.GetDimension(), info.GetNumberOfComponents()
    if dim == 4 and comps == 1:
        size, n = list(info.GetSize()), info.GetSize()[3]
        d4 = np.asarray(info.GetDirection(), float).reshape(4, 4)
        grid = _grid(size[:3], info.GetSpacing()[:3], info.GetOrigin()[:3], d4[:3, :3].ravel(), what)

        def extract(t: int) -> Callable[[], sitk.Image]:
            def read() -> sitk.Image:
                r = sitk.ImageFileReader()
                r.SetFileName(str(path))
                r.SetExtractIndex([0, 0, 0, t])
                r.SetExtractSize([*size[:3], 0])  # 0: that dimension is dropped, the result is 3D
                return r.Execute()
            return read

        return [_Source(f"phase_{t:02d}", grid, extract(t)) for t in range(n)]
    if dim == 3 and comps > 1:
        kind = info.GetMetaData("NRRD_kinds[pixel]") if info.HasMetaDataKey("NRRD_kinds[pixel]") else ""
        if kind not in ("list", "time", "domain", "space"):  # no kind: not an NRRD (a NIfTI or MHA vector image)
            raise DeepLungRegError(f"read_phases: {what} holds {kind or 'vector'} voxels of {comps} components (a displacement "
                                   "field?), not phases; a 4D NRRD of phases has kinds 'list' or 'domain' on its phase axis")
        grid = _grid(info.GetSize(), info.GetSpacing(), info.GetOrigin(), info.GetDirection(), what)

        def component(c: int) -> Callable[[], sitk.Image]:
            # the file is one block of interleaved phases: read it whole, keep one component
            return lambda: sitk.VectorIndexSelectionCast(sitk.ReadImage(str(path)), c)

        return [_Source(f"phase_{c:02d}", grid, component(c)) for c in range(comps)]
    if dim == 3:
        raise DeepLungRegError(f"read_phases: {what} is a single 3D volume; a 4D-CT is a 4D image, a folder of phases "
                               "or a DICOM series of several phases")
    raise DeepLungRegError(f"read_phases: {what} is {dim}D with {comps} components; a 4D image of phases is needed")


# ------------------------------------------------------------------ DICOM
@dataclass
class _Slice:
    file: Path
    tags: dict


def _dicom_slices(folder: Path) -> list[_Slice]:
    """Every readable DICOM file directly in ``folder``, with the tags that order and group the phases."""
    reader = sitk.ImageSeriesReader()
    files: list[str] = []
    with keep_locale():
        for uid in reader.GetGDCMSeriesIDs(str(folder)):
            files += reader.GetGDCMSeriesFileNames(str(folder), uid)
    out = []
    for f in sorted(set(files)):
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.LoadPrivateTagsOff()
        try:
            with keep_locale():
                r.ReadImageInformation()
        except RuntimeError as exc:
            raise DeepLungRegError(f"read_phases: cannot read the DICOM file {f}") from exc
        tags = {k: r.GetMetaData(k).strip() for k in (TEMPORAL_POSITION, TRIGGER_TIME, SERIES_UID, POSITION, ORIENTATION, INSTANCE,
                                                      ROWS, COLUMNS, PIXEL_SPACING) if r.HasMetaDataKey(k)}
        out.append(_Slice(Path(f), tags))
    return out


def _numbers(text: str | None) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in text.split("\\")) if text else None
    except ValueError:
        return None


def _dicom_source(name: str, slices: list[_Slice], what: str) -> _Source:
    """A phase from its slices: sorted along the slice normal; its grid from the headers."""
    orient = _numbers(slices[0].tags.get(ORIENTATION))
    positions = [_numbers(s.tags.get(POSITION)) for s in slices]
    if orient is None or len(orient) != 6 or any(p is None or len(p) != 3 for p in positions):
        raise DeepLungRegError(f"read_phases: {what}: phase {name} has DICOM slices without position or orientation")
    normal = np.cross(orient[:3], orient[3:])
    order = np.argsort([float(np.dot(p, normal)) for p in positions], kind="stable")
    slices = [slices[i] for i in order]
    pos = np.asarray([positions[i] for i in order])
    if len(slices) < 2:
        raise DeepLungRegError(f"read_phases: {what}: phase {name} has {len(slices)} slice; a 3D volume is needed")
    dz = np.diff(pos @ normal)
    if np.any(dz < 1e-3):
        raise DeepLungRegError(f"read_phases: {what}: phase {name} has two slices at one position; is a phase split wrongly?")
    rows, cols, pixel = (_numbers(slices[0].tags.get(t)) for t in (ROWS, COLUMNS, PIXEL_SPACING))
    if not rows or not cols:
        raise DeepLungRegError(f"read_phases: {what}: phase {name} has DICOM slices without rows or columns")
    pixel = pixel if pixel and len(pixel) == 2 else (1.0, 1.0)  # row spacing (y), column spacing (x)
    # the phase's grid from its headers: i along the row cosine, j along the column cosine, k along the normal
    grid = _grid((int(cols[0]), int(rows[0]), len(slices)), (pixel[1], pixel[0], float(np.mean(dz))), pos[0],
                 np.column_stack([orient[:3], orient[3:], normal]).ravel(), f"{what}: phase {name}")
    files = [str(s.file) for s in slices]

    def read() -> sitk.Image:
        r = sitk.ImageSeriesReader()
        r.SetFileNames(files)
        return r.Execute()

    return _Source(name, grid, read)


def _split_dicom(slices: list[_Slice], what: str) -> list[_Source]:
    """The phases of one folder of DICOM slices."""
    def value(s: _Slice, tag: str) -> float | None:
        v = _numbers(s.tags.get(tag))
        return v[0] if v else None

    for tag, kind in ((TEMPORAL_POSITION, "temporal positions"), (TRIGGER_TIME, "trigger times")):
        vals = [value(s, tag) for s in slices]
        if all(v is not None for v in vals) and len(set(vals)) > 1:
            keys = sorted(set(vals))
            names = [f"t{int(k)}" if float(k).is_integer() else f"t{k:g}" for k in keys]
            if tag == TEMPORAL_POSITION:
                _check_steps(keys, names, what, kind)
            return [_dicom_source(n, [s for s, v in zip(slices, vals) if v == k], what) for n, k in zip(names, keys)]
    uids = [s.tags.get(SERIES_UID, "") for s in slices]
    if len(set(uids)) > 1:
        groups = sorted(set(uids), key=lambda u: min(int(value(s, INSTANCE) or 0) for s, v in zip(slices, uids) if v == u))
        return [_dicom_source(f"series_{i:02d}", [s for s, v in zip(slices, uids) if v == u], what) for i, u in enumerate(groups)]
    # one series without temporal tags: each slice position repeats once per phase, in instance-number order
    order = sorted(slices, key=lambda s: (value(s, INSTANCE) or 0, s.file.name))
    seen: dict[tuple, int] = {}
    phase_of = []
    for s in order:
        key = tuple(np.round(_numbers(s.tags.get(POSITION)) or (0, 0, 0), 2))
        phase_of.append(seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
    counts = set(seen.values())
    if len(counts) > 1:
        raise DeepLungRegError(f"read_phases: {what}: the slice positions repeat {min(counts)} to {max(counts)} times; "
                               "a phase is missing slices (every phase needs every position)")
    n = counts.pop() if counts else 0
    return [_dicom_source(f"phase_{p:02d}", [s for s, q in zip(order, phase_of) if q == p], what) for p in range(n)]


def _is_dicom_folder(folder: Path) -> bool:
    with keep_locale():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _temporal_key(slices: list[_Slice], tag: str) -> float | None:
    """The temporal position or trigger time (``tag``) of the first slice of a phase folder."""
    v = _numbers(slices[0].tags.get(tag)) if slices else None
    return v[0] if v else None


# ------------------------------------------------------------------ entry point
def read_phases(path: str | os.PathLike, *, what: str | None = None) -> Phases:
    """The phases of a 4D-CT at ``path``, checked from the headers, read lazily (see the module's description).

    Raises:
        DeepLungRegError: one line for a path that is missing or empty, a file that cannot be read, a
            single phase, phases on different grids, a missing phase (a gap in numbered names or
            temporal positions).
    """
    path = Path(path)
    what = what or str(path)
    check_input_path(path, what, "read_phases", "a 4D image file or a folder of phases")
    if path.is_file():
        sources = _read_4d_file(path)
    else:
        entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))
        named = [p for p in entries if _suffix(p) in PHASE_SUFFIXES and not p.is_dir()]
        broken = [p for p in named if not p.is_file()]
        if broken:  # a dangling link (or a FIFO): a phase that is not there, not a file to skip
            raise DeepLungRegError(f"read_phases: {what}: {broken[0].name} is not a readable file (a broken link?); "
                                   "every phase must be there")
        images = named
        stems: dict[str, list[str]] = {}
        for p in images:
            stems.setdefault(_stem(p), []).append(p.name)
        twice = next((v for v in stems.values() if len(v) > 1), None)
        if twice:  # one phase in two formats would be two phases of the cycle
            raise DeepLungRegError(f"read_phases: {what}: phase {_stem(Path(twice[0]))} is there twice ({', '.join(twice)}); "
                                   "keep one file per phase")
        folders = [p for p in entries if p.is_dir()]
        if images:
            if len(images) == 1:
                info = _file_info(images[0], f"phase file {images[0]}")
                if info.GetDimension() == 4 or info.GetNumberOfComponents() > 1:
                    raise DeepLungRegError(f"read_phases: {what} holds one 4D image, {images[0].name}; give that file itself")
            sources = [_file_source(p) for p in images]
            _check_numbering([s.name for s in sources], what)
        elif _is_dicom_folder(path):
            sources = _split_dicom(_dicom_slices(path), what)
        elif folders:
            dicom = [f for f in folders if _is_dicom_folder(f)]
            if not dicom:
                raise DeepLungRegError(f"read_phases: {what} holds no image files and no DICOM series folders")
            slices = {f: _dicom_slices(f) for f in dicom}  # the headers only, read once
            for tag in (TEMPORAL_POSITION, TRIGGER_TIME):  # one tag for every folder: never one's position, another's time
                keys = [_temporal_key(slices[f], tag) for f in dicom]
                if all(k is not None for k in keys) and len(set(keys)) == len(keys):
                    order = np.argsort(keys, kind="stable")
                    dicom = [dicom[i] for i in order]
                    if tag == TEMPORAL_POSITION:  # identifiers 1, 2, 3...: no gap allowed; trigger times (ms) need not be even
                        _check_steps(sorted(keys), [f.name for f in dicom], what, "at temporal positions")
                    break
            else:
                _check_numbering([f.name for f in dicom], what)
            sources = []
            for f in dicom:
                parts = _split_dicom(slices[f], f"{what}/{f.name}")
                if len(parts) > 1:
                    raise DeepLungRegError(f"read_phases: {what}: the phase folder {f.name} holds {len(parts)} phases; "
                                           "give one folder per phase or one folder of all phases")
                sources.append(_Source(f.name, parts[0].grid, parts[0].read))
        else:
            raise DeepLungRegError(f"read_phases: {what} is empty: no phase image files, DICOM files or phase folders")
    _check_grids(sources, what)
    return Phases(sources, path, what)
