"""Tests of DeepLungRegLib/losses: curvature, local NCC and NGF."""

from __future__ import annotations

import pytest
import torch

from DeepLungRegLib.losses import curvature, ngf
from DeepLungRegLib.networks import identity_grid


def test_curvature_is_zero_for_affine_and_known_for_quadratic_fields(device):
    z, y, x = identity_grid((9, 10, 11), device=device, dtype=torch.float64)[0]
    affine = torch.stack([0.1 * x + 2 * y, -z + 0.3, 0.5 * x])[None]
    assert float(curvature(affine)) == pytest.approx(0.0, abs=1e-12)
    quad = torch.stack([x ** 2, torch.zeros_like(x), torch.zeros_like(x)])[None]  # Laplacian 2 in one of three components
    assert float(curvature(quad)) == pytest.approx(0.5 * 4 / 3)
    # with 2 mm along x the same values are x_mm^2 / 4: Laplacian 0.5 per mm^2
    assert float(curvature(quad, spacing=(1.0, 1.0, 2.0))) == pytest.approx(0.5 * 0.25 / 3)


def test_local_ncc_is_zero_for_affine_intensity_changes_and_two_for_inversions(device):
    from DeepLungRegLib.losses import local_ncc_distance

    torch.manual_seed(0)
    img = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 20, 20), 3, 1, 1).to(device)
    assert float(local_ncc_distance(img, 3 * img - 2)) == pytest.approx(0.0, abs=1e-3)
    assert float(local_ncc_distance(img, -img)) == pytest.approx(2.0, abs=1e-3)
    assert float(local_ncc_distance(img, torch.roll(img, 3, dims=4))) > 0.5
    assert local_ncc_distance(img, img, reduce=False).shape == img.shape


def test_ngf_prefers_aligned_edges(device):
    torch.manual_seed(0)
    img = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 20, 20), 3, 1, 1).to(device)
    shifted = torch.roll(img, 3, dims=4)
    assert float(ngf(img, img, eps=1e-3)) < 0.05 < float(ngf(img, shifted, eps=1e-3))
    assert float(ngf(img, 2 * img + 1, eps=1e-3)) == pytest.approx(float(ngf(img, img, eps=1e-3)), abs=1e-3)  # contrast-free
