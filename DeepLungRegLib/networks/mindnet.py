"""Paper 000's learned feature extractor (MindNet): a light U-Net (3 encoder and 2 decoder blocks)
trained to predict MIND-like descriptors from a CT.

The network sees the windowed CT (``[0, 1]``) on the feature grid of ``embed``
(2 mm by default) and predicts the 12 MIND-SSC channels on the same grid. Its
training (``deeplungreg train-features``) is in :mod:`DeepLungRegLib.training.features`.

Deviation from the paper: the paper's network reads the full-resolution CT
and outputs stride-2 features; here input and output share the feature grid
(the CPU cost of a full-resolution input is too high for the time targets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import weights_dir
from ..errors import DeepLungRegError
from ..io.weights import load_torch_file
from .unet import UNet

#: The shipped feature network (package data, see :mod:`DeepLungRegLib.data`).
DEFAULT_WEIGHTS = weights_dir() / "mindnet.pt"


class MindNet(nn.Module):
    """``(N, 1, Z, Y, X)`` windowed CT -> ``(N, 12, Z, Y, X)`` MIND-like descriptors in ``[0, 1]``.

    A U-Net (:class:`~DeepLungRegLib.networks.UNet`) with three resolution levels
    (3 encoder blocks, 2 decoder blocks), ``base`` filters doubling, and a sigmoid
    on its 12 outputs. Any input size: it is padded (replicate) to a multiple of 4
    and cropped back.
    """

    def __init__(self, base: int = 8, channels: int = 12):
        super().__init__()
        self.base, self.channels = base, channels
        self.unet = UNet(in_channels=1, out_channels=channels, base=base, levels=3, dims=3)
        # UNet starts its head at zero (the identity for a displacement); descriptors learn far
        # faster from torch's default random start.
        self.unet.head.reset_parameters()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 5 or image.shape[1] != 1:
            raise DeepLungRegError(f"MindNet: image must be (N, 1, Z, Y, X), got {tuple(image.shape)}")
        z, y, x = image.shape[2:]
        pad = [(-s) % 4 for s in (x, y, z)]
        padded = F.pad(image, (0, pad[0], 0, pad[1], 0, pad[2]), mode="replicate") if any(pad) else image
        return torch.sigmoid(self.unet(padded))[:, :, :z, :y, :x]


def load_feature_net(path: str | Path | None = None, device: torch.device | str = "cpu") -> MindNet:
    """The feature network stored at ``path`` (default: the shipped ``data/weights/mindnet.pt``), in eval mode."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    if not path.is_file():
        raise DeepLungRegError(f"feature network weights {path} do not exist; train them with `deeplungreg train-features`")
    ck = load_torch_file(path, device, owner="feature network")
    try:
        net = MindNet(**ck["config"])
        net.load_state_dict(ck["model"])
    except Exception as exc:  # a foreign or truncated file
        raise DeepLungRegError(f"{path} is not a DeepLungReg feature network ({exc})") from exc
    return net.to(device).eval()


def cnn_descriptor(net: MindNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """A descriptor function ``(N, 1, Z, Y, X) -> (N, 12, Z, Y, X)`` (no gradients) in the network's dtype."""
    def describe(image: torch.Tensor) -> torch.Tensor:
        p = next(net.parameters())
        with torch.no_grad():
            return net(image.to(p.device, p.dtype)).to(image.dtype)
    return describe
