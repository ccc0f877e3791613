"""Checks of NIfTI files that ITK's reader does not make, and a NIfTI writer that streams.

ITK fills a truncated ``.nii``/``.nii.gz`` with zeros without an error, and
reads NaN and Inf voxels of a float NIfTI file as 0. Either gives a wrong
registration with no warning. :func:`check_nifti` reads the header, compares
the amount of voxel data it promises with what the file holds (streaming a
gzip file, never holding it whole) and, for float data, counts non-finite
values on the way.

:func:`write_nifti` writes an array without the copies ITK's writer makes (a
SimpleITK image of it, and for vector images a reordered buffer): a
512x512x600 field is 1.9 GB, and those copies would need two more.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry

#: NIfTI datatype codes of floating-point voxels -> numpy type (little-endian; swapped for big-endian files).
_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "c8", 1792: "c16"}
_CHUNK = 1 << 24


def is_nifti(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz"))


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _header(raw: bytes, what: str) -> tuple[str, int, int, int, tuple[int, ...]]:
    """``(endian, header size, datatype, bitpix, dims)`` of a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>":
        if len(raw) >= 4 and struct.unpack_from(endian + "i", raw, 0)[0] == 348 and len(raw) >= 348:
            dim = struct.unpack_from(endian + "8h", raw, 40)
            datatype, bitpix = struct.unpack_from(endian + "2h", raw, 70)
            vox_offset = struct.unpack_from(endian + "f", raw, 108)[0]
            return endian, int(vox_offset), datatype, bitpix, dim
        if len(raw) >= 4 and struct.unpack_from(endian + "i", raw, 0)[0] == 540 and len(raw) >= 540:
            datatype, bitpix = struct.unpack_from(endian + "2h", raw, 12)
            dim = struct.unpack_from(endian + "8q", raw, 16)
            vox_offset = struct.unpack_from(endian + "q", raw, 168)[0]
            return endian, int(vox_offset), datatype, bitpix, dim
    raise DeepLungRegError(f"read_image: cannot read {what}: it is not a NIfTI file (its header is damaged)")


def check_nifti(path: str | os.PathLike, what: str | None = None) -> None:
    """Refuse a truncated NIfTI file or one with NaN/Inf voxels, in one line.

    Raises:
        DeepLungRegError: when the voxel data are shorter than the header says,
            the gzip stream is cut or damaged, or float voxels are not finite.
    """
    path = Path(path)
    what = what or str(path)
    data_path = path
    lower = path.name.lower()
    if lower.endswith((".hdr", ".hdr.gz")):  # a header/image pair
        stem = path.name[: -len(".hdr.gz")] if lower.endswith(".gz") else path.name[: -len(".hdr")]
        candidates = [path.with_name(stem + s) for s in (".img", ".img.gz", ".IMG")]
        data_path = next((c for c in candidates if c.exists()), candidates[0])
        if not data_path.exists():
            raise DeepLungRegError(f"read_image: {what} has no image file beside it ({data_path.name})")
    try:
        with _open(path) as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise DeepLungRegError(f"read_image: cannot read {what}: the file is damaged ({exc})") from exc
    endian, vox_offset, datatype, bitpix, dim = _header(raw, what)
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 0 for d in dim[1:ndim + 1]) or bitpix <= 0 or bitpix % 8:
        raise DeepLungRegError(f"read_image: cannot read {what}: its NIfTI header is damaged (dim {dim[:ndim + 1]}, bitpix {bitpix})")
    if data_path != path:
        vox_offset = 0
    expected = int(np.prod([int(d) for d in dim[1:ndim + 1]], dtype=np.int64)) * (bitpix // 8)
    ftype = _FLOAT_TYPES.get(datatype)
    dtype = None if ftype is None else np.dtype(endian + ftype)
    got, bad, rest = 0, 0, b""
    try:
        with _open(data_path) as fh:
            skipped = 0
            while skipped < vox_offset:  # the header and extensions
                block = fh.read(min(_CHUNK, vox_offset - skipped))
                if not block:
                    break
                skipped += len(block)
            while True:
                block = fh.read(_CHUNK)
                if not block:
                    break
                if dtype is not None and got < expected:
                    buf = rest + block[: expected - got]  # voxel data only (not trailing bytes)
                    n = len(buf) // dtype.itemsize * dtype.itemsize
                    values = np.frombuffer(buf[:n], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                    rest = buf[n:]
                got += len(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise DeepLungRegError(f"read_image: {what} is truncated or damaged (its compressed data end early: {exc})") from exc
    if got < expected:
        raise DeepLungRegError(f"read_image: {what} is truncated: its header promises {expected} bytes of voxel data, "
                               f"the file holds {got}")
    if bad:
        raise DeepLungRegError(f"read_image: {what} contains {bad} NaN/Inf voxels")


def _itk_header(geometry: Geometry, dtype: np.dtype, components: int) -> bytes:
    """The 352-byte NIfTI-1 header ITK writes for an image of ``dtype`` (and ``components``) on ``geometry``.

    ITK computes the header (qform quaternion, sform, units, vector intent) for a
    one-voxel image of the same type, spacing, origin and direction; only the
    sizes are then set, as they enter no other field.
    """
    import SimpleITK as sitk

    tiny = sitk.GetImageFromArray(np.zeros((1, 1, 1, components) if components > 1 else (1, 1, 1), dtype),
                                  isVector=components > 1)
    tiny.SetSpacing(geometry.spacing)
    tiny.SetOrigin(geometry.origin)
    tiny.SetDirection(geometry.direction)
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "h.nii")
        sitk.WriteImage(tiny, p, useCompression=False)
        with open(p, "rb") as fh:
            header = bytearray(fh.read(352))
    dims = struct.unpack_from("<8h", header, 40)
    expected = (5, 1, 1, 1, 1, components) if components > 1 else (3, 1, 1, 1)
    if struct.unpack_from("<i", header, 0)[0] != 348 or dims[:len(expected)] != expected or struct.unpack_from("<f", header, 108)[0] != 352:
        raise DeepLungRegError(f"write_nifti: unexpected NIfTI header from SimpleITK (dim {dims})")  # pragma: no cover
    struct.pack_into("<3h", header, 42, *geometry.size)
    return bytes(header)


def write_nifti(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, *, slab_voxels: int = 1 << 22,
                compresslevel: int = 1) -> None:
    """Write ``(Z, Y, X)`` or ``(Z, Y, X, C)`` voxels on ``geometry`` as ``.nii``/``.nii.gz``, a slab at a time.

    The file is the one ITK writes for the same image (its header, then the
    voxels; vector components one plane after the other), so ITK and Slicer read
    it as theirs. ``array`` may also be a lazy field (:class:`~DeepLungRegLib.transforms.fields.SlabField`),
    read by slabs ``array[z0:z1, :, :, c]``. Booleans are written as uint8. ``.nii.gz`` uses gzip level
    ``compresslevel`` (1: several times faster than ITK's default, files a few
    per cent larger).
    """
    path = Path(path)
    arr = array if hasattr(array, "slab") else np.asarray(array)  # a lazy field is read a slab and a component at a time
    if arr.shape[:3] != geometry.shape or arr.ndim not in (3, 4):
        raise DeepLungRegError(f"write_nifti: array shape {arr.shape} does not match the grid {geometry.shape}")
    dtype = np.dtype(np.uint8) if arr.dtype == bool else arr.dtype.newbyteorder("<")
    components = arr.shape[3] if arr.ndim == 4 else 1
    header = _itk_header(geometry, dtype, components)
    step = max(1, slab_voxels // max(1, geometry.shape[1] * geometry.shape[2]))
    opener = (lambda: gzip.open(path, "wb", compresslevel=compresslevel)) if path.name.lower().endswith(".gz") else (lambda: open(path, "wb"))
    with opener() as fh:
        fh.write(header)
        for c in range(components):
            for z0 in range(0, geometry.shape[0], step):
                slab = arr[z0:z0 + step] if components == 1 else arr[z0:z0 + step, :, :, c]
                fh.write(np.ascontiguousarray(slab, dtype=dtype).tobytes())
