"""The label-driven network of paper 004 (Hering, Kuckertz et al.), in 2D or 3D.

- **Two weight-shared streams**: the same encoder processes the fixed and the
  moving image separately; at every scale their features are concatenated for
  the skip connections and the bottleneck.
- **Decoder** with outputs at three resolutions: each output is a grid of
  B-spline control-point displacements, turned into a dense field by a cubic
  B-spline transformer (a separable transposed convolution with the B-spline
  kernel). During training the loss is taken on all three fields; at inference
  only the finest is used.
- **Loss** (paper eq. 1): ``delta NGF + alpha curvature + beta label SSD`` on
  one-hot labels (:func:`labeldriven_loss`).

Displacements are in voxels of the input grid, channels in array-axis order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DeepLungRegError
from ..losses import curvature, ngf
from .config import scaled_width
from .mlvirnet import warp_voxels
from .registry import NetworkSpec, register_network
from .unet import ConvBlock, _layers


def bspline_kernel(spacing: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Cubic B-spline weights ``B((j - 2 s) / s)`` for ``j = 0 .. 4 s - 1`` (1D, length ``4 s``)."""
    t = (torch.arange(4 * spacing, dtype=torch.float64) - 2 * spacing).abs() / spacing
    w = torch.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, torch.zeros_like(t)))
    return w.to(device=device, dtype=dtype)


def control_grid_size(n: int, spacing: int) -> int:
    """Control points along an axis of ``n`` voxels at ``spacing``: one before and two after the domain."""
    return -(-n // spacing) + 3


def bspline_dense(coefficients: torch.Tensor, spacing: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Cubic B-spline interpolation of control-point coefficients.

    Control point ``k`` along an axis sits at voxel ``(k - 1) * spacing``.

    Args:
        coefficients: ``(N, C, *K)`` with ``K = ceil(shape / spacing) + 3`` per axis.
        spacing: control-point spacing in voxels.
        shape: the dense output size ``S``.

    Returns:
        ``(N, C, *S)``: ``sum_k c_k B((x - x_k) / spacing)`` per axis.
    """
    dims = coefficients.ndim - 2
    if len(shape) != dims:
        raise DeepLungRegError(f"bspline_dense: shape {shape} does not match {dims}D coefficients")
    for n, k in zip(shape, coefficients.shape[2:]):
        if k != control_grid_size(n, spacing):
            raise DeepLungRegError(f"bspline_dense: {k} control points cannot cover {n} voxels at spacing {spacing}; need {control_grid_size(n, spacing)}")
    w = bspline_kernel(spacing, coefficients.dtype, coefficients.device)
    out = coefficients
    n_ch = coefficients.shape[1]
    convt = F.conv_transpose3d if dims == 3 else F.conv_transpose2d
    for d in range(dims):
        ksize = [1] * dims
        ksize[d] = 4 * spacing
        stride = [1] * dims
        stride[d] = spacing
        kernel = w.view(1, 1, *ksize).repeat(n_ch, 1, *([1] * dims))
        out = convt(out, kernel, stride=stride, groups=n_ch)
        # out[t] = sum_k c_k B((t - k s - 2 s) / s): control point k lands at t = (k + 2) s, i.e. x = (k - 1) s for x = t - 3 s
        out = out.narrow(2 + d, 3 * spacing, shape[d])
    return out


class LabelDrivenNet(nn.Module):
    """Paper 004's network.

    Args:
        widths: encoder channels per scale (one stream; scale ``i`` has stride ``2^i``).
        output_strides: control-point spacings of the three outputs, coarse to fine
            (each a power of two present among the scales).
        dims: 2 or 3.

    Batch norm uses each input's own statistics, in training and at inference (see :mod:`.unet`).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32, 64, 64), output_strides: tuple[int, ...] = (16, 8, 4), dims: int = 3):
        super().__init__()
        conv, convt, _, pool = _layers(dims)
        self.dims = dims
        self.scales = len(widths)
        strides = [2 ** i for i in range(self.scales)]
        for s in output_strides:
            if s not in strides:
                raise DeepLungRegError(f"LabelDrivenNet: output stride {s} is not one of the scales {strides}")
        if list(output_strides) != sorted(output_strides, reverse=True):
            raise DeepLungRegError("LabelDrivenNet: output_strides must go from coarse to fine")
        self.output_strides = tuple(output_strides)
        self.encoder = nn.ModuleList()
        cin = 1
        for w in widths:
            self.encoder.append(nn.Sequential(ConvBlock(cin, w, dims, running_stats=False), ConvBlock(w, w, dims, running_stats=False)))
            cin = w
        self.pool = pool(2, stride=2)
        # decoder from the coarsest scale up to the finest output
        self.up, self.merge = nn.ModuleList(), nn.ModuleList()
        self.heads = nn.ModuleDict()
        ch = 2 * widths[-1]
        for i in range(self.scales - 1, 0, -1):
            stride_out = 2 ** i
            if stride_out in self.output_strides:
                self.heads[str(stride_out)] = conv(ch, dims, 3, padding=1)
            if stride_out <= min(self.output_strides):
                break
            self.up.append(convt(ch, widths[i - 1], 2, stride=2))
            self.merge.append(ConvBlock(widths[i - 1] + 2 * widths[i - 1], widths[i - 1], dims, running_stats=False))
            ch = widths[i - 1]
        if 1 in self.output_strides:
            self.heads["1"] = conv(ch, dims, 3, padding=1)
        for h in self.heads.values():
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)

    @property
    def divisor(self) -> int:
        return 2 ** (self.scales - 1)

    def _stream(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> list[torch.Tensor]:
        """Dense displacements ``(N, D, *S)`` in input voxels, one per output, coarse to fine (the last is the result)."""
        if fixed.shape != moving.shape or fixed.ndim != self.dims + 2 or fixed.shape[1] != 1:
            raise DeepLungRegError(f"LabelDrivenNet: fixed and moving must both be (N, 1, *S) in {self.dims}D, got {tuple(fixed.shape)} and {tuple(moving.shape)}")
        if any(s % self.divisor for s in fixed.shape[2:]):
            raise DeepLungRegError(f"LabelDrivenNet: every input size must be a multiple of {self.divisor}, got {tuple(fixed.shape[2:])}")
        shape = tuple(fixed.shape[2:])
        ff, mf = self._stream(fixed), self._stream(moving)  # the same weights on both streams
        x = torch.cat([ff[-1], mf[-1]], 1)
        outs = []
        k = 0
        for i in range(self.scales - 1, -1, -1):
            stride = 2 ** i
            if str(stride) in self.heads:
                coeff = self.heads[str(stride)](x)
                coeff = F.pad(coeff, (1, 2) * self.dims, mode="replicate")  # control points around the domain
                outs.append(bspline_dense(coeff, stride, shape) * stride)  # coefficients are in voxels of their scale
            if i == 0 or stride <= min(self.output_strides):
                break
            x = self.merge[k](torch.cat([self.up[k](x), ff[i - 1], mf[i - 1]], 1))
            k += 1
        return outs


def labeldriven_loss(fixed: torch.Tensor, moving: torch.Tensor, fixed_labels: torch.Tensor | None, moving_labels: torch.Tensor | None,
                     fields: list[torch.Tensor], delta: float = 1.0, alpha: float = 1.0, beta: float = 1.0,
                     eps: float = 0.1, level_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Paper 004's loss summed over the output fields: ``delta NGF + alpha curvature + beta SSD(one-hot labels) / 2``.

    Args:
        fixed, moving: ``(N, 1, *S)`` images.
        fixed_labels, moving_labels: ``(N, L, *S)`` one-hot labels, or None (then the label term is dropped).
        fields: displacements ``(N, D, *S)`` in voxels, coarse to fine.
        level_weights: weight of each field's loss (default: all 1).
    """
    level_weights = level_weights or (1.0,) * len(fields)
    if len(level_weights) != len(fields):
        raise DeepLungRegError(f"labeldriven_loss: {len(level_weights)} level weights for {len(fields)} fields")
    total = fixed.new_zeros(())
    for w, u in zip(level_weights, fields):
        term = delta * ngf(fixed, warp_voxels(moving, u), eps=eps) + alpha * curvature(u)
        if beta > 0 and fixed_labels is not None and moving_labels is not None:
            term = term + beta * 0.5 * (warp_voxels(moving_labels, u) - fixed_labels).pow(2).sum(1).mean()
        total = total + w * term
    return total


# ------------------------------------------------------------------ registry
def _build(cfg):
    return LabelDrivenNet(widths=tuple(scaled_width(n, cfg.width) for n in (16, 32, 32, 64, 64)))


def _predict(model, cfg, fixed, moving):
    return model(fixed, moving)[-1]


def _one_hot(mask):
    return None if mask is None else torch.cat([1 - mask, mask], 1)


def _paper_loss(model, cfg, pair, level):
    f, m = pair.fixed, pair.moving
    fields = model(f, m)
    loss = labeldriven_loss(f, m, _one_hot(pair.fixed_mask), _one_hot(pair.moving_mask), fields, alpha=cfg.alpha, beta=cfg.beta,
                            eps=cfg.ngf_eps)
    return loss, {"ngf_finest": float(ngf(f, warp_voxels(m, fields[-1].detach()), eps=cfg.ngf_eps))}, fields


register_network(NetworkSpec(
    "labeldriven", "Label-driven U-Net with B-spline outputs, trained with NGF + curvature + lung labels (paper 004)",
    build=_build, predict=_predict, paper_loss=_paper_loss))
