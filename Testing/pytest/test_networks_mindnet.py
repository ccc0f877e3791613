"""Tests of DeepLungRegLib/networks/mindnet.py: the feature CNN and its weights."""

import pytest
import torch

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.features import mind_ssc
from DeepLungRegLib.features.intensity import normalise_ct
from DeepLungRegLib.networks.mindnet import DEFAULT_WEIGHTS, MindNet, load_feature_net
from DeepLungRegLib.training.features import train_feature_net
from DeepLungRegLib.transforms import resample_to_spacing

from helpers_features import ct3


@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 18, 21)])
def test_mindnet_keeps_the_grid_and_gives_descriptors_in_0_1(shape):
    torch.manual_seed(0)
    out = MindNet(base=4)(torch.rand(1, 1, *shape))
    assert out.shape == (1, 12, *shape)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    with pytest.raises(DeepLungRegError, match="must be"):
        MindNet(base=4)(torch.rand(1, 2, *shape))


def test_feature_weights_errors(tmp_path):
    with pytest.raises(DeepLungRegError, match="--resume needs"):
        train_feature_net([("x", None)], tmp_path / "fresh", steps=2, resume=True)
    with pytest.raises(DeepLungRegError, match="do not exist"):
        load_feature_net(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(DeepLungRegError, match="not a DeepLungReg feature network"):
        load_feature_net(bad)
    with pytest.raises(DeepLungRegError, match="features must be"):
        from DeepLungRegLib.methods.embed import EmbedConfig

        EmbedConfig.from_dict({"features": "sift"})


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped DeepLungRegLib/data/weights/mindnet.pt")
def test_the_shipped_feature_net_predicts_mind_ssc(ct3):
    """The shipped network's descriptors are close to MIND-SSC on the bundled sample (derived from
    popi00, one of its training CTs: a check of the shipped file, not a held-out score; the held-out
    score is in docs/benchmark.md)."""
    net = load_feature_net()
    img = resample_to_spacing(ct3, 2.0, fill=-1024.0)
    t = torch.as_tensor(normalise_ct(img.array))[None, None]
    target = mind_ssc(t, 1, 2)
    with torch.no_grad():
        pred = net(t)
    mse = float((pred - target).pow(2).mean())
    assert mse < 0.5 * float((target - target.mean((2, 3, 4), keepdim=True)).pow(2).mean())
