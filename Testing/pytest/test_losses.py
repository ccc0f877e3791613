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


def _plain_diffusion(field, spacing):
    dz = (field[:, 1:] - field[:, :-1]) / spacing[0]
    dy = (field[:, :, 1:] - field[:, :, :-1]) / spacing[1]
    dx = (field[:, :, :, 1:] - field[:, :, :, :-1]) / spacing[2]
    return dz.pow(2).mean() * 3 + dy.pow(2).mean() * 3 + dx.pow(2).mean() * 3


@pytest.mark.parametrize("shape", [(1, 4, 5, 6, 3), (2, 2, 3, 7, 3)])
def test_diffusion_value_and_its_written_out_gradient_match_the_plain_formula(shape):
    from DeepLungRegLib.losses import diffusion

    torch.manual_seed(0)
    spacing = (2.0, 1.5, 0.7)
    f = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: diffusion(x, spacing), (f,))
    g, = torch.autograd.grad(diffusion(f, spacing), f)
    g_ref, = torch.autograd.grad(_plain_diffusion(f, spacing), f)
    assert torch.allclose(g, g_ref, atol=1e-12)
    with torch.no_grad():
        assert float(diffusion(f, spacing)) == pytest.approx(float(_plain_diffusion(f, spacing)), rel=1e-12)
    # a translation costs nothing; a linear ramp of 1 mm per voxel along x costs 3 / spacing_x^2 per component set
    ramp = torch.zeros(1, 3, 4, 5, 3, dtype=torch.float64)
    ramp[..., 0] = torch.arange(5, dtype=torch.float64)
    assert float(diffusion(ramp + 7.0, spacing)) == pytest.approx(3 / 0.7 ** 2 / 3)


def test_the_folding_penalty_in_the_box_of_low_jacobians_equals_the_whole_fields():
    from DeepLungRegLib.losses import folding_penalty, jacobian_determinant_torch, low_jacobian_box

    torch.manual_seed(1)
    w = torch.diag(torch.tensor([2.0, 1.5, 1.0]))
    field = 0.02 * torch.randn(1, 20, 22, 24, 3, dtype=torch.float64)
    # a local compression along x in one corner: J near 0 there, near 1 everywhere else
    field[0, 2:5, 3:6, 4:8, 0] -= torch.linspace(0.0, 7.5, 4, dtype=torch.float64)
    field.requires_grad_(True)
    jac = jacobian_determinant_torch(field.detach(), w)
    assert float(jac.min()) < 0.1
    box = low_jacobian_box(jac, 0.25)
    (z0, z1), (y0, y1), (x0, x1) = box
    assert (z1 - z0) * (y1 - y0) * (x1 - x0) < jac[0].numel() / 10  # a small part of the field
    outside = torch.ones_like(jac[0], dtype=torch.bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert float(jac[0][outside].min()) >= 0.25
    whole, in_box = folding_penalty(field, w), folding_penalty(field, w, box=box)
    assert whole.item() > 0 and in_box.item() == pytest.approx(whole.item(), rel=1e-12)
    g, = torch.autograd.grad(whole, field)
    g_box, = torch.autograd.grad(folding_penalty(field, w, box=box), field)
    assert torch.allclose(g, g_box, atol=1e-15)
    # the refinement's box: where J < 0.1 (the penalty's support), not grown: still exactly the whole field's
    tight = low_jacobian_box(jac, 0.1, grow=0)
    assert tight is not None
    g_tight, = torch.autograd.grad(folding_penalty(field, w, box=tight), field)
    assert folding_penalty(field, w, box=tight).item() == pytest.approx(whole.item(), rel=1e-12)
    assert torch.allclose(g, g_tight, atol=1e-15)
    # what the refinement calls: the same, and None where no J < 0.1
    from DeepLungRegLib.losses import folding_penalty_where_low

    assert folding_penalty_where_low(field, w, jac).item() == pytest.approx(whole.item(), rel=1e-12)
    assert folding_penalty_where_low(field, w, torch.ones_like(jac)) is None
    # no Jacobian below the threshold: no box
    assert low_jacobian_box(torch.ones(1, 3, 4, 5), 0.25) is None
    # the box is grown and clipped to the array
    one = torch.ones(1, 6, 6, 6)
    one[0, 0, 3, 5] = 0.0
    assert low_jacobian_box(one, 0.25, grow=2) == ((0, 3), (1, 6), (3, 6))
