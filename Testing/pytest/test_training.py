"""Training the network methods and running them: the network grid and its geometry, a tiny
training run with its outputs and resume, the methods with trained weights and their refinement,
and the shipped weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError, Image, read_image
from DeepLungRegLib.cli import main
from DeepLungRegLib.methods import register
from DeepLungRegLib.networks.registry import WEIGHTS_DIR
from DeepLungRegLib.metrics import tre
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.training import (NetworkConfig, SimulatedPairPool, build_network, export_weights, from_simulated, load_checkpoint, network_grid, train,
                                     training_loss, voxel_to_world, world_to_voxel)
from DeepLungRegLib.training.data import augment_anatomy
from DeepLungRegLib.training.train import level_schedule
from DeepLungRegLib.transforms import resample_to_spacing, sample_field_at_points

NETWORKS = ("lindef", "mlvirnet", "labeldriven")


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "unet"}, "method must be one of"),
    ({"shape": (64, 64, 60)}, "multiples of 16"),
    ({"width": 0.0}, "width"),
    ({"levels": 9}, "levels"),
    ({"learning_rate": 5.0}, "learning_rate"),
    ({"method": "lindef", "similarity": "mi"}, "similarity must be"),
    ({"method": "mlvirnet", "similarity": "ncc"}, "applies to lindef only"),
    ({"supervision": -1.0}, "supervision must be"),
    ({"coarse_jitter": 1.5}, r"coarse_jitter must be in \[0, 1\)"),
    ({"method": "lindef", "coarse_jitter": 0.3}, "coarse_jitter applies to mlvirnet only"),
])
def test_network_config_refuses_absurd_values(kwargs, match):
    with pytest.raises(DeepLungRegError, match=match):
        NetworkConfig(**kwargs)
    with pytest.raises(DeepLungRegError, match="unknown option"):
        NetworkConfig.from_dict({"method": "mlvirnet", "depth": 3})


def test_network_grid_is_centred_on_the_lung_and_lies_along_the_lps_axes(oblique):
    """The networks learnt anatomy along L, P, S: their grid keeps that orientation whatever the image's storage."""
    arr = np.zeros(oblique.shape, bool)
    arr[4:10, 5:12, 6:15] = True  # (z, y, x)
    fixed = Image(np.zeros(oblique.shape, np.float32), oblique)
    grid = network_grid(fixed, Image(arr, oblique), 3.0, (16, 32, 48))
    assert grid.shape == (16, 32, 48) and grid.spacing == (3.0, 3.0, 3.0)
    assert np.allclose(grid.direction_matrix, np.eye(3))
    centre_lung = oblique.index_to_world(np.array([[(6 + 14) / 2, (5 + 11) / 2, (4 + 9) / 2]]))[0]
    centre_grid = grid.index_to_world((np.array([[48, 32, 16]]) - 1) / 2)[0]
    assert np.allclose(centre_lung, centre_grid, atol=1e-6)


def test_voxel_displacements_become_world_vectors_on_an_oblique_grid(oblique):
    d = torch.zeros(1, 3, *oblique.shape)
    d[0, 0] = 1.0  # one voxel along z (the k axis)
    d[0, 2] = -2.0  # two voxels back along x (the i axis)
    u = voxel_to_world(d, oblique)
    m = oblique.direction_matrix @ np.diag(oblique.spacing)
    assert u.shape == (*oblique.shape, 3)
    assert np.allclose(u[3, 4, 5], m[:, 2] * 1.0 - m[:, 0] * 2.0, atol=1e-5)


def test_world_to_voxel_inverts_voxel_to_world_on_an_oblique_grid(oblique):
    d = torch.randn(1, 3, *oblique.shape)
    back = world_to_voxel(voxel_to_world(d, oblique), oblique)
    assert back.shape == d.shape and torch.allclose(back, d, atol=1e-4)


def test_a_simulated_network_pair_carries_the_true_displacement(demo_ct):
    sim = simulate_breathing(demo_ct, amplitude="large", seed=3)
    pair = from_simulated(sim, 8.0, (32, 32, 32))
    assert pair.true_displacement.shape == (1, 3, 32, 32, 32)
    # the known displacement, taken back to the world, moves the fixed landmarks onto the moving ones
    u = voxel_to_world(pair.true_displacement, pair.geometry)
    moved = sim.fixed_landmarks + sample_field_at_points(u, pair.geometry, sim.fixed_landmarks)
    err = np.linalg.norm(moved - sim.moving_landmarks, axis=1)
    assert np.median(err) < 1.0 < np.linalg.norm(sim.fixed_landmarks - sim.moving_landmarks, axis=1).mean()


def test_augment_anatomy_mirrors_left_right_about_the_centre_on_an_oblique_grid(oblique):
    world = oblique.world_coordinates()  # (Z, Y, X, 3) LPS
    ct = Image((world[..., 0] * 3.0).astype(np.float32), oblique)  # intensity: 3 x (LPS x), linear
    mask = Image(world[..., 0] > world[..., 0].mean(), oblique)
    rng = np.random.default_rng(0)
    same, same_mask = augment_anatomy(ct, mask, rng, max_rotation_deg=0.0, scale_range=(1.0, 1.0), flip_probability=0.0)
    assert np.allclose(same.array, ct.array, atol=1e-3) and (same_mask.array == mask.array).all()
    out, out_mask = augment_anatomy(ct, mask, rng, max_rotation_deg=0.0, scale_range=(1.0, 1.0), flip_probability=1.0)
    centre = oblique.index_to_world((np.asarray(oblique.size, float) - 1)[None] / 2)[0]
    mirrored_x = 2 * centre[0] - world[..., 0]  # the input is sampled at the point mirrored in LPS x
    inside = np.abs(world[..., 0] - centre[0]) < 0.3 * np.ptp(world[..., 0])
    inside &= np.linalg.norm(world - centre, axis=-1) < 12.0  # well inside the oblique grid
    assert inside.sum() > 20
    assert np.allclose(out.array[inside], 3.0 * mirrored_x[inside], atol=1e-2)
    clear = inside & (np.abs(mirrored_x - world[..., 0].mean()) > 4.0)  # off the mask's edge by more than a voxel
    assert out_mask.array.dtype == bool and (out_mask.array[clear] == (mirrored_x[clear] > world[..., 0].mean())).all()
    assert out.geometry == oblique and (out.array[~inside] != 0).any()


def test_a_pool_with_an_amplitude_range_simulates_mean_displacements_inside_it(demo_ct):
    pool = SimulatedPairPool([("demo", demo_ct, None)], 8.0, (32, 32, 32), size=3, seed=1,
                             amplitude_range_mm=(5.0, 15.0), sim_spacing_mm=4.0)
    for p in pool.pairs:
        mm = float(p.name.split("_")[-2].removesuffix("mm"))
        assert 5.0 <= mm <= 15.0
    assert len({p.name for p in pool.pairs}) == 3
    with pytest.raises(DeepLungRegError, match="reversed"):
        SimulatedPairPool([("demo", demo_ct, None)], 8.0, (32, 32, 32), amplitude_range_mm=(15.0, 5.0))


def test_a_pool_can_make_reversed_pairs_whose_fixed_image_is_the_exhale(demo_ct):
    pool = SimulatedPairPool([("demo", demo_ct, None)], 8.0, (32, 32, 32), size=2, seed=2, reverse_fraction=1.0, sim_spacing_mm=4.0)
    for p in pool.pairs:
        assert p.name.endswith("_reversed")
        # the exhale (fixed) lung is smaller than the inhale (moving) one, and the known field moves landmarks onto their partners
        assert p.fixed_mask.sum() < p.moving_mask.sum()
        u = voxel_to_world(p.true_displacement, p.geometry)
        moved = p.fixed_points + sample_field_at_points(u, p.geometry, p.fixed_points)
        assert np.linalg.norm(moved - p.moving_points, axis=1).mean() < 0.5 < np.linalg.norm(p.fixed_points - p.moving_points, axis=1).mean()
    with pytest.raises(DeepLungRegError, match="between 0 and 1"):
        SimulatedPairPool([("demo", demo_ct, None)], 8.0, (32, 32, 32), reverse_fraction=1.5)


@pytest.mark.parametrize("method", NETWORKS)
def test_the_supervision_term_adds_the_end_point_error_to_the_paper_loss(method, demo_ct):
    pair = from_simulated(simulate_breathing(demo_ct, amplitude="small", seed=5), 8.0, (32, 32, 32))
    kw = {"method": method, "spacing_mm": 8.0, "shape": (32, 32, 32), "width": 0.25}
    torch.manual_seed(0)
    model = build_network(NetworkConfig(**kw)).eval()
    with torch.no_grad():
        plain, parts = training_loss(model, NetworkConfig(**kw), pair)
        sup, sparts = training_loss(model, NetworkConfig(**kw, supervision=2.0), pair)
        assert "epe" not in parts and sparts["epe"] > 0
        assert float(sup) == pytest.approx(float(plain) + 2.0 * sparts["epe"], rel=1e-4)
        real = dataclasses.replace(pair, true_displacement=None)  # a real pair: no known field, no term
        assert float(training_loss(model, NetworkConfig(**kw, supervision=2.0), real)[0]) == pytest.approx(float(plain), rel=1e-5)


@pytest.fixture(scope="module")
def demo_ct(sample_path):
    return resample_to_spacing(read_image(sample_path), 4.0, fill=-1024.0)


@pytest.fixture(scope="module")
def trained(demo_ct, tmp_path_factory):
    """A tiny mlvirnet trained for a few steps, and its run folder."""
    out = tmp_path_factory.mktemp("run")
    cfg = NetworkConfig(method="mlvirnet", spacing_mm=8.0, shape=(32, 32, 32), width=0.25, levels=2)
    res = train(cfg, [("demo", demo_ct, None)], out, steps=4, val_cts=[("demo", demo_ct, None)], pool_size=2, refresh_every=2, validate_every=2)
    return cfg, out, res


def test_a_tiny_training_run_writes_everything_and_can_be_resumed(trained, demo_ct):
    cfg, out, res = trained
    for name in ("checkpoint.pt", "log.csv", "log.json", "loss.png"):
        assert (out / name).is_file(), name
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["method"] == "mlvirnet" and ck["step"] == 4 and ck["config"] == cfg.to_dict()
    assert ck["training_data"]["training_cts"] == ["demo"] and ck["training_data"]["simulated_pairs_made"] >= 3
    assert ck["training_data"]["level_steps"] == [2, 2]
    assert set(ck["validation"]) == {"tre_before", "tre_after", "tre_after_p95"}
    log = json.loads((out / "log.json").read_text())["history"]
    assert [h["step"] for h in log] == [1, 2, 3, 4] and [h["level"] for h in log] == [1, 1, 0, 0]  # coarsest level first
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step,level,loss")
    with pytest.raises(DeepLungRegError, match="pass --resume"):
        train(cfg, [("demo", demo_ct, None)], out, steps=6)
    with pytest.raises(DeepLungRegError, match="another config"):
        train(NetworkConfig(method="mlvirnet", spacing_mm=8.0, shape=(32, 32, 32), width=0.5, levels=2), [("demo", demo_ct, None)], out,
              steps=6, resume=True)
    res2 = train(cfg, [("demo", demo_ct, None)], out, steps=6, pool_size=2, resume=True, validate_every=2)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6 and res2["steps"] == 6
    assert [h["step"] for h in json.loads((out / "log.json").read_text())["history"]] == [1, 2, 3, 4, 5, 6]


def test_mlvirnet_level_steps_give_each_level_its_own_share():
    cfg = NetworkConfig(method="mlvirnet", levels=3)
    assert level_schedule(cfg, 6) == [2, 2, 1, 1, 0, 0]  # default: an equal share, coarsest first
    assert level_schedule(cfg, 6, (3, 2, 1)) == [2, 2, 2, 1, 1, 0]
    with pytest.raises(DeepLungRegError, match="add up to 5 steps, not 6"):
        level_schedule(cfg, 6, (3, 1, 1))
    with pytest.raises(DeepLungRegError, match="needs 3 positive step counts"):
        level_schedule(cfg, 6, (3, 3))
    with pytest.raises(DeepLungRegError, match="mlvirnet only"):
        level_schedule(NetworkConfig(method="lindef"), 6, (3, 3))


def test_training_can_start_from_trained_weights_and_keep_each_levels_own(trained, demo_ct, tmp_path):
    cfg, out, _ = trained
    init = load_checkpoint(out / "checkpoint.pt")["model"]
    with pytest.raises(DeepLungRegError, match="needs 2 positive step counts"):
        train(cfg, [("demo", demo_ct, None)], tmp_path / "a", steps=2, level_steps=(0, 2), pool_size=1)
    train(cfg, [("demo", demo_ct, None)], tmp_path / "b", steps=2, level_steps=(0, 2), pool_size=1, init=out / "checkpoint.pt")
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ck["training_data"]["initial_weights"] == str(out / "checkpoint.pt") and ck["training_data"]["level_steps"] == [0, 2]
    coarse = [k for k in init if k.startswith("nets.1.") and k.endswith("weight")]
    assert coarse and all(torch.equal(ck["model"][k], init[k]) for k in coarse)  # frozen, as trained
    # the fine level went on from its own trained weights, not from a copy of the coarse level
    for k in (k for k in init if k.startswith("nets.0.") and k.endswith("weight")):
        now, own, coarse_copy = ck["model"][k], init[k], init["nets.1." + k[len("nets.0."):]]
        assert float((now - own).abs().sum()) < float((now - coarse_copy).abs().sum()), k
    with pytest.raises(DeepLungRegError, match="holds weights of 'mlvirnet', not 'lindef'"):
        train(NetworkConfig(method="lindef", spacing_mm=8.0, shape=(32, 32, 32), width=0.25), [("demo", demo_ct, None)], tmp_path / "c",
              steps=1, pool_size=1, init=out / "checkpoint.pt")
    with pytest.raises(DeepLungRegError, match="do not fit this network"):
        train(NetworkConfig(method="mlvirnet", spacing_mm=8.0, shape=(32, 32, 32), width=0.5, levels=2), [("demo", demo_ct, None)],
              tmp_path / "d", steps=1, pool_size=1, init=out / "checkpoint.pt")


def test_load_checkpoint_refuses_other_files(tmp_path):
    with pytest.raises(DeepLungRegError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "x.pt").write_text("not a checkpoint")
    with pytest.raises(DeepLungRegError, match="not a DeepLungReg checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


@pytest.fixture(scope="module")
def small_pair(demo_ct):
    return simulate_breathing(demo_ct, amplitude="small", seed=4)


def test_a_network_method_runs_with_given_weights_and_its_refinement_improves_it(trained, small_pair, tmp_path):
    _, out, _ = trained
    p = small_pair
    shipped = export_weights(out / "checkpoint.pt", tmp_path / "w.pt", "deeplungreg train ...")
    ck = load_checkpoint(shipped)
    steps = load_checkpoint(out / "checkpoint.pt")["step"]  # 4, or 6 after the resume test
    assert "optimizer" not in ck and ck["command"] == "deeplungreg train ..." and ck["step"] == steps
    with pytest.raises(DeepLungRegError, match="exists"):
        export_weights(out / "checkpoint.pt", shipped)
    base = {"weights": str(shipped)}
    res = register(p.fixed, p.moving, "mlvirnet", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config=base, device="cpu")
    assert res.field.shape == (*p.fixed.geometry.shape, 3) and np.isfinite(res.field).all()
    assert res.diagnostics["trained_steps"] == steps and "network" in res.timings
    tuned = register(p.fixed, p.moving, "mlvirnet", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask,
                     config={**base, "refine_iterations": 30, "refine_levels_mm": 4.0, "refine_learning_rates": 0.5}, device="cpu")
    t0 = tre(p.fixed_landmarks, p.moving_landmarks, res.field, res.geometry).mean()
    t1 = tre(p.fixed_landmarks, p.moving_landmarks, tuned.field, tuned.geometry).mean()
    assert t1 < 0.7 * t0
    assert "levels" not in res.diagnostics and [lv["stage"] for lv in tuned.diagnostics["levels"]] == ["refine"]
    with pytest.raises(DeepLungRegError, match="holds weights of 'mlvirnet'"):
        register(p.fixed, p.moving, "lindef", config=base, device="cpu")
    with pytest.raises(DeepLungRegError, match="does not exist"):
        register(p.fixed, p.moving, "mlvirnet", config={"weights": "/nowhere.pt"}, device="cpu")


def test_train_cli_errors(tmp_path, capsys):
    assert main(["train", "--method", "mlvirnet", "-o", str(tmp_path / "r"), "-q"]) == 2
    assert "give at least one --ct" in capsys.readouterr().err
    assert main(["train", "--method", "mlvirnet", "--ct", str(tmp_path / "none.nrrd"), "-o", str(tmp_path / "r"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--method", "mlvirnet", "--ct", "x", "--shape", "60,64,64", "-o", str(tmp_path / "r"), "-q"]) == 2
    assert "multiples of 16" in capsys.readouterr().err
    assert main(["train", "--method", "mlvirnet", "--ct", "x", "--shape", "64,a,64", "-o", str(tmp_path / "r"), "-q"]) == 2
    assert "--shape takes three whole numbers" in capsys.readouterr().err
    assert main(["train", "--method", "mlvirnet", "--ct", "x", "--level-steps", "5,a", "-o", str(tmp_path / "r"), "-q"]) == 2
    assert "--level-steps takes whole numbers" in capsys.readouterr().err
    for bad, match in [("4", "LOW, HIGH"), ("4,a", "takes two numbers"), ("25,4", "reversed"), ("0.1,20", "must lie in")]:
        assert main(["train", "--method", "mlvirnet", "--ct", "x", "--amplitude-range", bad, "-o", str(tmp_path / "r"), "-q"]) == 2
        assert match in capsys.readouterr().err


class _ConstantShift(torch.nn.Module):
    """A stand-in network that predicts the same voxel displacement whatever its inputs."""

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.shift = shift

    def forward(self, fixed, moving):
        return [self.shift.expand(1, 3, *fixed.shape[2:])]


def test_direction_auto_keeps_the_prediction_whose_warp_matches_and_reverse_inverts_it(oblique):
    from DeepLungRegLib.methods.networks import directed_prediction
    from DeepLungRegLib.networks.mlvirnet import warp_voxels

    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in oblique.shape], indexing="ij")
    c = [n / 2 for n in oblique.shape]
    blob = torch.as_tensor(np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 18.0))[None, None]
    shift = torch.tensor([2.0, -1.0, 1.5]).view(1, 3, 1, 1, 1)
    shifted = warp_voxels(blob, shift)  # shifted(x) = blob(x + shift): (shifted, blob) is registered by +shift
    cfg = NetworkConfig(method="mlvirnet", spacing_mm=4.0, shape=(16, 16, 16))
    model = _ConstantShift(shift)
    d, info = directed_prediction(model, cfg, shifted, blob, oblique, "auto")
    assert info["direction"] == "forward" and torch.allclose(d, shift.expand_as(d))
    # the pair the other way round needs -shift: the network's (wrong) +shift is refused, its reversal inverted
    d, info = directed_prediction(model, cfg, blob, shifted, oblique, "auto")
    assert info["direction"] == "reverse"
    assert info["ngf_distance"]["reverse"] < info["ngf_distance"]["forward"]
    assert torch.allclose(d, -shift.expand_as(d), atol=1e-3)
    assert info["inverse_residual_mm"] < 1e-2
    d, info = directed_prediction(model, cfg, blob, shifted, oblique, "forward")
    assert info["direction"] == "forward" and list(info["ngf_distance"]) == ["forward"] and "inverse_residual_mm" not in info
    with pytest.raises(DeepLungRegError, match="direction must be one of auto, forward, reverse"):
        register(Image(blob[0, 0].numpy(), oblique), Image(blob[0, 0].numpy(), oblique), "mlvirnet", config={"direction": "both"})


@pytest.mark.parametrize("method", NETWORKS)
def test_the_shipped_weights_load_and_improve_tre_on_a_small_pair(method, small_pair):
    path = WEIGHTS_DIR / f"{method}.pt"
    assert path.is_file(), f"{path} is not shipped"
    ck = load_checkpoint(path)
    assert ck["method"] == method and "lung1_image" in ck["training_data"]["validation_cts"]
    assert not {"lung1_image"} & set(ck["training_data"]["training_cts"])  # lung1 is kept for validation
    assert path.stat().st_size < 10 * 2 ** 20
    p = small_pair
    res = register(p.fixed, p.moving, method, fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, device="cpu")
    before = tre(p.fixed_landmarks, p.moving_landmarks).mean()
    after = tre(p.fixed_landmarks, p.moving_landmarks, res.field, res.geometry).mean()
    assert after < 0.8 * before, f"{method}: TRE {before:.2f} -> {after:.2f} mm"
    assert res.diagnostics["direction"] == "forward"


@pytest.mark.parametrize("method", NETWORKS)
def test_the_shipped_weights_register_a_pair_the_other_way_round(method, small_pair):
    """The networks learnt the inhale as the fixed image; direction=auto runs them the other way and inverts."""
    p = small_pair.reversed()
    before = tre(p.fixed_landmarks, p.moving_landmarks).mean()
    auto = register(p.fixed, p.moving, method, fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, device="cpu")
    forward = register(p.fixed, p.moving, method, fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config={"direction": "forward"}, device="cpu")
    after = tre(p.fixed_landmarks, p.moving_landmarks, auto.field, auto.geometry).mean()
    assert auto.diagnostics["direction"] == "reverse"
    assert after < 0.8 * before < tre(p.fixed_landmarks, p.moving_landmarks, forward.field, forward.geometry).mean()


def test_the_loss_weight_search_script_ranks_its_candidates(sample_path, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("search_loss_weights", Path(__file__).parents[2] / "scripts" / "search_loss_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "search.md"
    args = ["--method", "mlvirnet", "--ct", str(sample_path), "--val-ct", str(sample_path), "--grid", "supervision=0,1",
            "--steps", "3", "--validate-every", "1", "--pool", "1", "--spacing", "8", "--shape", "32,32,32", "-O", "width=0.25",
            "-O", "levels=2", "-o", str(out)]
    assert mod.main(args) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sorted(r["supervision"] for r in rows) == [0.0, 1.0] and rows[0]["tre"] <= rows[1]["tre"]
    assert all(len(r["scores"]) == 3 for r in rows) and "| rank | supervision |" in out.read_text()
    assert mod.main(args) == 2  # the table exists: nothing is overwritten
    assert mod.main([*args[:6], "--grid", "gamma=1", "-o", str(tmp_path / "x.md")]) == 2
