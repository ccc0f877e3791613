"""Scalar 3D images: a ``(Z, Y, X)`` array plus a :class:`Geometry`, read and
written through SimpleITK (NIfTI, NRRD, MHA/MHD and DICOM series folders)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DeepLungRegError
from ..geometry import Geometry
from .headers import check_header, keep_locale
from .nifti import write_nifti

#: File endings we write. Anything SimpleITK reads is accepted on input.
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Image:
    """A scalar 3D image.

    Attributes:
        array: voxel values, shape ``(Z, Y, X)``.
        geometry: the sampling grid in LPS.
    """

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise DeepLungRegError(f"Image: array must be 3D (Z, Y, X), got shape {arr.shape}")
        if arr.shape != self.geometry.shape:
            raise DeepLungRegError(f"Image: array shape {arr.shape} does not match geometry shape {self.geometry.shape}")
        object.__setattr__(self, "array", arr)

    def with_array(self, array: np.ndarray) -> "Image":
        """A new image on the same grid."""
        return Image(np.asarray(array), self.geometry)


#: A CT in Hounsfield units holds air: its 1st percentile lies below this (air is -1000 HU, lung about -850).
HU_AIR_BELOW = -500.0


def looks_like_ct(image: Image) -> bool:
    """True when ``image`` holds air in Hounsfield units (1st percentile below :data:`HU_AIR_BELOW`, on every
    second voxel along each axis): a CT in HU, not an MRI nor a CT stored with an offset (uint16 = HU + 1024)."""
    return float(np.percentile(np.asarray(image.array)[::2, ::2, ::2], 1)) < HU_AIR_BELOW


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz", ".mrk.json"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def image_from_sitk(img: sitk.Image, *, what: str = "image", allow_vector: bool = False, check_finite: bool = True) -> Image:
    """Convert a SimpleITK image to an :class:`Image`, refusing bad input.

    Raises:
        DeepLungRegError: for 2D/4D images, vector images (unless
            ``allow_vector``), empty images and NaN/Inf voxels.
    """
    dim = img.GetDimension()
    if dim != 3:
        raise DeepLungRegError(f"read_image: {what} is {dim}D (size {img.GetSize()}); a 3D volume is needed")
    if img.GetNumberOfComponentsPerPixel() != 1 and not allow_vector:
        raise DeepLungRegError(
            f"read_image: {what} has {img.GetNumberOfComponentsPerPixel()} components per voxel; a scalar image is needed"
        )
    if min(img.GetSize()) < 1:
        raise DeepLungRegError(f"read_image: {what} is empty (size {img.GetSize()})")
    arr = sitk.GetArrayFromImage(img)
    if check_finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        n = int((~np.isfinite(arr)).sum())
        raise DeepLungRegError(f"read_image: {what} contains {n} NaN/Inf voxels")
    geom = Geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return Image(arr, geom)


def image_to_sitk(image: Image | np.ndarray, geometry: Geometry | None = None) -> sitk.Image:
    """Convert an :class:`Image` (or a ``(Z, Y, X[, C])`` array plus geometry) to SimpleITK."""
    if isinstance(image, Image):
        arr, geometry = image.array, image.geometry
    else:
        arr = np.asarray(image)
        if geometry is None:
            raise DeepLungRegError("image_to_sitk: a geometry is needed with a bare array")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    is_vector = arr.ndim == 4
    img = sitk.GetImageFromArray(arr, isVector=is_vector)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise DeepLungRegError(f"read_image: folder {folder} holds no DICOM series")
    if len(series) > 1:
        # Pick the series with the most slices, and say so in the metadata.
        files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    else:
        files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    if len(files) < 2:
        raise DeepLungRegError(f"read_image: DICOM series in {folder} has {len(files)} slice; a 3D volume is needed")
    reader.SetFileNames(files)
    return reader.Execute()


def check_input_path(path: Path, what: str, owner: str, expected: str) -> None:
    """Refuse a path that does not exist or is neither a regular file nor a folder (a FIFO, a
    device or a socket, which a reader would wait on forever)."""
    if not path.exists():
        raise DeepLungRegError(f"{owner}: {what} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise DeepLungRegError(f"{owner}: {what} is not a regular file (a FIFO, a device or a socket); give {expected}")


def read_image(path: str | os.PathLike, *, what: str | None = None, dtype: type | None = None) -> Image:
    """Read a scalar 3D image file or DICOM series folder.

    Args:
        path: a NIfTI/NRRD/MHA/MHD file or a folder with one DICOM series.
        what: a name for error messages (defaults to the path).
        dtype: optional numpy dtype to cast the voxels to.

    Returns:
        The image, array ``(Z, Y, X)``, geometry in LPS.
    """
    path = Path(path)
    what = what or str(path)
    check_input_path(path, what, "read_image", "an image file or a DICOM folder")
    if path.is_file():
        check_header(path, what)  # before ITK allocates what the header claims (and NaN voxels of NIfTI files)
    try:
        with keep_locale():
            img = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except DeepLungRegError:
        raise
    except RuntimeError as exc:  # SimpleITK's reader errors
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise DeepLungRegError(f"read_image: cannot read {what}: {first}") from exc
    image = image_from_sitk(img, what=what)
    if dtype is not None:
        image = image.with_array(image.array.astype(dtype))
    return image


def check_writable(path: str | os.PathLike, *, overwrite: bool = True, suffixes: tuple[str, ...] = WRITABLE_SUFFIXES) -> Path:
    """Validate an output path's suffix and (optionally) refuse to overwrite."""
    path = Path(path)
    if _suffix(path) not in suffixes:
        raise DeepLungRegError(f"write: unsupported file type for {path}; use one of {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise DeepLungRegError(f"write: {path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_image(image: Image, path: str | os.PathLike, *, overwrite: bool = True, compress: bool = True) -> Path:
    """Write an image to NIfTI/NRRD/MHA/MHD with its full geometry.

    NIfTI is streamed a slab at a time (:func:`~.nifti.write_nifti`, no copy of
    the image); the other formats go through SimpleITK.
    """
    path = check_writable(path, overwrite=overwrite)
    suffix = _suffix(path)
    if suffix == ".nii" or (suffix == ".nii.gz" and compress):
        write_nifti(image.array, image.geometry, path)
    else:
        sitk.WriteImage(image_to_sitk(image), str(path), useCompression=compress)
    return path
