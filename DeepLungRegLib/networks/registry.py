"""One registry of the networks: a network is one file that registers a :class:`NetworkSpec`.

The registration methods (:mod:`DeepLungRegLib.methods.networks`), training
(:mod:`DeepLungRegLib.training`) and the command line read the specs; nothing
else names a network. Running a network needs this package only, never the
training package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..data import weights_dir
from ..errors import DeepLungRegError
if TYPE_CHECKING:  # annotations only: config imports this registry to check method names
    from .config import NetworkConfig

#: Shipped weights: ``DeepLungRegLib/data/weights/<name>.pt``, package data found by importlib.resources
#: (a source checkout, an installed wheel or the Slicer extension alike).
WEIGHTS_DIR = weights_dir()


def _all_parameters(model: torch.nn.Module, level: int, initialise: bool) -> list:
    return list(model.parameters())


def _nothing_frozen(model: torch.nn.Module, level: int) -> None:
    return None


@dataclass(frozen=True)
class NetworkSpec:
    """Everything the library needs to know about one network.

    Attributes:
        name: the method name (``deeplungreg register --method NAME``).
        description: one line for ``deeplungreg methods`` and the Slicer module.
        build: the network of a :class:`NetworkConfig`.
        predict: ``(model, cfg, fixed, moving) -> (N, 3, Z, Y, X)`` displacement in network
            voxels ``(z, y, x)`` mapping fixed to moving points (inference).
        paper_loss: ``(model, cfg, pair, level) -> (loss, logged parts, displacements)``: the
            paper's training loss on a :class:`~.pairs.NetworkPair` and the displacements it was taken on.
        own_options: the :data:`~.config.NETWORK_SPECIFIC_OPTIONS` this network reads.
        levels: how many levels it trains one after the other (1: all at once).
        trainable: the parameters to optimise while ``level`` trains (``initialise``: start that
            level from the next coarser one's weights).
        freeze: put the levels that do not train into eval mode before a training step.
    """

    name: str
    description: str
    build: Callable[[NetworkConfig], torch.nn.Module]
    predict: Callable
    paper_loss: Callable
    own_options: frozenset = frozenset()
    levels: Callable[[NetworkConfig], int] = field(default=lambda cfg: 1)
    trainable: Callable = _all_parameters
    freeze: Callable = _nothing_frozen


_NETWORKS: dict[str, NetworkSpec] = {}


def register_network(spec: NetworkSpec) -> NetworkSpec:
    """Add a network (called at the end of its file)."""
    _NETWORKS[spec.name] = spec
    return spec


def network_names() -> tuple[str, ...]:
    """The registered networks, sorted (importing this package registers its own)."""
    return tuple(sorted(_NETWORKS))


def network_spec(name: str) -> NetworkSpec:
    if name not in network_names():
        raise DeepLungRegError(f"network: unknown network {name!r}; available: {', '.join(network_names())}")
    return _NETWORKS[name]


def build_network(cfg: NetworkConfig) -> torch.nn.Module:
    """The network of ``cfg.method`` at ``cfg.width`` times the paper's channel counts."""
    return network_spec(cfg.method).build(cfg)


def predict(model: torch.nn.Module, cfg: NetworkConfig, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Displacement ``(N, 3, Z, Y, X)`` in network voxels ``(z, y, x)``: ``x -> x + u(x)`` maps fixed to moving."""
    return network_spec(cfg.method).predict(model, cfg, fixed, moving)


def load_network_state(model: torch.nn.Module, state: dict) -> None:
    """Load trained weights into ``model``. Batch-norm running statistics that the model no longer keeps
    (weights trained before ``mlvirnet`` and ``labeldriven`` normalised with each input's own statistics)
    are dropped; anything else that does not match is an error."""
    own = model.state_dict()
    stale = ("running_mean", "running_var", "num_batches_tracked")
    model.load_state_dict({k: v for k, v in state.items() if k in own or not k.endswith(stale)})


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint or weights file written by training (refuses anything else with a clear message;
    read with ``weights_only=True``, so a crafted file cannot run code)."""
    from ..io.weights import load_torch_file

    ck = load_torch_file(path, map_location, owner="load_checkpoint", kind="checkpoint")
    if not {"method", "config", "model"} <= set(ck):
        raise DeepLungRegError(f"load_checkpoint: {path} is not a DeepLungReg checkpoint (no method/config/model)")
    return ck


def shipped_weights(name: str) -> Path:
    """``DeepLungRegLib/data/weights/<name>.pt``, or a one-line error saying how to train them."""
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise DeepLungRegError(
            f"{name}: no trained weights at {path}; train them with 'deeplungreg train --method {name} --ct CT... -o RUNDIR' "
            f"and pass -O weights=RUNDIR/checkpoint.pt")
    return path
