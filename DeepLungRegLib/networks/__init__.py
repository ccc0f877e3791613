"""Networks of the deep methods (papers 001, 002 and 004), working in the voxel space of their input grid."""

from .labeldriven import LabelDrivenNet, bspline_dense, bspline_kernel, control_grid_size, labeldriven_loss
from .lindef import LinDefNet, affine_positions, compose_positions, identity_positions, integrate_gradients, lindef_loss
from .mlvirnet import MLVIRNet, compose_displacements, downsample, identity_grid, upsample_displacement, warp_voxels
from .unet import UNet

__all__ = [
    "LabelDrivenNet", "LinDefNet", "MLVIRNet", "UNet", "bspline_dense", "bspline_kernel", "control_grid_size", "labeldriven_loss", "affine_positions", "compose_displacements", "compose_positions", "downsample", "identity_grid",
    "identity_positions", "integrate_gradients", "lindef_loss", "upsample_displacement", "warp_voxels",
]
