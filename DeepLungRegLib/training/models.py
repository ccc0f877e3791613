"""The training loss of every network: its paper's loss (from its :class:`~DeepLungRegLib.networks.NetworkSpec`)
plus optional synthetic supervision."""

from __future__ import annotations

import torch

from ..networks import NetworkConfig, NetworkPair, network_names, network_spec

#: The trainable methods (kept for saved scripts; :func:`~DeepLungRegLib.networks.network_names` is the source).
NETWORK_METHODS = network_names()


def endpoint_error(displacement: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between two displacements ``(N, D, *S)`` (same units)."""
    return (displacement - target).pow(2).sum(1).add(1e-12).sqrt().mean()


def training_loss(model: torch.nn.Module, cfg: NetworkConfig, pair: NetworkPair, level: int = 0) -> tuple[torch.Tensor, dict]:
    """The method's training loss on one pair (``level``: the level being trained, for multilevel networks), plus
    ``cfg.supervision`` times the end-point error against ``pair.true_displacement`` where it is known."""
    loss, parts, fields = network_spec(cfg.method).paper_loss(model, cfg, pair, level)
    if cfg.supervision > 0 and pair.true_displacement is not None:
        epe = sum(endpoint_error(u, pair.true_displacement) for u in fields) / len(fields)
        loss = loss + cfg.supervision * epe
        parts["epe"] = float(epe.detach())
    return loss, parts
