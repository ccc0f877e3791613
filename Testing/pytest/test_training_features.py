"""Tests of DeepLungRegLib/training/features.py: training and exporting the feature CNN."""

import numpy as np
import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.methods import register
from DeepLungRegLib.metrics import tre
from DeepLungRegLib.networks.mindnet import MindNet, load_feature_net
from DeepLungRegLib.simulation import simulate_breathing
from DeepLungRegLib.training.features import export_feature_net, train_feature_net

from helpers_features import ct3


@pytest.fixture(scope="module")
def feature_run(ct3, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    res = train_feature_net([("demo", ct3)], out, steps=80, val_cts=[("demo", ct3)], spacing_mm=3.0, crop=24, batch=2, base=6,
                            learning_rate=5e-3, validate_every=20)
    return out, res


@pytest.mark.slow
def test_a_tiny_feature_training_run_lowers_the_loss_and_writes_everything(feature_run):
    out, res = feature_run
    for name in ("checkpoint.pt", "log.csv", "log.json", "loss.png"):
        assert (out / name).is_file(), name
    hist = torch.load(out / "checkpoint.pt", weights_only=True)["history"]
    first, last = np.mean([h["loss"] for h in hist[:10]]), np.mean([h["loss"] for h in hist[-10:]])
    assert last < 0.95 * first
    val = [h["validation_mse"] for h in hist if "validation_mse" in h]
    assert len(val) == 4 and val[-1] < val[0]  # the same held-out crops every time
    assert res["validation_mse"] == val[-1] and res["mind_noise_mse"] > 0


@pytest.mark.slow
def test_feature_training_refuses_to_overwrite_and_resumes(feature_run, ct3):
    out, _ = feature_run
    with pytest.raises(DeepLungRegError, match="exists"):
        train_feature_net([("demo", ct3)], out, steps=81, spacing_mm=3.0, crop=24, base=6)
    res = train_feature_net([("demo", ct3)], out, steps=82, spacing_mm=3.0, crop=24, base=6, resume=True)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 82 and res["steps"] == 82
    with pytest.raises(DeepLungRegError, match="other settings"):
        train_feature_net([("demo", ct3)], out, steps=90, spacing_mm=3.0, crop=24, base=8, resume=True)


@pytest.mark.slow
def test_exported_feature_weights_load_and_run_in_embed(feature_run, ct3, tmp_path, device):
    out, _ = feature_run
    w = export_feature_net(out / "checkpoint.pt", tmp_path / "mindnet.pt", "test")
    with pytest.raises(DeepLungRegError, match="exists"):
        export_feature_net(out / "checkpoint.pt", w)
    net = load_feature_net(w)
    assert isinstance(net, MindNet) and not net.training
    p = simulate_breathing(ct3, amplitude="small", seed=3)
    cfg = {"features": "cnn", "feature_weights": str(w), "feature_spacing_mm": 3.0, "search_step_mm": 3.0, "search_range_mm": 30.0,
           "keypoints": 300, "refine": False, "second_pass_range_mm": 0.0}
    res = register(p.fixed, p.moving, "embed", fixed_mask=p.fixed_mask, moving_mask=p.moving_mask, config=cfg, device=device)
    assert res.field.shape == (*p.fixed.geometry.shape, 3) and np.isfinite(res.field).all()
    before = tre(p.fixed_landmarks, p.moving_landmarks).mean()
    after = tre(p.fixed_landmarks, p.moving_landmarks, res.field, res.geometry).mean()
    assert after < before  # even a 40-step network's features carry the motion
