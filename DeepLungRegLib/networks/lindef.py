"""The coupled affine + deformable network of paper 001 (Christodoulidis et al.).

- **Encoder**: five 3x3x3 convolutions with dilations 1, 1, 2, 3, 5 (a 25^3
  receptive field), instance norm and LeakyReLU, at full resolution; the
  outputs of all five and the input pair are concatenated (2 + 32 + 4 * 64 =
  290 features in the paper's widths).
- **Deformable branch**: a squeeze-and-excitation block weighs the features;
  two convolutions predict spatial gradients ``Phi = 2 sigmoid(.)`` in
  ``[0, 2]`` along each axis (kept ``min_gradient`` away from 0 and 2, because in
  float32 a saturated sigmoid reaches 0 and two positions would coincide). A cumulative sum along each axis turns them into
  sampling positions that increase strictly along every grid line, so the
  deformation cannot cross itself along an axis (``Phi = 1``: identity).
- **Affine branch**: global average pooling and one linear layer give a 3x4
  matrix ``A`` acting on voxel positions about the grid centre (``A_I`` the identity).
- **Composition** (paper eq. 3): ``W(S, G) = W(W(S, G_N), G_A)``, i.e. the
  output at ``p`` samples the moving image at ``G_N(G_A(p))``.

All positions here are voxel indices of the network's input grid, channels in
``(z, y, x)`` order; :mod:`DeepLungRegLib.transforms.warp` does the sampling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import DeepLungRegError
from ..losses import local_ncc_distance, ngf
from ..transforms.warp import as_coordinates, sample_at_voxels
from .config import scaled_width
from .registry import NetworkSpec, register_network


class SqueezeExcitation3d(nn.Module):
    """Channel weights from global average pooling through a bottleneck (Hu et al.)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3, 4)))
        return x * w[:, :, None, None, None]


def _conv(cin: int, cout: int, dilation: int = 1, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, 3, padding=dilation, dilation=dilation)]
    if norm:
        layers.append(nn.InstanceNorm3d(cout, affine=True))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def integrate_gradients(phi: torch.Tensor) -> torch.Tensor:
    """Sampling positions from spatial gradients by a cumulative sum along each axis.

    Args:
        phi: ``(N, 3, Z, Y, X)`` positive gradients along ``(z, y, x)``.

    Returns:
        ``(N, 3, Z, Y, X)`` voxel positions; ``phi = 1`` gives the identity grid.
    """
    if phi.ndim != 5 or phi.shape[1] != 3:
        raise DeepLungRegError(f"integrate_gradients: phi must be (N, 3, Z, Y, X), got {tuple(phi.shape)}")
    return torch.stack([phi[:, 0].cumsum(1), phi[:, 1].cumsum(2), phi[:, 2].cumsum(3)], dim=1) - 1.0


def identity_positions(shape: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(1, 3, Z, Y, X)`` voxel positions of the identity map."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, device=device, dtype=dtype) for n in shape), indexing="ij")
    return torch.stack([zz, yy, xx])[None]


def affine_positions(matrix: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Positions ``A [p - c; 1] + c`` for a batch of 3x4 matrices ``(N, 3, 4)`` acting about the grid centre ``c``.

    Returns:
        ``(N, 3, Z, Y, X)`` voxel positions.
    """
    ident = identity_positions(shape, matrix.device, matrix.dtype)
    c = torch.tensor([(n - 1) / 2.0 for n in shape], device=matrix.device, dtype=matrix.dtype).view(1, 3, 1, 1, 1)
    p = (ident - c).flatten(2)  # (1, 3, V)
    out = matrix[:, :, :3] @ p + matrix[:, :, 3:]  # (N, 3, V)
    return out.view(matrix.shape[0], 3, *shape) + c


def compose_positions(deformable: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``G_N(G_A(p))``: the deformable positions sampled at the affine positions (both ``(N, 3, Z, Y, X)``)."""
    return sample_at_voxels(deformable, affine, padding="border")


class LinDefNet(nn.Module):
    """Paper 001's network: encoder, deformable (spatial-gradient) branch and affine branch.

    Args:
        widths: output channels of the five encoder convolutions (paper: 32, 64, 64, 64, 64).
        dilations: their dilations (paper: 1, 1, 2, 3, 5).
        decoder_width: channels of the deformable branch's hidden convolution.
        affine: predict the affine part (False: deformable only, ``A = A_I``).
        min_gradient: ``Phi`` lies in ``[min_gradient, 2 - min_gradient]``.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 64, 64, 64), dilations: tuple[int, ...] = (1, 1, 2, 3, 5),
                 decoder_width: int = 32, affine: bool = True, min_gradient: float = 0.01):
        super().__init__()
        if not 0.0 < min_gradient < 1.0:
            raise DeepLungRegError(f"LinDefNet: min_gradient must be in (0, 1), got {min_gradient}")
        self.min_gradient = float(min_gradient)
        if len(widths) != len(dilations) or not widths:
            raise DeepLungRegError("LinDefNet: widths and dilations must be non-empty and of equal length")
        self.encoder = nn.ModuleList()
        cin = 2
        for w, d in zip(widths, dilations):
            self.encoder.append(_conv(cin, w, d))
            cin = w
        merged = 2 + sum(widths)
        self.se = SqueezeExcitation3d(merged)
        self.deformable = nn.Sequential(_conv(merged, decoder_width), nn.Conv3d(decoder_width, 3, 3, padding=1))
        self.use_affine = affine
        self.affine = nn.Linear(merged, 12)
        # start at the identity: Phi = 2 sigmoid(0) = 1 and A = A_I
        nn.init.zeros_(self.deformable[-1].weight)
        nn.init.zeros_(self.deformable[-1].bias)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.copy_(torch.eye(3, 4).reshape(-1))

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the spatial gradients and the affine matrix.

        Args:
            fixed, moving: ``(N, 1, Z, Y, X)`` images on the same grid.

        Returns:
            ``phi (N, 3, Z, Y, X)`` in ``[min_gradient, 2 - min_gradient]`` and ``A (N, 3, 4)``.
        """
        if fixed.shape != moving.shape or fixed.ndim != 5 or fixed.shape[1] != 1:
            raise DeepLungRegError(f"LinDefNet: fixed and moving must both be (N, 1, Z, Y, X), got {tuple(fixed.shape)} and {tuple(moving.shape)}")
        x = torch.cat([fixed, moving], 1)
        feats = [x]
        for layer in self.encoder:
            x = layer(x)
            feats.append(x)
        merged = torch.cat(feats, 1)
        m = self.min_gradient
        phi = m + (2.0 - 2.0 * m) * torch.sigmoid(self.deformable(self.se(merged)))  # 1 where the logit is 0
        if self.use_affine:
            a = self.affine(merged.mean(dim=(2, 3, 4))).view(-1, 3, 4)
        else:
            a = torch.eye(3, 4, device=x.device, dtype=x.dtype).expand(x.shape[0], 3, 4)
        return phi, a

    def positions(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(positions G_N(G_A(p)), phi, A)``; positions are ``(N, 3, Z, Y, X)`` voxels of the input grid."""
        phi, a = self(fixed, moving)
        shape = tuple(fixed.shape[2:])
        with torch.autocast(fixed.device.type, enabled=False):  # positions in float32 at least, also under autocast
            pos = compose_positions(integrate_gradients(as_coordinates(phi)), affine_positions(as_coordinates(a), shape))
        return pos, phi, a


def lindef_loss(fixed: torch.Tensor, warped: torch.Tensor, phi: torch.Tensor, a: torch.Tensor,
                alpha: float = 1e-6, beta: float = 1e-6, similarity: str = "mse", ngf_eps: float = 0.05) -> torch.Tensor:
    """Paper 001's loss: ``D(R, W(S, G)) + alpha ||A - A_I||_1 + beta ||Phi - Phi_I||_1`` (sums, as written).

    Args:
        fixed, warped: ``(N, 1, Z, Y, X)`` images R and W(S, G).
        phi: ``(N, 3, Z, Y, X)`` spatial gradients; a: ``(N, 3, 4)`` affine matrices.
        similarity: the per-voxel data term D, summed over voxels: ``"mse"`` (the paper's
            ``||R - W(S, G)||^2``), ``"ncc"`` (``1 -`` local NCC, 9^3 windows) or ``"ngf"``
            (``1 -`` squared NGF cosine, edge parameter ``ngf_eps``), the options the paper names.
    """
    if similarity == "mse":
        data = (fixed - warped).pow(2).sum()
    elif similarity == "ncc":
        data = local_ncc_distance(fixed, warped) * fixed.numel()
    elif similarity == "ngf":
        data = ngf(fixed, warped, eps=ngf_eps) * fixed.numel()
    else:
        raise DeepLungRegError(f"lindef_loss: similarity must be 'mse', 'ncc' or 'ngf', got {similarity!r}")
    eye = torch.eye(3, 4, device=a.device, dtype=a.dtype)
    return data + alpha * (a - eye).abs().sum() + beta * (phi - 1.0).abs().sum()


# ------------------------------------------------------------------ registry
def _build(cfg):
    return LinDefNet(widths=tuple(scaled_width(n, cfg.width) for n in (32, 64, 64, 64, 64)), decoder_width=scaled_width(32, cfg.width))


def _predict(model, cfg, fixed, moving):
    pos, _, _ = model.positions(fixed, moving)
    return pos - identity_positions(tuple(fixed.shape[2:]), fixed.device, fixed.dtype)


def _paper_loss(model, cfg, pair, level):
    f, m = pair.fixed, pair.moving
    pos, phi, a = model.positions(f, m)
    warped = sample_at_voxels(m, pos)
    loss = lindef_loss(f, warped, phi, a, alpha=cfg.alpha * 1e-6, beta=cfg.beta * 1e-6, similarity=cfg.similarity, ngf_eps=cfg.ngf_eps)
    disp = pos - identity_positions(tuple(f.shape[2:]), f.device, f.dtype)
    return loss, {"mse": float((f - warped).pow(2).mean().detach())}, [disp]


register_network(NetworkSpec(
    "lindef", "Coupled affine + deformable CNN with non-folding spatial-gradient integration (paper 001)",
    build=_build, predict=_predict, paper_loss=_paper_loss, own_options=frozenset({"similarity"})))
