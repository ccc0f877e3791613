"""Tests of DeepLungRegLib/networks/lindef.py (LinDefNet, Kuang & Schmah 2019), with transforms.warp.sample_at_voxels."""

from __future__ import annotations

import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.networks import (
    LinDefNet,
    affine_positions,
    compose_positions,
    identity_positions,
    integrate_gradients,
    lindef_loss,
)
from DeepLungRegLib.transforms.warp import sample_at_voxels


def test_integrating_unit_gradients_gives_the_identity():
    phi = torch.ones(2, 3, 5, 6, 7)
    assert torch.equal(integrate_gradients(phi), identity_positions((5, 6, 7)).expand(2, -1, -1, -1, -1))
    with pytest.raises(DeepLungRegError, match="integrate_gradients"):
        integrate_gradients(torch.ones(1, 2, 4, 4, 4))


def test_sample_at_voxels_reads_the_voxel_it_is_given(device):
    vol = torch.arange(4 * 5 * 6, dtype=torch.float64, device=device).view(1, 1, 4, 5, 6)
    pos = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64, device=device).view(1, 3, 1, 1, 1)  # (z, y, x)
    assert float(sample_at_voxels(vol, pos)) == pytest.approx(float(vol[0, 0, 2, 3, 1]))
    half = torch.tensor([2.0, 3.0, 1.5], dtype=torch.float64, device=device).view(1, 3, 1, 1, 1)
    assert float(sample_at_voxels(vol, half)) == pytest.approx(float(vol[0, 0, 2, 3, 1:3].mean()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lindef_deformation_never_crosses_itself_even_with_random_weights(seed, device):
    """Positions increase strictly along every grid line of their own axis, whatever the weights."""
    torch.manual_seed(seed)
    net = LinDefNet(widths=(4, 4, 4, 4, 4), decoder_width=4)
    for p in net.parameters():  # far from the identity initialisation
        torch.nn.init.normal_(p, std=1.0)
    fixed, moving = torch.randn(1, 1, 12, 10, 11), torch.randn(1, 1, 12, 10, 11)
    net, fixed, moving = net.to(device), fixed.to(device), moving.to(device)
    with torch.no_grad():
        phi, a = net(fixed, moving)
    assert phi.shape == (1, 3, 12, 10, 11) and a.shape == (1, 3, 4)
    assert float(phi.min()) >= 0.01 - 1e-7 and float(phi.max()) <= 1.99 + 1e-7
    assert float((phi - 1).abs().max()) > 0.5  # the weights really are far from the identity
    pos = integrate_gradients(phi)
    assert (pos[:, 0, 1:] > pos[:, 0, :-1]).all()
    assert (pos[:, 1, :, 1:] > pos[:, 1, :, :-1]).all()
    assert (pos[:, 2, :, :, 1:] > pos[:, 2, :, :, :-1]).all()


def test_lindef_starts_at_the_identity():
    net = LinDefNet(widths=(4, 4, 4, 4, 4), decoder_width=4)
    img = torch.randn(2, 1, 9, 8, 7)
    pos, phi, a = net.positions(img, torch.randn_like(img))
    assert torch.allclose(phi, torch.ones_like(phi)) and torch.allclose(a, torch.eye(3, 4).expand(2, 3, 4))
    assert torch.allclose(pos, identity_positions((9, 8, 7)).expand(2, -1, -1, -1, -1), atol=1e-5)
    with pytest.raises(DeepLungRegError, match="LinDefNet"):
        net(img, img[:, :, :-1])


def test_composition_applies_the_deformable_part_at_the_affine_positions():
    """Paper 001 eq. 3, W(W(S, G_N), G_A): output(p) = S(G_N(G_A(p))), not S(G_A(G_N(p)))."""
    shape = (6, 7, 20)
    phi = torch.ones(1, 3, *shape, dtype=torch.float64)
    phi[:, 2] = 0.5  # G_N halves distances along x: x -> 0.5 (x + 1) - 1
    t = 2.0
    a = torch.eye(3, 4, dtype=torch.float64)[None].clone()
    a[0, 2, 3] = t  # G_A shifts along x by t
    pos = compose_positions(integrate_gradients(phi), affine_positions(a, shape))
    x = identity_positions(shape, dtype=torch.float64)[0, 2]
    inner = x + t <= shape[2] - 1
    assert torch.allclose(pos[0, 2][inner], (0.5 * (x + t + 1) - 1)[inner])
    assert not torch.allclose(pos[0, 2][inner], (0.5 * (x + 1) - 1 + t)[inner])
    assert torch.allclose(pos[0, :2], identity_positions(shape, dtype=torch.float64)[0, :2])


def test_affine_positions_turn_about_the_grid_centre():
    shape = (5, 5, 5)
    rot = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0]])[None]  # 90 degrees in the (y, x) plane
    pos = affine_positions(rot, shape)
    assert torch.allclose(pos[0, :, 2, 2, 2], torch.tensor([2.0, 2.0, 2.0]))  # the centre stays
    assert torch.allclose(pos[0, :, 2, 2, 4], torch.tensor([2.0, 0.0, 2.0]))


@pytest.mark.slow
@pytest.mark.parametrize("similarity", ["mse", "ncc", "ngf"])
def test_a_few_training_steps_lower_the_lindef_loss(similarity):
    torch.manual_seed(0)
    z = torch.linspace(-1, 1, 16)
    zz, yy, xx = torch.meshgrid(z, z, z, indexing="ij")
    fixed = torch.exp(-((zz) ** 2 + (yy) ** 2 + (xx - 0.15) ** 2) / 0.1)[None, None]
    moving = torch.exp(-((zz) ** 2 + (yy) ** 2 + (xx + 0.15) ** 2) / 0.1)[None, None]
    net = LinDefNet(widths=(8, 8, 8, 8, 8), decoder_width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        pos, phi, a = net.positions(fixed, moving)
        loss = lindef_loss(fixed, sample_at_voxels(moving, pos), phi, a, similarity=similarity)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # the loss of a perfect match: NCC and NGF keep a floor in flat regions, so the drop is measured above it
    floor = float(lindef_loss(fixed, fixed, torch.ones(1, 3, 16, 16, 16), torch.eye(3, 4)[None], similarity=similarity))
    assert losses[-1] - floor < 0.7 * (losses[0] - floor)
