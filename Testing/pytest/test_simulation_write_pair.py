"""Tests of DeepLungRegLib/simulation/breathing.py's write_pair: a pair replaces only its own earlier files, never its input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image
from DeepLungRegLib.io.outputs import RECORD_KEY

from helpers_outputs import listing


def _tiny_pair():
    from DeepLungRegLib.simulation.breathing import SimulatedPair

    g = Geometry((12, 10, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    img = Image(np.arange(12 * 10 * 8, dtype=np.int16).reshape(8, 10, 12), g)
    mask = Image(np.ones((8, 10, 12), bool), g)
    pts = np.array([[4.0, 4.0, 4.0], [8.0, 6.0, 4.0]])
    return SimulatedPair(img, img, mask, mask, np.zeros((8, 10, 12, 3), np.float32), pts, pts, {"amplitude": "small"})


def test_a_simulated_pair_replaces_only_its_own_earlier_files(tmp_path):
    """simulate --overwrite and the demo's pair folder: an earlier pair of ours is replaced; a user's file with a
    pair name (or one of ours changed since) is refused in one line and left as it was, even with overwrite."""
    from DeepLungRegLib.simulation import read_pair, write_pair

    pair, out = _tiny_pair(), tmp_path / "pair"
    write_pair(pair, out)
    info = json.loads((out / "simulation.json").read_text())
    assert set(info[RECORD_KEY]) == {"fixed.nii.gz", "moving.nii.gz", "fixed_mask.nii.gz", "moving_mask.nii.gz",
                                     "ground_truth_field.nii.gz", "fixed_landmarks.csv", "moving_landmarks.csv"}
    assert RECORD_KEY not in read_pair(out).info
    with pytest.raises(DeepLungRegError, match="already holds a pair"):
        write_pair(pair, out)
    write_pair(pair, out, overwrite=True)  # our own, unchanged: replaced
    (out / "fixed_landmarks.csv").write_text("x,y,z\n1,2,3\n")  # the user edits one
    before = listing(tmp_path)
    with pytest.raises(DeepLungRegError, match="was not written by a run of ours"):
        write_pair(pair, out, overwrite=True)
    assert listing(tmp_path) == before
    user = tmp_path / "mine"  # a user's folder that happens to hold a fixed.nii.gz
    user.mkdir()
    (user / "fixed.nii.gz").write_bytes(b"the user's scan")
    with pytest.raises(DeepLungRegError, match="was not written by a run of ours"):
        write_pair(pair, user, overwrite=True)
    assert (user / "fixed.nii.gz").read_bytes() == b"the user's scan" and sorted(os.listdir(user)) == ["fixed.nii.gz"]


def test_a_simulated_pair_never_replaces_the_ct_it_is_made_from(tmp_path):
    """simulate CT -o OUT --overwrite with CT = OUT/fixed.nii.gz (an earlier pair's fixed image, or the user's CT
    under that name): refused in one line before any work, the CT left as it was."""
    from DeepLungRegLib.simulation import write_pair
    from DeepLungRegLib.simulation.breathing import check_pair_outdir

    pair, out = _tiny_pair(), tmp_path / "pair"
    write_pair(pair, out)
    ct = out / "fixed.nii.gz"
    before = ct.read_bytes()
    for call in (lambda: check_pair_outdir(out, True, [ct]), lambda: write_pair(pair, out, overwrite=True, source=str(ct))):
        with pytest.raises(DeepLungRegError, match="is the input"):
            call()
    assert ct.read_bytes() == before
