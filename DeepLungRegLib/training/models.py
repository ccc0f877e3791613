"""The three trainable methods behind one interface: build the network from a
:class:`NetworkConfig`, predict a displacement, and compute the training loss."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import DeepLungRegError
from ..losses import curvature, ngf
from ..networks import LabelDrivenNet, LinDefNet, MLVIRNet, identity_positions, labeldriven_loss, lindef_loss, warp_voxels
from ..transforms.warp import sample_at_voxels
from .data import NetworkPair

NETWORK_METHODS = ("labeldriven", "lindef", "mlvirnet")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild and train a network; stored in every checkpoint.

    Attributes:
        method: ``lindef``, ``mlvirnet`` or ``labeldriven``.
        spacing_mm: voxel size of the network grid.
        shape: network grid ``(Z, Y, X)`` (multiples of 16).
        width: channel scale (1: the papers' widths; 0.25 for CPU).
        levels: pyramid levels of ``mlvirnet`` (the paper: 3).
        alpha: curvature weight (``mlvirnet``, ``labeldriven``) or ``||A - A_I||_1`` weight (``lindef``).
        beta: lung-mask SSD weight (``mlvirnet``, ``labeldriven``) or ``||Phi - Phi_I||_1`` weight (``lindef``).
        ngf_eps: NGF edge parameter.
        similarity: ``lindef``'s data term: ``"mse"`` (the paper's, the default), ``"ncc"`` or
            ``"ngf"``. ``mlvirnet`` and ``labeldriven`` use NGF, as in their papers.
        learning_rate: Adam step.
        supervision: weight of the synthetic-supervision term, the mean end-point error (network
            voxels) between the predicted and the simulator's displacement (the talk's "synthetic
            supervision"; Eppenhof and Pluim). 0, the default, trains with the paper's loss only.
            A pair without a known displacement skips the term.
        coarse_jitter: ``mlvirnet`` only: while a finer level trains, the frozen coarser levels'
            displacement is scaled by a random factor in ``[1 - j, 1 + j]``, so that the level learns
            to correct coarse errors (see :meth:`MLVIRNet.forward`). 0, the default, is the paper.
    """

    method: str = "mlvirnet"
    spacing_mm: float = 4.0
    shape: tuple[int, int, int] = (64, 64, 64)
    width: float = 0.5
    levels: int = 3
    alpha: float = 1.0
    beta: float = 1.0
    ngf_eps: float = 0.05
    learning_rate: float = 1e-3
    similarity: str = "mse"
    supervision: float = 0.0
    coarse_jitter: float = 0.0

    def __post_init__(self):
        if self.method not in NETWORK_METHODS:
            raise DeepLungRegError(f"NetworkConfig: method must be one of {', '.join(NETWORK_METHODS)}, got {self.method!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.shape) != 3 or any(s < 16 or s % 16 for s in self.shape) or max(self.shape) > 256:
            raise DeepLungRegError(f"NetworkConfig: shape must be 3 multiples of 16 between 16 and 256, got {self.shape}")
        if not 0.5 <= self.spacing_mm <= 16:
            raise DeepLungRegError(f"NetworkConfig: spacing_mm must be between 0.5 and 16, got {self.spacing_mm}")
        if not 0.05 <= self.width <= 4:
            raise DeepLungRegError(f"NetworkConfig: width must be between 0.05 and 4, got {self.width}")
        if not 1 <= self.levels <= 4:
            raise DeepLungRegError(f"NetworkConfig: levels must be between 1 and 4, got {self.levels}")
        for name in ("alpha", "beta"):
            if not 0 <= getattr(self, name) <= 1e7:
                raise DeepLungRegError(f"NetworkConfig: {name} must be between 0 and 1e7, got {getattr(self, name)}")
        if self.similarity not in ("mse", "ncc", "ngf"):
            raise DeepLungRegError(f"NetworkConfig: similarity must be 'mse', 'ncc' or 'ngf', got {self.similarity!r}")
        if self.method != "lindef" and self.similarity != "mse":
            raise DeepLungRegError(f"NetworkConfig: similarity applies to lindef only; {self.method} trains with NGF (its paper's loss)")
        if not 0 <= self.supervision <= 1e3:
            raise DeepLungRegError(f"NetworkConfig: supervision must be between 0 and 1000, got {self.supervision}")
        if not 0 <= self.coarse_jitter < 1:
            raise DeepLungRegError(f"NetworkConfig: coarse_jitter must be in [0, 1), got {self.coarse_jitter}")
        if self.method != "mlvirnet" and self.coarse_jitter:
            raise DeepLungRegError(f"NetworkConfig: coarse_jitter applies to mlvirnet only, not {self.method}")
        if not 1e-6 <= self.learning_rate <= 1:
            raise DeepLungRegError(f"NetworkConfig: learning_rate must be between 1e-6 and 1, got {self.learning_rate}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DeepLungRegError(f"NetworkConfig: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)


def _w(n: int, width: float) -> int:
    return max(2, int(round(n * width)))


def build_network(cfg: NetworkConfig) -> torch.nn.Module:
    """The network of ``cfg.method`` at ``cfg.width`` times the paper's channel counts."""
    if cfg.method == "lindef":
        return LinDefNet(widths=tuple(_w(n, cfg.width) for n in (32, 64, 64, 64, 64)), decoder_width=_w(32, cfg.width))
    if cfg.method == "mlvirnet":
        return MLVIRNet(levels=cfg.levels, base=_w(16, cfg.width))
    return LabelDrivenNet(widths=tuple(_w(n, cfg.width) for n in (16, 32, 32, 64, 64)))


def load_network_state(model: torch.nn.Module, state: dict) -> None:
    """Load trained weights into ``model``. Batch-norm running statistics that the model no longer keeps
    (weights trained before ``mlvirnet`` and ``labeldriven`` normalised with each input's own statistics)
    are dropped; anything else that does not match is an error."""
    own = model.state_dict()
    stale = ("running_mean", "running_var", "num_batches_tracked")
    model.load_state_dict({k: v for k, v in state.items() if k in own or not k.endswith(stale)})


def predict(model: torch.nn.Module, cfg: NetworkConfig, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Displacement ``(N, 3, Z, Y, X)`` in network voxels ``(z, y, x)``: ``x -> x + u(x)`` maps fixed to moving."""
    if cfg.method == "lindef":
        pos, _, _ = model.positions(fixed, moving)
        return pos - identity_positions(tuple(fixed.shape[2:]), fixed.device, fixed.dtype)
    if cfg.method == "mlvirnet":
        return model(fixed, moving)[0]
    return model(fixed, moving)[-1]


def _one_hot(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else torch.cat([1 - mask, mask], 1)


def endpoint_error(displacement: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between two displacements ``(N, D, *S)`` (same units)."""
    return (displacement - target).pow(2).sum(1).add(1e-12).sqrt().mean()


def training_loss(model: torch.nn.Module, cfg: NetworkConfig, pair: NetworkPair, level: int = 0) -> tuple[torch.Tensor, dict]:
    """The method's training loss on one pair (``level``: the ``mlvirnet`` level being trained), plus
    ``cfg.supervision`` times the end-point error against ``pair.true_displacement`` where it is known."""
    loss, parts, fields = _paper_loss(model, cfg, pair, level)
    if cfg.supervision > 0 and pair.true_displacement is not None:
        epe = sum(endpoint_error(u, pair.true_displacement) for u in fields) / len(fields)
        loss = loss + cfg.supervision * epe
        parts["epe"] = float(epe.detach())
    return loss, parts


def _paper_loss(model: torch.nn.Module, cfg: NetworkConfig, pair: NetworkPair, level: int) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    """The paper's loss, its logged parts, and the predicted displacements (voxels) it was taken on."""
    f, m = pair.fixed, pair.moving
    if cfg.method == "lindef":
        pos, phi, a = model.positions(f, m)
        warped = sample_at_voxels(m, pos)
        loss = lindef_loss(f, warped, phi, a, alpha=cfg.alpha * 1e-6, beta=cfg.beta * 1e-6, similarity=cfg.similarity,
                           ngf_eps=cfg.ngf_eps)
        disp = pos - identity_positions(tuple(f.shape[2:]), f.device, f.dtype)
        return loss, {"mse": float((f - warped).pow(2).mean().detach())}, [disp]
    if cfg.method == "mlvirnet":
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
    fields = model(f, m)
    loss = labeldriven_loss(f, m, _one_hot(pair.fixed_mask), _one_hot(pair.moving_mask), fields, alpha=cfg.alpha, beta=cfg.beta,
                            eps=cfg.ngf_eps)
    return loss, {"ngf_finest": float(ngf(f, warp_voxels(m, fields[-1].detach()), eps=cfg.ngf_eps))}, fields
