"""Tests of DeepLungRegLib/features/mind.py: MIND-SSC descriptors."""

import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.features import mind_ssc


def test_mind_shape_range_and_intensity_invariance(device):
    x = torch.rand(1, 1, 16, 18, 20, dtype=torch.float64, device=device)
    m = mind_ssc(x)
    assert m.shape == (1, 12, 16, 18, 20) and m.device == x.device
    assert float(m.min()) >= 0 and float(m.max()) <= 1 + 1e-9
    assert torch.allclose(mind_ssc(3.0 * x + 7.0), m, atol=1e-6)


def test_mind_follows_a_shift(device):
    x = torch.rand(1, 1, 20, 20, 20, device=device)
    shifted = torch.roll(x, 2, dims=4)
    a, b = mind_ssc(x), mind_ssc(shifted)
    assert torch.allclose(torch.roll(a, 2, dims=4)[..., 6:-6, 6:-6, 6:-6], b[..., 6:-6, 6:-6, 6:-6], atol=1e-5)


def test_mind_rejects_bad_input():
    with pytest.raises(DeepLungRegError, match="must be"):
        mind_ssc(torch.zeros(1, 2, 4, 4, 4))
