"""Displacement field files.

A field is an array ``(Z, Y, X, 3)`` on the fixed grid, in mm along the LPS
axes, meaning ``x_moving = x_fixed + u(x_fixed)``. It is written as an ITK
displacement-field vector image (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``)
or as an ITK transform file (``.h5``), so ITK and Slicer load it as the
fixed-to-moving (resampling) transform.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DeepLungRegError
from ..geometry import Geometry
from .headers import check_header, keep_locale
from .images import _suffix, check_input_path, check_writable, image_to_sitk
from .nifti import write_nifti

FIELD_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".h5")


def check_field(field: np.ndarray, geometry: Geometry, *, what: str = "field") -> np.ndarray:
    """Validate a displacement field against its grid and return it as float32 (a lazy field, one with a
    ``slab`` method such as :class:`~DeepLungRegLib.transforms.fields.SlabField`, is checked and returned as it is)."""
    if hasattr(field, "slab"):
        if field.shape != (*geometry.shape, 3):
            raise DeepLungRegError(f"check_field: {what} shape {field.shape[:3]} does not match the fixed grid {geometry.shape}")
        if not field.all_finite():
            raise DeepLungRegError(f"check_field: {what} contains NaN/Inf values")
        return field
    field = np.asarray(field)
    if field.ndim != 4 or field.shape[-1] != 3:
        raise DeepLungRegError(f"check_field: {what} must have shape (Z, Y, X, 3), got {field.shape}")
    if field.shape[:3] != geometry.shape:
        raise DeepLungRegError(f"check_field: {what} shape {field.shape[:3]} does not match the fixed grid {geometry.shape}")
    if not _all_finite(field):
        raise DeepLungRegError(f"check_field: {what} contains NaN/Inf values")
    return field.astype(np.float32, copy=False)


def _all_finite(a: np.ndarray, slab: int = 1 << 22) -> bool:
    """``np.isfinite(a).all()`` without a full-size temporary."""
    flat = a.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + slab]).all()) for i in range(0, flat.size, slab))


def field_to_sitk_transform(field: np.ndarray, geometry: Geometry) -> sitk.DisplacementFieldTransform:
    """An ITK displacement-field transform mapping fixed points ``p`` to ``p + u(p)``."""
    field = check_field(field, geometry)
    img = image_to_sitk(field.astype(np.float64), geometry)
    return sitk.DisplacementFieldTransform(img)


def write_field(field: np.ndarray, geometry: Geometry, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write a displacement field ``(Z, Y, X, 3)`` (mm, LPS, fixed grid).

    NIfTI files are streamed without copying the field (a
    :class:`~DeepLungRegLib.transforms.fields.SlabField` is made a slab and a component at a time,
    never whole); ``.mha``/``.nrrd``/``.h5`` go through SimpleITK (with the whole field).
    """
    path = check_writable(path, overwrite=overwrite, suffixes=FIELD_SUFFIXES)
    field = check_field(field, geometry)
    if hasattr(field, "slab") and _suffix(path) not in (".nii", ".nii.gz"):
        field = field.full()
    if _suffix(path) == ".h5":
        sitk.WriteTransform(field_to_sitk_transform(field, geometry), str(path))
    elif _suffix(path) in (".nii", ".nii.gz"):
        write_nifti(field, geometry, path)
    else:
        sitk.WriteImage(image_to_sitk(field, geometry), str(path), useCompression=True)
    return path


def read_field(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a displacement field written by :func:`write_field` (or by ITK/elastix).

    Returns:
        ``(field, geometry)`` with field ``(Z, Y, X, 3)`` float32 in mm, LPS.
    """
    path = Path(path)
    check_input_path(path, str(path), "read_field", "a displacement field file")
    if path.is_file() and _suffix(path) not in (".h5", ".tfm", ".hdf5"):
        try:
            check_header(path)
        except DeepLungRegError as exc:
            raise DeepLungRegError(str(exc).replace("read_image:", "read_field:", 1)) from exc
    try:
        if _suffix(path) in (".h5", ".tfm", ".hdf5"):
            tx = sitk.ReadTransform(str(path))
            tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
            if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
                tx = tx.GetNthTransform(0).Downcast()
            if not isinstance(tx, sitk.DisplacementFieldTransform):
                raise DeepLungRegError(f"read_field: {path} holds a {tx.GetName()}, not a displacement field")
            img = tx.GetDisplacementField()
        else:
            with keep_locale():
                img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DeepLungRegError(f"read_field: cannot read {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 3:
        raise DeepLungRegError(
            f"read_field: {path} is not a 3D displacement field with 3 components "
            f"(dimension {img.GetDimension()}, {img.GetNumberOfComponentsPerPixel()} components)"
        )
    geom = Geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return check_field(sitk.GetArrayFromImage(img), geom, what=str(path)), geom
