"""Tests of DeepLungRegLib/networks/mlvirnet.py and networks/unet.py (MLVIRNet, Hering et al. 2019)."""

from __future__ import annotations

import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.losses import curvature, ngf
from DeepLungRegLib.networks import MLVIRNet, UNet, compose_displacements, identity_grid, warp_voxels


@pytest.mark.parametrize("dims, shape", [(3, (8, 12, 16)), (2, (12, 20))])
def test_unet_shapes_and_identity_start(dims, shape):
    net = UNet(dims=dims)
    x = torch.randn(2, 2, *shape)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, dims, *shape) and float(out.abs().max()) == 0.0
    assert 100_000 < sum(p.numel() for p in net.parameters()) < 200_000 or dims == 2  # about the 160k of the issue
    with pytest.raises(DeepLungRegError, match="divisible by 4"):
        net(torch.randn(1, 2, *(s + 1 for s in shape)))


def test_compose_displacements_applies_the_first_map_first():
    shape = (4, 5, 40)
    x = identity_grid(shape, dtype=torch.float64)[0, 2]
    first = torch.zeros(1, 3, *shape, dtype=torch.float64)
    first[0, 2] = 0.5 * x  # F(x) = 1.5 x along the last axis
    then = torch.zeros_like(first)
    then[0, 2] = 3.0  # T(x) = x + 3
    total = compose_displacements(first, then)
    inner = 1.5 * x + 3 <= shape[2] - 1
    assert torch.allclose(total[0, 2][inner] + x[inner], (1.5 * x + 3)[inner])  # T(F(x)), not F(T(x)) = 1.5 x + 4.5
    img = torch.rand(1, 1, *shape, dtype=torch.float64)
    assert torch.allclose(warp_voxels(img, torch.zeros_like(first)), img)


def test_mlvirnet_levels_identity_start_and_progressive_training():
    net = MLVIRNet(levels=3, base=4)
    assert net.divisor == 16
    f, m = torch.randn(1, 1, 16, 16, 32), torch.randn(1, 1, 16, 16, 32)
    total, corr = net(f, m)
    assert total.shape == (1, 3, 16, 16, 32) and len(corr) == 3 and float(total.detach().abs().max()) == 0.0
    assert len(net(f, m, finest=2)[1]) == 1
    with pytest.raises(DeepLungRegError, match="multiple of 16"):
        net(f[..., :24], m[..., :24])
    torch.nn.init.normal_(net.nets[2].head.weight)
    params = net.train_level(1)
    assert all(p.requires_grad for p in params) and not any(p.requires_grad for p in net.nets[2].parameters())
    assert torch.equal(net.nets[1].head.weight, net.nets[2].head.weight)  # initialised from the coarser level


def test_coarse_jitter_scales_the_frozen_coarser_field_before_the_level_that_trains():
    torch.manual_seed(1)
    net = MLVIRNet(levels=2, base=4)
    torch.nn.init.constant_(net.nets[1].head.bias, 0.75)  # coarsest: a constant 0.75 coarse voxels = 1.5 input voxels
    f, m = torch.randn(4, 1, 16, 16, 16), torch.randn(4, 1, 16, 16, 16)
    plain = net(f, m)[0]  # the finer network starts at zero: the total is the coarse field
    assert torch.allclose(plain, torch.full_like(plain, 1.5))
    factors = net(f, m, coarse_jitter=0.4)[0][:, 0].flatten(1)
    assert torch.allclose(factors.min(1).values, factors.max(1).values)  # one factor per pair
    ratio = factors[:, 0] / 1.5
    assert bool(((ratio.detach() >= 0.6) & (ratio.detach() <= 1.4)).all()) and float(ratio.detach().std()) > 0.01
    assert torch.equal(net(f, m, finest=1, coarse_jitter=0.4)[0], net(f, m, finest=1)[0])  # the coarsest level itself is not jittered
    with pytest.raises(DeepLungRegError, match="coarse_jitter"):
        net(f, m, coarse_jitter=1.0)


@pytest.mark.slow
def test_a_few_training_steps_lower_the_mlvirnet_loss():
    torch.manual_seed(0)
    g = identity_grid((16, 16, 16))[0] / 15 * 2 - 1
    blob = lambda c: torch.exp(-((g[0]) ** 2 + (g[1]) ** 2 + (g[2] - c) ** 2) / 0.08)[None, None]  # noqa: E731
    fixed, moving = blob(0.1), blob(-0.1)
    net = MLVIRNet(levels=2, base=8)
    params = net.train_level(1)
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        disp, _ = net(fixed, moving, finest=1)
        loss = ngf(fixed, warp_voxels(moving, disp), eps=0.05) + 0.1 * curvature(disp)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.01
    # the moving blob lies 1.5 voxels towards -x: the field points that way where the blob is
    near = fixed[0, 0] > 0.3
    assert float(disp.detach()[0, 2][near].mean()) < -0.3
