"""Networks of the deep methods (papers 001, 002 and 004), working in the voxel space of their input grid.

Each network is one file that registers a :class:`~.registry.NetworkSpec`; importing this
package registers them all. A new network: a file here, and its import below.
"""

from .labeldriven import LabelDrivenNet, bspline_dense, bspline_kernel, control_grid_size, labeldriven_loss
from .lindef import LinDefNet, affine_positions, compose_positions, identity_positions, integrate_gradients, lindef_loss
from .mlvirnet import MLVIRNet, compose_displacements, downsample, identity_grid, upsample_displacement, warp_voxels
from .unet import UNet
from .config import NetworkConfig
from .pairs import NetworkPair, network_grid, to_network_pair
from .registry import (
    NetworkSpec, build_network, load_checkpoint, load_network_state, network_names, network_spec, predict, register_network,
    shipped_weights,
)

__all__ = [
    "NetworkConfig", "NetworkPair", "NetworkSpec", "build_network", "load_checkpoint", "load_network_state", "network_grid",
    "network_names", "network_spec", "predict", "register_network", "shipped_weights", "to_network_pair",
    "LabelDrivenNet", "LinDefNet", "MLVIRNet", "UNet", "bspline_dense", "bspline_kernel", "control_grid_size", "labeldriven_loss", "affine_positions", "compose_displacements", "compose_positions", "downsample", "identity_grid",
    "identity_positions", "integrate_gradients", "lindef_loss", "upsample_displacement", "warp_voxels",
]
