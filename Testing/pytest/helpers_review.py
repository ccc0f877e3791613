"""Helpers shared by the review tests (browser app and folder, slicer_bridge.review)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_path):
    """A small registration output with landmarks (affine on a 6 mm pair)."""
    from DeepLungRegLib.cli import main as cli

    root = tmp_path_factory.mktemp("review-security")
    pair, out = root / "pair", root / "out"
    assert cli(["simulate", str(sample_path), "-o", str(pair), "--amplitude", "small", "--seed", "2", "--spacing", "6",
                "--landmarks", "30", "-q"]) == 0
    assert cli(["register", str(pair / "fixed.nii.gz"), str(pair / "moving.nii.gz"), "-o", str(out), "--method", "affine",
                "--fixed-mask", str(pair / "fixed_mask.nii.gz"), "--moving-mask", str(pair / "moving_mask.nii.gz"),
                "--fixed-landmarks", str(pair / "fixed_landmarks.csv"), "--moving-landmarks", str(pair / "moving_landmarks.csv"),
                "-q"]) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
