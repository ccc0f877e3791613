"""Networks of the deep methods (papers 001, 002 and 004), working in the voxel space of their input grid."""

from .lindef import LinDefNet, affine_positions, compose_positions, identity_positions, integrate_gradients, lindef_loss

__all__ = ["LinDefNet", "affine_positions", "compose_positions", "identity_positions", "integrate_gradients", "lindef_loss"]
