"""Readers for the DIR-Lab 4D-CT and COPDgene data as DIR-Lab distributes them.

Images are raw little-endian int16 files, ``slices x rows x cols`` (so the
array is already ``(z, y, x)``), with no header: size and spacing come from the
tables below (published by DIR-Lab). Landmarks are 1-based voxel indices
``x y z``; the DIR-Lab world origin is 0, so a landmark at index ``(i, j, k)``
(1-based) lies at ``((i-1) sx, (j-1) sy, (k-1) sz)`` mm, and the image grid
uses the same frame (origin 0, identity direction). The tests check this with
synthetic files written in the same layout.

4D-CT layout (cases 1-10)::

    ROOT/CaseNPack/Images/caseN_T00_s.img, caseN_T50_s.img
    ROOT/CaseNPack/ExtremePhases/CaseN_300_T00_xyz.txt, CaseN_300_T50_xyz.txt

COPDgene layout (copd1-copd10)::

    ROOT/copdN/copdN_iBHCT.img, copdN_eBHCT.img
    ROOT/copdN/copdN_300_iBH_xyz_r1.txt, copdN_300_eBH_xyz_r1.txt

T00 / iBH is inhale, T50 / eBH exhale. Either can be the fixed image.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image
from ..io.landmarks import read_landmarks

log = logging.getLogger(__name__)

#: DIR-Lab 4D-CT: case -> (size x, y, z; spacing x, y, z in mm).
DIRLAB_4DCT = {
    1: ((256, 256, 94), (0.97, 0.97, 2.5)),
    2: ((256, 256, 112), (1.16, 1.16, 2.5)),
    3: ((256, 256, 104), (1.15, 1.15, 2.5)),
    4: ((256, 256, 99), (1.13, 1.13, 2.5)),
    5: ((256, 256, 106), (1.10, 1.10, 2.5)),
    6: ((512, 512, 128), (0.97, 0.97, 2.5)),
    7: ((512, 512, 136), (0.97, 0.97, 2.5)),
    8: ((512, 512, 128), (0.97, 0.97, 2.5)),
    9: ((512, 512, 128), (0.97, 0.97, 2.5)),
    10: ((512, 512, 120), (0.97, 0.97, 2.5)),
}

#: DIR-Lab COPDgene: case -> (size, spacing), as published by DIR-Lab (copd1 also in ../shared/data/README.md).
DIRLAB_COPD = {
    1: ((512, 512, 121), (0.625, 0.625, 2.5)),
    2: ((512, 512, 102), (0.645, 0.645, 2.5)),
    3: ((512, 512, 126), (0.652, 0.652, 2.5)),
    4: ((512, 512, 126), (0.590, 0.590, 2.5)),
    5: ((512, 512, 131), (0.647, 0.647, 2.5)),
    6: ((512, 512, 119), (0.633, 0.633, 2.5)),
    7: ((512, 512, 112), (0.625, 0.625, 2.5)),
    8: ((512, 512, 115), (0.586, 0.586, 2.5)),
    9: ((512, 512, 116), (0.664, 0.664, 2.5)),
    10: ((512, 512, 135), (0.742, 0.742, 2.5)),
}

#: Published initial (no registration) TRE, mean (std) in mm, of the 4D-CT
#: landmark sets (paper 002, Table 1, "Initial"); the tests reproduce them.
DIRLAB_4DCT_INITIAL_TRE = {
    1: (3.89, 2.78), 2: (4.34, 3.90), 3: (6.94, 4.05), 4: (9.83, 4.85), 5: (7.48, 5.50),
    6: (10.89, 6.96), 7: (11.03, 7.42), 8: (14.99, 9.00), 9: (7.92, 3.97), 10: (7.30, 6.34),
}


def dirlab_geometry(size_xyz, spacing_xyz) -> Geometry:
    """The DIR-Lab frame: origin 0, identity direction."""
    return Geometry(tuple(size_xyz), tuple(spacing_xyz))


def read_dirlab_img(path: str | os.PathLike, size_xyz, spacing_xyz, *, hu_offset: str | float = "auto") -> Image:
    """Read a DIR-Lab raw ``.img`` (little-endian int16, slices x rows x cols).

    Args:
        hu_offset: value subtracted to get HU; ``"auto"`` subtracts 1024 when the
            image holds no negative values (files stored as HU + 1024), else 0.
    """
    path = Path(path)
    if not path.is_file():
        raise DeepLungRegError(f"read_dirlab_img: {path} does not exist")
    nx, ny, nz = (int(s) for s in size_xyz)
    expected = nx * ny * nz * 2
    actual = path.stat().st_size
    if actual != expected:
        raise DeepLungRegError(f"read_dirlab_img: {path} has {actual} bytes, but {nx}x{ny}x{nz} int16 voxels need {expected}; "
                               "wrong case or not a DIR-Lab .img")
    arr = np.fromfile(path, dtype="<i2").reshape(nz, ny, nx).astype(np.int16)
    if hu_offset == "auto":
        hu_offset = 1024.0 if arr.min() >= 0 else 0.0
    if hu_offset:
        log.info("read_dirlab_img: %s: subtracting %g to get HU", path.name, hu_offset)
        arr = (arr.astype(np.int32) - int(hu_offset)).astype(np.int16)
    return Image(arr, dirlab_geometry(size_xyz, spacing_xyz))


def write_dirlab_img(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a ``(Z, Y, X)`` array as a DIR-Lab raw ``.img`` (little-endian int16)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(np.asarray(image).astype("<i2")).tofile(path)
    return path


@dataclass(frozen=True)
class DirLabFiles:
    """Where one DIR-Lab case lies on disk."""

    dataset: str  # "4dct" or "copd"
    case: int
    inhale_image: Path
    exhale_image: Path
    inhale_points: Path
    exhale_points: Path
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def name(self) -> str:
        return f"case{self.case}" if self.dataset == "4dct" else f"copd{self.case}"


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def dirlab_files(root: str | os.PathLike, case: int, dataset: str = "4dct") -> DirLabFiles:
    """The file paths of one case (existence is checked when reading)."""
    root = Path(root)
    if dataset == "4dct":
        if case not in DIRLAB_4DCT:
            raise DeepLungRegError(f"dirlab: 4D-CT case {case} does not exist (1-10)")
        size, spacing = DIRLAB_4DCT[case]
        pack = root / f"Case{case}Pack"
        phases = [pack / "ExtremePhases", pack / "extremePhases"]
        return DirLabFiles(
            dataset, case,
            _first_existing(pack / "Images" / f"case{case}_T00_s.img", pack / "Images" / f"case{case}_T00.img"),
            _first_existing(pack / "Images" / f"case{case}_T50_s.img", pack / "Images" / f"case{case}_T50.img"),
            _first_existing(*(p / f"Case{case}_300_T00_xyz.txt" for p in phases)),
            _first_existing(*(p / f"Case{case}_300_T50_xyz.txt" for p in phases)),
            size, spacing)
    if dataset == "copd":
        if case not in DIRLAB_COPD:
            raise DeepLungRegError(f"dirlab: COPD case {case} does not exist (1-10)")
        size, spacing = DIRLAB_COPD[case]
        d = root / f"copd{case}"
        return DirLabFiles(dataset, case, d / f"copd{case}_iBHCT.img", d / f"copd{case}_eBHCT.img",
                           d / f"copd{case}_300_iBH_xyz_r1.txt", d / f"copd{case}_300_eBH_xyz_r1.txt", size, spacing)
    raise DeepLungRegError(f"dirlab: unknown dataset {dataset!r}; use '4dct' or 'copd'")


def find_cases(root: str | os.PathLike, dataset: str = "4dct", *, need_images: bool = True) -> list[DirLabFiles]:
    """Every case under ``root`` whose landmark files (and images, if asked) are present."""
    root = Path(root)
    if not root.is_dir():
        raise DeepLungRegError(f"dirlab: {root} is not a folder")
    table = DIRLAB_4DCT if dataset == "4dct" else DIRLAB_COPD
    out = []
    for case in table:
        f = dirlab_files(root, case, dataset)
        files = [f.inhale_points, f.exhale_points] + ([f.inhale_image, f.exhale_image] if need_images else [])
        if all(p.is_file() for p in files):
            out.append(f)
    return out


def read_dirlab_landmarks(files: DirLabFiles) -> tuple[np.ndarray, np.ndarray]:
    """Inhale and exhale landmarks ``(300, 3)`` in mm (LPS, DIR-Lab frame)."""
    a = read_landmarks(files.inhale_points, fmt="dirlab", spacing=files.spacing)
    b = read_landmarks(files.exhale_points, fmt="dirlab", spacing=files.spacing)
    if a.shape != b.shape:
        raise DeepLungRegError(f"dirlab: {files.inhale_points.name} has {len(a)} points but {files.exhale_points.name} has {len(b)}")
    return a, b


def load_dirlab_case(files: DirLabFiles, *, fixed: str = "inhale", hu_offset: str | float = "auto"):
    """Read one case as ``(fixed_image, moving_image, fixed_points, moving_points)``.

    Args:
        fixed: ``"inhale"`` (T00 / iBH fixed, the usual direction) or ``"exhale"``.
    """
    if fixed not in ("inhale", "exhale"):
        raise DeepLungRegError(f"dirlab: fixed must be 'inhale' or 'exhale', got {fixed!r}")
    ins = read_dirlab_img(files.inhale_image, files.size, files.spacing, hu_offset=hu_offset)
    exs = read_dirlab_img(files.exhale_image, files.size, files.spacing, hu_offset=hu_offset)
    pi, pe = read_dirlab_landmarks(files)
    for pts, img, what in ((pi, ins, files.inhale_points), (pe, exs, files.exhale_points)):
        idx = img.geometry.world_to_index(pts)
        if np.any(idx < -0.5) or np.any(idx > np.asarray(img.geometry.size) - 0.5):
            raise DeepLungRegError(f"dirlab: landmarks in {what.name} fall outside the {files.size} image; wrong case?")
    return (ins, exs, pi, pe) if fixed == "inhale" else (exs, ins, pe, pi)
