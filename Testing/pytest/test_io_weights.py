"""Tests of DeepLungRegLib/io/weights.py: weights files load with ``weights_only``; one that would run code is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from DeepLungRegLib import DeepLungRegError

from helpers_inputs import one_line_error, pair_dir, run_cli


ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------- safe weights
class _Evil:
    """Unpickling this creates a file: what a crafted .pt could do."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.slow
def test_a_weights_file_that_would_run_code_is_refused(pair_dir, tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = _Evil()
    evil.target = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"method": "mlvirnet", "config": {}, "model": {}, "payload": evil}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the file is what we claim: plain torch.load would run it
        torch.load(path, weights_only=True)
    from DeepLungRegLib.networks.mindnet import load_feature_net
    from DeepLungRegLib.networks import load_checkpoint

    for load in (load_checkpoint, load_feature_net):
        with pytest.raises(DeepLungRegError, match="refused"):
            load(path)
    r = run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "o", "--method", "mlvirnet",
                "-O", f"weights={path}", "--fixed-mask", "none", "--moving-mask", "none")
    one_line_error(r, "refused")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_the_shipped_weights_load_with_weights_only():
    for name in ("lindef", "mlvirnet", "labeldriven", "mindnet"):
        assert isinstance(torch.load(ROOT / "DeepLungRegLib" / "data" / "weights" / f"{name}.pt", weights_only=True), dict)
