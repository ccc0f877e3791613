"""Tests of DeepLungRegLib/training/models.py: the end-point error the supervision term adds."""

from __future__ import annotations

import torch

from DeepLungRegLib.training.models import endpoint_error


def test_the_end_point_error_of_a_constant_shift_is_its_length():
    target = torch.zeros(2, 3, 4, 5, 6)
    shifted = target + torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1, 1)
    assert torch.isclose(endpoint_error(shifted, target), torch.tensor(5.0), atol=1e-5)
    assert float(endpoint_error(target, target)) < 1e-5
