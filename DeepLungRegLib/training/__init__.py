"""Training of the network methods (``deeplungreg train``) on simulated and real pairs."""

from .data import NetworkPair, SimulatedPairPool, from_simulated, network_grid, to_network_pair, voxel_to_world, world_to_voxel
from .models import NETWORK_METHODS, NetworkConfig, build_network, load_network_state, predict, training_loss
from .train import export_weights, load_checkpoint, train, validation_pairs, validation_tre

__all__ = [
    "NETWORK_METHODS", "NetworkConfig", "NetworkPair", "SimulatedPairPool", "build_network", "export_weights", "from_simulated", "load_checkpoint",
    "load_network_state",
    "network_grid", "predict", "to_network_pair", "train", "training_loss", "validation_pairs", "validation_tre", "voxel_to_world",
    "world_to_voxel",
]
