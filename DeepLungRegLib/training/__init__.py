"""Training of the network methods (``deeplungreg train``) on simulated and real pairs.

The networks themselves, their configs and grids live in :mod:`DeepLungRegLib.networks`; the
names below are re-exported for existing scripts.
"""

from ..networks import NetworkConfig, NetworkPair, build_network, load_checkpoint, load_network_state, network_grid, predict, to_network_pair
from ..transforms.frames import voxel_to_world, world_to_voxel
from .data import SimulatedPairPool, from_simulated
from .models import NETWORK_METHODS, training_loss
from .train import export_weights, train, validation_pairs, validation_tre

__all__ = [
    "NETWORK_METHODS", "NetworkConfig", "NetworkPair", "SimulatedPairPool", "build_network", "export_weights", "from_simulated", "load_checkpoint",
    "load_network_state",
    "network_grid", "predict", "to_network_pair", "train", "training_loss", "validation_pairs", "validation_tre", "voxel_to_world",
    "world_to_voxel",
]
