"""mlVIRNET (paper 002, Hering et al.): one U-Net per level of an image pyramid,
composed coarse to fine.

- **Pyramid**: level ``l`` is the input low-pass filtered and subsampled by
  ``2^l`` (repeated 2x2(x2) averaging, i.e. a box low-pass with stride 2).
- **Levels**: on the coarsest level the U-Net sees the fixed and moving images;
  on every finer level it sees the fixed image and the moving image warped by
  the composition of all coarser results, and predicts a correction.
- **Composition**: with ``Y`` the coarser map, the level's map ``z`` is applied
  first: ``x -> Y(z(x))``, i.e. ``u(x) = u_z(x) + u_Y(x + u_z(x))``, because the
  network registered the fixed image to ``M o Y``. (The paper writes the result
  as ``y_1 o y_2 o ... o y_L``; this is the order that its Algorithm 1, warping
  the moving image by the coarser levels, produces.)
- **Progressive training**: :meth:`MLVIRNet.train_level` freezes the coarser
  networks and initialises the level's network from the next coarser one.

Displacements are in voxels of the input grid, channels in array-axis order
(``(z, y, x)`` in 3D, ``(y, x)`` in 2D).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DeepLungRegError
from ..losses import curvature, ngf
from ..transforms.warp import as_coordinates, sample_at_voxels
from .config import scaled_width
from .registry import NetworkSpec, register_network
from .unet import UNet


def identity_grid(shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(1, D, *shape)`` voxel positions of the identity map."""
    axes = torch.meshgrid(*(torch.arange(n, device=device, dtype=dtype) for n in shape), indexing="ij")
    return torch.stack(axes)[None]


def warp_voxels(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """``image(x + u(x))`` for ``image (N, C, *S)`` and ``u (N, D, *S)`` in voxels (positions in float32 at least,
    also under autocast)."""
    with torch.autocast(image.device.type, enabled=False):
        u = as_coordinates(displacement)
        return sample_at_voxels(image, identity_grid(tuple(image.shape[2:]), image.device, u.dtype) + u)


def compose_displacements(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Displacement of ``x -> T(F(x))`` from those of ``F`` (``first``) and ``T`` (``then``), both ``(N, D, *S)`` voxels."""
    return first + warp_voxels(then, first)


def downsample(image: torch.Tensor, times: int) -> torch.Tensor:
    """Low-pass and subsample by 2, ``times`` times (2D or 3D)."""
    pool = F.avg_pool3d if image.ndim == 5 else F.avg_pool2d
    for _ in range(times):
        image = pool(image, 2, stride=2)
    return image


def upsample_displacement(disp: torch.Tensor, shape: tuple[int, ...], factor: int) -> torch.Tensor:
    """A level's displacement ``(N, D, *s)`` in its own voxels -> ``(N, D, *shape)`` in input voxels."""
    if factor == 1:
        return disp
    mode = "trilinear" if disp.ndim == 5 else "bilinear"
    # cell-centred levels (averaging pyramid): align_corners=False puts the cells where they belong
    return F.interpolate(disp, size=shape, mode=mode, align_corners=False) * factor


class MLVIRNet(nn.Module):
    """Multilevel registration network.

    Args:
        levels: pyramid levels (paper: 3).
        base, unet_levels: of each level's :class:`UNet` (paper: 16 filters, 3 levels).
        dims: 2 or 3.
    """

    def __init__(self, levels: int = 3, base: int = 16, unet_levels: int = 3, dims: int = 3):
        super().__init__()
        if levels < 1:
            raise DeepLungRegError(f"MLVIRNet: levels must be >= 1, got {levels}")
        self.levels, self.dims = levels, dims
        # batch norm on one pair per step: each input's own statistics, in training and at inference
        self.nets = nn.ModuleList([UNet(2, dims, base, unet_levels, dims, running_stats=False) for _ in range(levels)])  # 0 = finest

    @property
    def divisor(self) -> int:
        """Every input size must be a multiple of this."""
        return 2 ** (self.levels - 1) * 2 ** (self.nets[0].levels - 1)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, finest: int = 0,
                coarse_jitter: float = 0.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Register ``moving`` to ``fixed`` (both ``(N, 1, *S)`` on one grid).

        Args:
            finest: stop after this level (0: all levels; used while training coarser levels).
            coarse_jitter: training only: before level ``finest`` runs, scale the coarser levels' total
                displacement by a random factor in ``[1 - j, 1 + j]`` (one per pair), so that the level
                learns to correct coarse errors of that size. On its training anatomies the coarser
                levels are nearly right, and a finer level trained without it learns only small
                corrections; on unseen anatomy the coarse error is larger. 0 (the default) is the paper.

        Returns:
            The total displacement ``(N, D, *S)`` in input voxels and the per-level
            corrections (coarsest first), also in input voxels.
        """
        if fixed.shape != moving.shape or fixed.ndim != self.dims + 2 or fixed.shape[1] != 1:
            raise DeepLungRegError(f"MLVIRNet: fixed and moving must both be (N, 1, *S) in {self.dims}D, got {tuple(fixed.shape)} and {tuple(moving.shape)}")
        if any(s % self.divisor for s in fixed.shape[2:]):
            raise DeepLungRegError(f"MLVIRNet: every input size must be a multiple of {self.divisor}, got {tuple(fixed.shape[2:])}")
        if not 0 <= finest < self.levels:
            raise DeepLungRegError(f"MLVIRNet: finest must be in [0, {self.levels - 1}], got {finest}")
        if not 0 <= coarse_jitter < 1:
            raise DeepLungRegError(f"MLVIRNet: coarse_jitter must be in [0, 1), got {coarse_jitter}")
        shape = tuple(fixed.shape[2:])
        total = torch.zeros((fixed.shape[0], self.dims, *shape), device=fixed.device, dtype=fixed.dtype)
        corrections = []
        for lv in range(self.levels - 1, finest - 1, -1):
            if lv == finest and lv < self.levels - 1 and coarse_jitter > 0:
                factor = 1 + coarse_jitter * (2 * torch.rand((fixed.shape[0],) + (1,) * (self.dims + 1), device=fixed.device) - 1)
                total = total * factor.to(total.dtype)
            warped = moving if lv == self.levels - 1 else warp_voxels(moving, total)
            z = self.nets[lv](torch.cat([downsample(fixed, lv), downsample(warped, lv)], 1))
            z = upsample_displacement(z, shape, 2 ** lv)
            corrections.append(z)
            total = z if lv == self.levels - 1 else compose_displacements(z, total)
        return total, corrections

    def train_level(self, level: int, initialise: bool = True) -> list[nn.Parameter]:
        """Prepare progressive training of ``level``: freeze the other networks, initialise this one
        from the next coarser one (the coarsest keeps its own initialisation; ``initialise=False`` keeps
        its own weights, to resume or fine-tune) and return its parameters."""
        if not 0 <= level < self.levels:
            raise DeepLungRegError(f"MLVIRNet: level must be in [0, {self.levels - 1}], got {level}")
        for lv, net in enumerate(self.nets):
            for p in net.parameters():
                p.requires_grad_(lv == level)
            if lv > level:
                net.eval()  # frozen batch-norm statistics
        if initialise and level < self.levels - 1:
            self.nets[level].load_state_dict(self.nets[level + 1].state_dict())
        return list(self.nets[level].parameters())


# ------------------------------------------------------------------ registry
def _build(cfg):
    return MLVIRNet(levels=cfg.levels, base=scaled_width(16, cfg.width))


def _predict(model, cfg, fixed, moving):
    return model(fixed, moving)[0]


def _paper_loss(model, cfg, pair, level):
    f, m = pair.fixed, pair.moving
    disp, _ = model(f, m, finest=level, coarse_jitter=cfg.coarse_jitter)
    sim = ngf(f, warp_voxels(m, disp), eps=cfg.ngf_eps)
    reg = curvature(disp)
    loss = sim + cfg.alpha * reg
    parts = {"ngf": float(sim.detach()), "curvature": float(reg.detach())}
    if cfg.beta > 0 and pair.fixed_mask is not None and pair.moving_mask is not None:
        mask_term = 0.5 * (warp_voxels(pair.moving_mask, disp) - pair.fixed_mask).pow(2).mean()
        loss = loss + cfg.beta * mask_term
        parts["mask"] = float(mask_term.detach())
    return loss, parts, [disp]


def _freeze(model, level):
    for lv in range(level + 1, len(model.nets)):
        model.nets[lv].eval()


register_network(NetworkSpec(
    "mlvirnet", "Multilevel U-Nets composed coarse to fine, trained level by level with NGF + curvature + mask (paper 002)",
    build=_build, predict=_predict, paper_loss=_paper_loss, own_options=frozenset({"coarse_jitter"}),
    levels=lambda cfg: cfg.levels, trainable=lambda model, level, initialise: model.train_level(level, initialise=initialise),
    freeze=_freeze))
