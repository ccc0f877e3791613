"""Networks of the deep methods (papers 001, 002 and 004), working in the voxel space of their input grid."""

from .lindef import LinDefNet, affine_positions, compose_positions, identity_positions, integrate_gradients, lindef_loss
from .mlvirnet import MLVIRNet, compose_displacements, downsample, identity_grid, upsample_displacement, warp_voxels
from .unet import UNet

__all__ = [
    "LinDefNet", "MLVIRNet", "UNet", "affine_positions", "compose_displacements", "compose_positions", "downsample", "identity_grid",
    "identity_positions", "integrate_gradients", "lindef_loss", "upsample_displacement", "warp_voxels",
]
