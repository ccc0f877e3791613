"""Helpers shared by the output-safety tests (io.outputs, batch, simulation, cli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from DeepLungRegLib import Geometry, Image, write_image


AFFINE = {"levels_mm": [8.0], "iterations": [30]}


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_pair(folder: Path, n: int = 32) -> tuple[Path, Path]:
    """A blob and the same blob shifted by two voxels, 4 mm voxels."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    g = Geometry((n, n, n), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    c = n / 2
    fixed = (1000 * np.exp(-((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) / 60)).astype(np.int16)
    moving = (1000 * np.exp(-((x - c - 2) ** 2 + (y - c) ** 2 + (z - c) ** 2) / 60)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    return write_image(Image(fixed, g), folder / "fixed.nii.gz"), write_image(Image(moving, g), folder / "moving.nii.gz")


class NoCluster:
    """A client that must not be used: a refusal comes before any work."""

    def __getattr__(self, name):
        raise AssertionError(f"the cluster was used ({name}) although the cohort had to be refused first")
