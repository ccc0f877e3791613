"""Checks of an image file's header before ITK allocates its voxels.

ITK allocates the image its header describes and only then reads the voxels: a 256 KB NRRD
whose header claims 800³ float voxels takes 2 GB before the read fails. :func:`check_header`
reads the header alone (SimpleITK's ``ImageFileReader.ReadImageInformation``), computes the
bytes of voxel data it promises and compares them with what the file holds:

* NRRD (attached or detached ``data file``) and MetaImage (``.mha`` with ``ElementDataFile =
  LOCAL``, ``.mhd`` with a separate raw file): raw data must be as long as promised; gzip/zlib
  data can hold at most :data:`DEFLATE_MAX_RATIO` times its size, and within that bound is
  decompressed as a stream (never held) to count its bytes; text data needs two characters a
  value, hex two a byte.
* legacy VTK and GIPL (``.gipl.gz`` too): the same, after their headers; MRC and Bio-Rad files:
  the deflate bound.
* NIfTI/Analyze: :func:`~.nifti.check_nifti`.

It also refuses a singular direction matrix, which ITK reports as three bare numbers.
"""

from __future__ import annotations

import contextlib
import locale
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DeepLungRegError
from .nifti import check_nifti, is_nifti

#: deflate (gzip, zlib) expands its input at most about 1032 times (RFC 1951: a 258-byte match costs at least 2 bits).
DEFLATE_MAX_RATIO = 1032
#: Formats with raw or deflated voxels in the one file, which the deflate bound covers.
_SINGLE_FILE_IOS = ("MRCImageIO", "BioRadImageIO")
#: A text header longer than this is not an image header.
_MAX_HEADER = 1 << 20
_CHUNK = 1 << 24


@contextlib.contextmanager
def keep_locale():
    """Put the process's locale back after ITK: its legacy-VTK reader sets it to "C", after which
    Python's default text encoding is ASCII and any later ``read_text()`` of a non-ASCII file fails."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n} bytes"


def _refuse(what: str, expected: int, holds: int, size, kind: str = "", data: Path | None = None) -> None:
    where = f"its data file {data.name}" if data is not None else "the file"
    raise DeepLungRegError(f"read_image: {what} is truncated or its header is wrong: the header promises "
                           f"{'x'.join(map(str, size))} voxels ({_gb(expected)} of voxel data), {where} holds {_gb(holds)}{kind}")


def _text_header(path: Path, sep: str, last: str | None) -> tuple[dict[str, str], int]:
    """``{key (lower case, no spaces): value}`` of a text header and the byte offset after it
    (after the blank line of NRRD, after the ``ElementDataFile`` line of MetaImage)."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as fh:
        for raw in iter(lambda: fh.readline(_MAX_HEADER), b""):
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if offset > _MAX_HEADER or (not line and last is None):  # NRRD: a blank line ends the header
                break
            if line.startswith("#") or sep not in line or ":=" in line:  # comments, NRRD key/value pairs
                continue
            key, value = line.split(sep, 1)
            key = key.strip().lower().replace(" ", "")
            fields.setdefault(key, value.strip())
            if key == last:
                break
    return fields, offset


def _count_deflated(path: Path, offset: int, need: int, what: str) -> int:
    """Bytes the deflated data from ``offset`` (zlib, or gzip members one after the other)
    decompress to, counting stops at ``need``; streamed in blocks, never held."""
    got, d = 0, zlib.decompressobj(47)  # 47: a zlib or a gzip header
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while got < need:
                block = fh.read(_CHUNK)
                if d.eof:  # the next gzip member, if any
                    block, d = d.unused_data + block, zlib.decompressobj(47)
                if not block:
                    break
                while block and got < need and not d.eof:
                    got += len(d.decompress(block, _CHUNK))
                    block = d.unconsumed_tail
    except zlib.error as exc:
        raise DeepLungRegError(f"read_image: {what} is damaged: its compressed voxel data do not decompress ({exc})") from exc
    return got


def _check_data(what: str, data: Path, offset: int, encoding: str, expected: int, values: int, size,
                compressed_size: int | None = None, detached: bool = False) -> None:
    """Compare the voxel data at ``data[offset:]`` (in ``encoding``) with the ``expected`` bytes."""
    if not data.is_file():
        raise DeepLungRegError(f"read_image: {what} names a data file {data.name} that does not exist beside it")
    holds = max(data.stat().st_size - offset, 0) if compressed_size is None else min(compressed_size, data.stat().st_size - offset)
    src = data if detached else None
    if encoding == "raw":
        if holds < expected:
            _refuse(what, expected, holds, size, data=src)
    elif encoding in ("gzip", "gz", "zlib"):
        if expected > holds * DEFLATE_MAX_RATIO + 64:
            _refuse(what, expected, holds, size, f" of compressed data, which can hold at most {_gb(holds * DEFLATE_MAX_RATIO)}", src)
        got = _count_deflated(data, offset, expected, what)
        if got < expected:
            raise DeepLungRegError(f"read_image: {what} is truncated: its header promises {_gb(expected)} of voxel data, "
                                   f"its compressed data hold {_gb(got)}")
    elif encoding in ("ascii", "txt", "text"):
        if holds < 2 * values - 1:
            _refuse(what, expected, holds, size, " of text (two characters a value at least)", src)
    elif encoding == "hex":
        if holds < 2 * expected:
            _refuse(what, expected, holds, size, " of hex text (two characters a byte)", src)


def _nrrd(path: Path, what: str, expected: int, values: int, size) -> None:
    fields, offset = _text_header(path, ":", None)
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("datafile") or fields.get("data_file")
    skip = int(fields.get("byteskip", "0") or 0)
    if int(fields.get("lineskip", "0") or 0) or (skip and encoding != "raw"):
        skip = -1  # the data start somewhere we do not track: only the size bound below
    data = path
    if data_file:
        if data_file.upper().startswith("LIST") or len(data_file.split()) > 1:
            return  # data spread over several files: ITK checks them one by one
        data = (path.parent / data_file) if not os.path.isabs(data_file) else Path(data_file)
        offset = 0
    if skip == -1 and encoding == "raw":  # the data are the file's last bytes
        offset = max(data.stat().st_size - expected, 0) if data.is_file() else 0
    elif skip == -1:
        encoding = {"gzip": "gzip-bound", "gz": "gzip-bound"}.get(encoding, encoding)
    else:
        offset += skip
    if encoding == "gzip-bound":  # only the ratio bound
        holds = data.stat().st_size - offset if data.is_file() else 0
        if expected > holds * DEFLATE_MAX_RATIO + 64:
            _refuse(what, expected, holds, size, " of compressed data", data if data != path else None)
        return
    _check_data(what, data, offset, encoding, expected, values, size, detached=data != path)


def _meta(path: Path, what: str, expected: int, values: int, size) -> None:
    fields, offset = _text_header(path, "=", "elementdatafile")
    data_file = fields.get("elementdatafile", "LOCAL")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    compressed_size = int(fields["compresseddatasize"]) if compressed and fields.get("compresseddatasize", "").isdigit() else None
    data = path
    if data_file.upper() != "LOCAL":
        if data_file.upper().startswith("LIST") or len(data_file.split()) > 1 or "%" in data_file:
            return  # several slice files
        data = (path.parent / data_file) if not os.path.isabs(data_file) else Path(data_file)
        header_size = int(fields.get("headersize", "0") or 0)
        offset = header_size if header_size >= 0 else (max(data.stat().st_size - expected, 0) if data.is_file() else 0)
    _check_data(what, data, offset, "zlib" if compressed else "raw", expected, values, size, compressed_size, detached=data != path)


def _vtk(path: Path, what: str, expected: int, values: int, size) -> None:
    """Legacy VTK: the data follow the ``LOOKUP_TABLE`` line (scalars) or the ``VECTORS``/``TENSORS`` line."""
    offset, encoding = 0, "raw"
    with open(path, "rb") as fh:
        for n, raw in enumerate(iter(lambda: fh.readline(_MAX_HEADER), b"")):
            offset += len(raw)
            word = raw.split(maxsplit=1)[0].upper() if raw.strip() else b""
            if n == 2 and word == b"ASCII":
                encoding = "ascii"
            if word in (b"LOOKUP_TABLE", b"VECTORS", b"TENSORS", b"COLOR_SCALARS", b"NORMALS") or offset > _MAX_HEADER:
                break
    _check_data(what, path, offset, encoding, expected, values, size)


def _gipl(path: Path, what: str, expected: int, values: int, size) -> None:
    """GIPL: a 256-byte header, then the voxels; ``.gipl.gz`` is the same file gzipped."""
    if path.name.lower().endswith(".gz"):
        got = _count_deflated(path, 0, expected + 256, what) - 256
        if got < expected:
            raise DeepLungRegError(f"read_image: {what} is truncated: its header promises {_gb(expected)} of voxel data, "
                                   f"its compressed data hold {_gb(max(got, 0))}")
    else:
        _check_data(what, path, 256, "raw", expected, values, size)


def check_header(path: str | os.PathLike, what: str | None = None) -> "sitk.ImageFileReader | None":
    """Refuse, in one line and without reading the voxels, an image file whose header promises
    more voxel data than the file holds, or whose direction matrix is singular. Returns the reader
    whose image information was read (``None`` for NIfTI, whose header is read by our own code), so
    that a caller who needs that information does not read the header again.

    NIfTI files go to :func:`~.nifti.check_nifti`, which also refuses NaN/Inf voxels (ITK reads a
    truncated NIfTI file and such voxels silently).

    Raises:
        DeepLungRegError: naming the promised and the held sizes (or the matrix).
    """
    path = Path(path)
    what = what or str(path)
    if is_nifti(path):
        check_nifti(path, what)
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with keep_locale():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise DeepLungRegError(f"read_image: cannot read {what}: {lines[-1] if lines else 'unknown reader error'}") from exc
    size = reader.GetSize()
    d = np.asarray(reader.GetDirection(), dtype=float)
    n = reader.GetDimension()
    if d.size == n * n and n > 1 and (not np.all(np.isfinite(d)) or abs(np.linalg.det(d.reshape(n, n))) < 1e-6):
        raise DeepLungRegError(f"read_image: {what} has a singular direction matrix ({' '.join(f'{v:g}' for v in d)}): "
                               "its index axes must point in independent directions; correct the header")
    values = int(np.prod(size, dtype=np.int64)) * reader.GetNumberOfComponents()
    component = sitk.Image([1] * n, reader.GetPixelID(), reader.GetNumberOfComponents()).GetSizeOfPixelComponent()
    expected = values * component
    io = reader.GetMetaData("ITK_InputFilterName") if reader.HasMetaDataKey("ITK_InputFilterName") else ""
    if not io and hasattr(sitk.ImageFileReader, "GetImageIOFromFileName"):  # the IO that reads it (SimpleITK >= 2.0)
        io = sitk.ImageFileReader.GetImageIOFromFileName(str(path))
    try:
        if io == "NrrdImageIO":
            _nrrd(path, what, expected, values, size)
        elif io == "MetaImageIO":
            _meta(path, what, expected, values, size)
        elif io == "VTKImageIO":
            _vtk(path, what, expected, values, size)
        elif io == "GiplImageIO":
            _gipl(path, what, expected, values, size)
        elif io in _SINGLE_FILE_IOS:
            holds = path.stat().st_size
            if expected > holds * DEFLATE_MAX_RATIO + 4096:
                _refuse(what, expected, holds, size)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DeepLungRegError):
            raise
        raise DeepLungRegError(f"read_image: cannot read {what}: its header is damaged ({exc})") from exc
    return reader
