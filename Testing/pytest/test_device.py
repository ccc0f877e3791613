"""The CUDA path: every method on CUDA agrees with the CPU, precision is what the config says
(TF32 only when asked for, float32 cost volumes, networks under autocast), devices are checked.

Tests marked ``cuda`` run only where torch sees a GPU (``pytest -m cuda``); the others check the
same code paths on the CPU (bfloat16 inputs, autocast on the CPU, the device checks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError, read_image
from DeepLungRegLib.device import precision_scope, resolve_device, resolve_dtype, tf32_enabled
from DeepLungRegLib.methods import available_methods, register
from DeepLungRegLib.methods.costs import displacement_offsets, keypoint_costs
from DeepLungRegLib.metrics import tre
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.transforms import resample_to_spacing

#: fast settings for 4 mm pairs (those of the methods' own tests)
FAST = {
    "affine": {},
    "adam": {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [60, 40], "refine_learning_rates": [1.0, 0.5]},
    "convex": {"feature_spacing_mm": 4.0, "grid_spacing_mm": [8.0, 4.0], "search_half_width_mm": [24.0, 4.0],
               "search_step_mm": [4.0, 4.0], "refine_levels_mm": [4.0], "refine_iterations": [20], "refine_learning_rates": [0.3]},
    "embed": {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "keypoints": 800, "refine_levels_mm": [4.0],
              "refine_iterations": [30], "refine_learning_rates": [0.3]},
}


@pytest.fixture(scope="module")
def pair(sample_path):
    ct = resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)
    return simulate_breathing(ct, amplitude="large", seed=5)


# ---------------------------------------------------------------- on any machine
def _ssd_brute_force(f: np.ndarray, m: np.ndarray, kp: np.ndarray, off: np.ndarray, pr: int) -> np.ndarray:
    """Mean squared difference of (2 pr + 1)^3 patches, float64, replicate padding."""
    pad = int(np.abs(off).max()) + pr
    fp = np.pad(f, ((0, 0),) + ((pr, pr),) * 3, mode="edge")
    mp = np.pad(m, ((0, 0),) + ((pad, pad),) * 3, mode="edge")
    out = np.empty((len(kp), len(off)))
    w = 2 * pr + 1
    for i, (z, y, x) in enumerate(kp):
        a = fp[:, z:z + w, y:y + w, x:x + w]
        for j, (dz, dy, dx) in enumerate(off):
            zz, yy, xx = z + pad - pr + dz, y + pad - pr + dy, x + pad - pr + dx
            out[i, j] = ((a - mp[:, zz:zz + w, yy:yy + w, xx:xx + w]) ** 2).mean()
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_keypoint_costs_are_float32_whatever_the_features_are_stored_in(dtype, device):
    """embed's SSD |w|^2 - 2 w.f + |f|^2 cancels: computed in the features' float16/bfloat16 it kept
    nothing of the cross term (and on the CPU, bfloat16 pooling failed). It is float32 now."""
    rng = np.random.default_rng(4)
    f = torch.as_tensor(rng.random((1, 12, 16, 15, 14)), dtype=torch.float32).to(dtype)
    m = torch.roll(f, shifts=(1, -2, 2), dims=(2, 3, 4))
    kp = np.array([[8, 7, 7], [6, 8, 6], [9, 6, 8]])
    with precision_scope("float32", torch.device(device)):
        costs = keypoint_costs(f.to(device), m.to(device), kp, radius=2, step=1, patch_radius=1, chunk=2)
    ref = _ssd_brute_force(f[0].double().numpy(), m[0].double().numpy(), kp, displacement_offsets(2, 1), 1)
    assert costs.dtype == torch.float32
    assert np.abs(costs.cpu().numpy() - ref).max() < 1e-5  # float32 rounding of the stored values' SSD
    assert (costs.argmin(1).cpu().numpy() == ref.argmin(1)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_volumes_are_sampled_at_float32_positions(dtype, device):
    """A bfloat16 sampling grid keeps 8 bits of a normalised coordinate: on a 200-voxel axis the samples of
    a precision=bfloat16 registration were taken up to ~0.7 voxel off (float16: ~0.07). The coordinates are
    float32 now, for GridSampler (the methods), warp_voxels (the networks) and resample_field."""
    import math

    from DeepLungRegLib import Geometry
    from DeepLungRegLib.methods.common import resample_field
    from DeepLungRegLib.networks.mlvirnet import warp_voxels
    from DeepLungRegLib.transforms.warp import GridSampler

    g = Geometry((200, 6, 5), (1.0, 1.0, 1.0))
    i = torch.arange(200, dtype=torch.float64)
    x = (0.5 * torch.sin(2 * math.pi * i / 20)).view(1, 1, 1, 1, 200).expand(1, 1, 5, 6, 200).to(dtype)  # in [-0.5, 0.5]
    want = (0.5 * torch.sin(2 * math.pi * (i + 0.3) / 20))[:190]
    tol = 0.01  # a few units in the last place of the stored values; a 0.1-voxel position error is 0.016 here
    field = torch.zeros(1, 5, 6, 200, 3, dtype=dtype)
    field[..., 0] = 0.3
    out = GridSampler(g, g, device, dtype)(x.to(device), field.to(device), fill=None)
    assert out.dtype == dtype and (out[0, 0, 2, 3, :190].double().cpu() - want).abs().max() < tol
    # a network's displacement (voxels, (z, y, x)) in bfloat16, as autocast gives it
    disp = torch.zeros(1, 3, 5, 6, 200, dtype=dtype)
    disp[:, 2] = 0.3
    out = warp_voxels(x.to(device), disp.to(device))
    assert out.dtype == dtype and (out[0, 0, 2, 3, :190].double().cpu() - want).abs().max() < tol
    pos = warp_voxels(torch.arange(200, dtype=torch.float32).view(1, 1, 1, 1, 200).expand(1, 1, 5, 6, 200).to(device), disp.to(device))
    assert (pos[0, 0, 2, 3, :190].double().cpu() - (i[:190] + float(disp[0, 2, 0, 0, 0]))).abs().max() < 1e-4  # float32 positions
    # a field on a grid shifted by 0.3 voxel (a smooth field: its x component is the pattern)
    shifted = Geometry((190, 6, 5), (1.0, 1.0, 1.0), (0.3, 0.0, 0.0))
    f = torch.zeros(1, 5, 6, 200, 3, dtype=dtype)
    f[..., 0] = x[0, 0]
    out = resample_field(f.to(device), g, shifted)
    assert out.dtype == dtype and (out[0, 2, 3, :, 0].double().cpu() - want).abs().max() < tol


def test_devices_are_checked_with_one_clear_line():
    with pytest.raises(DeepLungRegError, match="unknown device 'cuda:x'"):
        resolve_device("cuda:x")
    with pytest.raises(DeepLungRegError, match="unknown device 'cudaa'"):
        resolve_device("cudaa")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        with pytest.raises(DeepLungRegError, match=f"torch sees {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")
    else:
        with pytest.raises(DeepLungRegError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_tf32_is_float32_and_the_cpu_flags_stay_as_they_are():
    assert resolve_dtype("tf32", torch.device("cpu")) == torch.float32
    before = tf32_enabled()
    with precision_scope("tf32", torch.device("cpu")):
        assert tf32_enabled() == before
    assert tf32_enabled() == before
    from DeepLungRegLib.methods.convex import ConvexConfig

    assert ConvexConfig.from_dict({"precision": "tf32"}).precision == "tf32"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lindef", "mlvirnet"])
def test_the_network_runs_under_autocast_and_its_field_stays_float32(pair, device, method):
    """``precision`` bfloat16 runs only the network under autocast (here on the CPU, whose autocast
    takes bfloat16 too): its displacement comes back in float32 and close to the float32 one. The
    positions the networks integrate and warp with stay float32 (in bfloat16, lindef's positions were
    off by 8 % of its displacement; 3 % is what its bfloat16 convolutions leave)."""
    from DeepLungRegLib.methods.networks import directed_prediction
    from DeepLungRegLib.networks import NetworkConfig, build_network, load_checkpoint, load_network_state, network_grid, to_network_pair
    from DeepLungRegLib.networks.registry import shipped_weights

    ck = load_checkpoint(shipped_weights(method), device)
    assert all(v.device.type == torch.device(device).type for v in ck["model"].values())  # map_location
    ncfg = NetworkConfig.from_dict(ck["config"])
    model = build_network(ncfg)
    load_network_state(model, ck["model"])
    model.to(device).eval()
    grid = network_grid(pair.fixed, pair.fixed_mask, ncfg.spacing_mm, ncfg.shape)
    p = to_network_pair(pair.fixed, pair.moving, grid)
    f, m = p.fixed.to(device), p.moving.to(device)
    with precision_scope("float32", torch.device(device)):
        full, info = directed_prediction(model, ncfg, f, m, grid, "forward")
        half, info16 = directed_prediction(model, ncfg, f, m, grid, "forward", torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == full.shape and half.device == full.device
    err, size = (half - full).abs(), float(full.abs().mean())
    assert size > 0.1  # the network does move things
    # on this pair: lindef 0.016 of 0.52 voxels (0.043 with bfloat16 positions), mlvirnet 0.003 of 0.9
    assert float(err.mean()) < 0.05 * size and float(err.max()) < 0.5, (float(err.mean()), float(err.max()), size)


# ---------------------------------------------------------------- CUDA against the CPU
@pytest.mark.cuda
def test_auto_picks_the_gpu_and_register_reports_its_memory(pair):
    assert resolve_device("auto").type == "cuda" and resolve_device(None).type == "cuda"
    res = register(pair.fixed, pair.moving, "affine", fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, device="auto")
    assert res.diagnostics["device"].startswith("cuda") and res.diagnostics["peak_gpu_mb"] > 0
    assert res.field.dtype == np.float32 and isinstance(res.field, np.ndarray)


@pytest.mark.cuda
@pytest.mark.parametrize("method", sorted(available_methods()))
def test_every_method_on_cuda_agrees_with_the_cpu(pair, method):
    """Mean TRE within 0.05 mm; the fields within 0.1 mm on average in the lung. The gap that remains is
    float32 rounding in another order (and atomics in grid_sample's backward pass), never TF32: the
    registration runs with TF32 off (precision float32)."""
    cfg = FAST.get(method, {})
    kw = dict(fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=cfg)
    cpu = register(pair.fixed, pair.moving, method, device="cpu", **kw)
    gpu = register(pair.fixed, pair.moving, method, device="cuda", **kw)
    assert gpu.diagnostics["device"].startswith("cuda") and gpu.diagnostics["peak_gpu_mb"] > 0
    t_cpu = tre(pair.fixed_landmarks, pair.moving_landmarks, cpu.field, cpu.geometry).mean()
    t_gpu = tre(pair.fixed_landmarks, pair.moving_landmarks, gpu.field, gpu.geometry).mean()
    lung = pair.fixed_mask.array > 0
    diff = np.linalg.norm(gpu.field - cpu.field, axis=-1)[lung]
    print(f"{method}: TRE cpu {t_cpu:.3f} gpu {t_gpu:.3f} mm; field difference in the lung mean {diff.mean():.4f} max {diff.max():.3f} mm; "
          f"{cpu.timings['total']:.1f} s -> {gpu.timings['total']:.1f} s")
    assert abs(t_gpu - t_cpu) < 0.05
    assert diff.mean() < 0.1


@pytest.mark.cuda
def test_tf32_is_on_exactly_when_asked_for_and_the_flags_come_back():
    dev = torch.device("cuda")
    with precision_scope("tf32", dev):
        outer = tf32_enabled()
        with precision_scope("float32", dev):
            assert tf32_enabled() == (False, False)
        assert tf32_enabled() == outer == (True, True)
    before = tf32_enabled()
    with precision_scope("bfloat16", dev):
        assert tf32_enabled() == (False, False)
    assert tf32_enabled() == before


@pytest.mark.cuda
def test_a_float32_registration_is_strict_even_where_torch_allows_tf32(pair):
    """torch lets cuDNN convolutions use TF32 by default: inside a float32 registration embed's cost
    volume (a convolution) is strict float32 all the same, and with precision tf32 the flags are on."""
    rng = np.random.default_rng(5)
    f = torch.as_tensor(rng.random((1, 12, 20, 18, 16)), dtype=torch.float32)
    m = torch.roll(f, shifts=(1, -2, 2), dims=(2, 3, 4))
    kp = np.array([[10, 9, 8], [8, 10, 7], [11, 8, 9]])
    ref = _ssd_brute_force(f[0].double().numpy(), m[0].double().numpy(), kp, displacement_offsets(3, 1), 1)
    with precision_scope("tf32", torch.device("cuda")):  # what a user (or torch's default for convolutions) may have set
        with precision_scope("float32", torch.device("cuda")):
            strict = keypoint_costs(f.cuda(), m.cuda(), kp, radius=3, step=1, patch_radius=1).cpu().numpy()
    assert np.abs(strict - ref).max() < 1e-5
    cfg = {**FAST["convex"], "precision": "tf32"}
    res = register(pair.fixed, pair.moving, "convex", fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, config=cfg, device="cuda")
    assert res.config["precision"] == "tf32"
    assert tre(pair.fixed_landmarks, pair.moving_landmarks, res.field, res.geometry).mean() < 0.3 * tre(pair.fixed_landmarks, pair.moving_landmarks).mean()


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["lindef", "mlvirnet", "labeldriven"])
def test_a_network_in_bfloat16_on_cuda_keeps_its_accuracy(pair, method):
    kw = dict(fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, device="cuda")
    full = register(pair.fixed, pair.moving, method, **kw)
    half = register(pair.fixed, pair.moving, method, config={"precision": "bfloat16"}, **kw)
    assert half.diagnostics["network_autocast"] == "bfloat16" and half.field.dtype == np.float32
    t_full = tre(pair.fixed_landmarks, pair.moving_landmarks, full.field, full.geometry).mean()
    t_half = tre(pair.fixed_landmarks, pair.moving_landmarks, half.field, half.geometry).mean()
    assert abs(t_half - t_full) < 0.1, (t_full, t_half)


@pytest.mark.cuda
def test_weights_load_onto_the_gpu_and_batch_plans_one_worker_per_gpu():
    from DeepLungRegLib.batch.run import cluster_plan
    from DeepLungRegLib.networks.mindnet import load_feature_net

    net = load_feature_net(None, "cuda")
    assert next(net.parameters()).device.type == "cuda"
    plan = cluster_plan("auto", None)
    assert plan["device"] == "cuda" and plan["workers"] == torch.cuda.device_count()
    assert plan["worker_resources"] == {"GPU": 1} and plan["task_resources"] == {"GPU": 1}
