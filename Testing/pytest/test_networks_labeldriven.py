"""Tests of DeepLungRegLib/networks/labeldriven.py (label-driven B-spline network)."""

from __future__ import annotations

import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.networks import (
    LabelDrivenNet,
    bspline_dense,
    bspline_kernel,
    control_grid_size,
    identity_grid,
    labeldriven_loss,
    warp_voxels,
)


@pytest.mark.parametrize("spacing", [1, 2, 4])
def test_bspline_transformer_reproduces_constant_and_linear_fields(spacing):
    assert float(bspline_kernel(spacing).sum()) == pytest.approx(spacing)  # partition of unity, per output voxel
    shape = (13, 10, 17)
    k = [control_grid_size(n, spacing) for n in shape]
    const = torch.full((1, 3, *k), 2.5, dtype=torch.float64)
    assert torch.allclose(bspline_dense(const, spacing, shape), torch.full((1, 3, *shape), 2.5, dtype=torch.float64))
    # control point i along x sits at voxel (i - 1) * spacing: linear coefficients give the same linear field
    kx = torch.arange(k[2], dtype=torch.float64)
    coeff = ((kx - 1) * spacing * 0.3 + 1.0).view(1, 1, 1, 1, -1).expand(1, 1, *k).clone()
    dense = bspline_dense(coeff, spacing, shape)
    x = torch.arange(shape[2], dtype=torch.float64)
    assert torch.allclose(dense[0, 0], (0.3 * x + 1.0).expand(*shape))
    with pytest.raises(DeepLungRegError, match="control points cannot cover"):
        bspline_dense(const[..., :-1], spacing, shape)


@pytest.mark.parametrize("dims, shape", [(3, (16, 16, 32)), (2, (32, 48))])
def test_labeldriven_outputs_three_fields_and_starts_at_identity(dims, shape):
    net = LabelDrivenNet(widths=(4, 4, 8, 8, 8), dims=dims)
    f = torch.randn(2, 1, *shape)
    with torch.no_grad():
        outs = net(f, torch.randn_like(f))
    assert len(outs) == 3 and all(o.shape == (2, dims, *shape) for o in outs)
    assert all(float(o.abs().max()) == 0.0 for o in outs)
    with pytest.raises(DeepLungRegError, match="multiple of 16"):
        net(f[..., :8], f[..., :8])


def test_labeldriven_streams_share_their_weights():
    net = LabelDrivenNet(widths=(4, 4, 8, 8, 8), dims=2)
    names = [n for n, _ in net.named_parameters() if n.startswith("encoder")]
    assert names and not any("moving" in n or "fixed" in n for n in names)  # one encoder, used for both images


@pytest.mark.slow
def test_a_few_training_steps_lower_the_labeldriven_loss_in_2d():
    """The paper's 2D case: a disc (label) moved by a few pixels."""
    torch.manual_seed(0)
    yy, xx = identity_grid((32, 32))[0]
    disc = lambda cx: ((yy - 16) ** 2 + (xx - cx) ** 2 < 36).float()[None, None]  # noqa: E731
    fixed, moving = disc(17.0), disc(14.0)
    fl = torch.cat([1 - fixed, fixed], 1)
    ml = torch.cat([1 - moving, moving], 1)
    net = LabelDrivenNet(widths=(8, 8, 16, 16, 16), dims=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = labeldriven_loss(fixed, moving, fl, ml, net(fixed, moving), alpha=0.1, beta=1.0)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1
    with torch.no_grad():
        u = net(fixed, moving)[-1]
    before = float((moving - fixed).abs().sum())
    after = float((warp_voxels(moving, u) - fixed).abs().sum())
    assert after < 0.6 * before  # the disc moved towards the fixed one
    assert float(u[0, 1][fixed[0, 0] > 0.5].mean()) < -1.0  # the moving disc lies 3 pixels towards -x
