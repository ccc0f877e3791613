"""The U-Net of paper 002 (mlVIRNET), in 2D or 3D.

Three resolution levels with 16 filters doubling after each downsampling; each
step is a 3x3(x3) convolution, batch norm and ReLU; 2x2(x2) average pooling
down, transposed convolutions up (halving the features), skip connections by
concatenation, and a final 1x1(x1) convolution to one displacement component
per spatial axis. The final convolution starts at zero, so an untrained
network predicts the identity.

Batch norm and batch size 1: the registration networks train on one pair per
step, so in training every batch norm normalises with the statistics of that
one image. With ``running_stats=False`` it does the same at inference, instead
of using running averages over the training images, which describe no single
image and were found to cost most of the accuracy on new pairs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import DeepLungRegError


def _layers(dims: int):
    if dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.AvgPool3d
    if dims == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.AvgPool2d
    raise DeepLungRegError(f"UNet: dims must be 2 or 3, got {dims}")


class ConvBlock(nn.Module):
    """Convolution (kernel 3), batch norm, ReLU. ``running_stats=False``: batch statistics at inference too."""

    def __init__(self, cin: int, cout: int, dims: int = 3, running_stats: bool = True):
        super().__init__()
        conv, _, bn, _ = _layers(dims)
        self.body = nn.Sequential(conv(cin, cout, 3, padding=1), bn(cout, track_running_stats=running_stats), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    """Paper 002's U-Net.

    Args:
        in_channels: input channels (2: fixed and moving).
        out_channels: output channels (default: one per spatial axis).
        base: filters of the first level (doubled at each level).
        levels: resolution levels (the input size must be divisible by ``2^(levels - 1)``).
        dims: 2 or 3.
        running_stats: batch norm keeps running statistics for inference (False: each input's own).
    """

    def __init__(self, in_channels: int = 2, out_channels: int | None = None, base: int = 16, levels: int = 3, dims: int = 3,
                 running_stats: bool = True):
        super().__init__()
        conv, convt, _, pool = _layers(dims)
        if levels < 1:
            raise DeepLungRegError(f"UNet: levels must be >= 1, got {levels}")
        self.dims, self.levels = dims, levels
        widths = [base * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(ConvBlock(cin, w, dims, running_stats))
            cin = w
        self.pool = pool(2, stride=2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_hi, w_lo in zip(widths[::-1][:-1], widths[::-1][1:]):
            self.up.append(convt(w_hi, w_lo, 2, stride=2))
            self.merge.append(ConvBlock(2 * w_lo, w_lo, dims, running_stats))
        self.head = conv(widths[0], out_channels or dims, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, *S) -> (N, C_out, *S)``."""
        if x.ndim != self.dims + 2:
            raise DeepLungRegError(f"UNet: expected a {self.dims}D batch (N, C, {'Z, ' if self.dims == 3 else ''}Y, X), got {tuple(x.shape)}")
        f = 2 ** (self.levels - 1)
        if any(s % f for s in x.shape[2:]):
            raise DeepLungRegError(f"UNet: every spatial size must be divisible by {f}, got {tuple(x.shape[2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[::-1][1:]):
            x = merge(torch.cat([up(x), skip], 1))
        return self.head(x)
