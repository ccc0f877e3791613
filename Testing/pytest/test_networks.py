"""The networks of the deep methods: shapes, the identity at initialisation, paper 001's
no-self-crossing integration, the composition order, and that training lowers the loss."""

from __future__ import annotations

import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.device import precision_scope
from DeepLungRegLib.networks import LinDefNet, affine_positions, compose_positions, identity_positions, integrate_gradients, lindef_loss
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


# ------------------------------------------------------------------ paper 002
from DeepLungRegLib.losses import curvature, ngf  # noqa: E402
from DeepLungRegLib.networks import MLVIRNet, UNet, compose_displacements, identity_grid, warp_voxels  # noqa: E402


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
    assert total.shape == (1, 3, 16, 16, 32) and len(corr) == 3 and float(total.abs().max()) == 0.0
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
    assert bool(((ratio >= 0.6) & (ratio <= 1.4)).all()) and float(ratio.std()) > 0.01
    assert torch.equal(net(f, m, finest=1, coarse_jitter=0.4)[0], net(f, m, finest=1)[0])  # the coarsest level itself is not jittered
    with pytest.raises(DeepLungRegError, match="coarse_jitter"):
        net(f, m, coarse_jitter=1.0)


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


# ------------------------------------------------------------------ paper 004
from DeepLungRegLib.networks import LabelDrivenNet, bspline_dense, bspline_kernel, control_grid_size, labeldriven_loss  # noqa: E402


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


@pytest.mark.parametrize("method", ["mlvirnet", "labeldriven"])
def test_batch_norm_uses_each_inputs_own_statistics_at_inference_and_old_weights_still_load(method, device):
    from DeepLungRegLib.training import NetworkConfig, build_network, load_network_state

    torch.manual_seed(0)
    cfg = NetworkConfig(method=method, spacing_mm=8.0, shape=(32, 32, 32), width=0.25)
    net = build_network(cfg)
    for p in net.parameters():  # away from the zero-initialised heads, so that outputs differ
        p.data.add_(0.05 * torch.randn_like(p))
    f, m = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    net, f, m = net.to(device), f.to(device), m.to(device)
    with torch.no_grad(), precision_scope("float32", torch.device(device)):  # no TF32 convolutions on CUDA
        trained_like = net.train()(f, m)
        infer = net.eval()(f, m)
    first = (lambda out: out[0]) if method == "mlvirnet" else (lambda out: out[-1])
    assert float(first(trained_like).abs().max()) > 0 and torch.allclose(first(trained_like), first(infer), atol=1e-5)
    # weights saved when batch norm kept running statistics: those are dropped, nothing else
    state = {k: v.cpu() for k, v in net.state_dict().items()}
    bn = [k.rsplit(".", 1)[0] for k, v in state.items() if k.endswith(".bias") and k.rsplit(".", 1)[0] + ".weight" in state
          and state[k.rsplit(".", 1)[0] + ".weight"].ndim == 1]
    assert bn
    old = dict(state, **{f"{b}.running_mean": torch.zeros(1) for b in bn}, **{f"{b}.num_batches_tracked": torch.tensor(3) for b in bn})
    fresh = build_network(cfg)
    load_network_state(fresh, old)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.values()))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_network_state(fresh, dict(state, **{"extra.weight": torch.zeros(1)}))
