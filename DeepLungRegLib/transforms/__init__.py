"""Spatial transforms: warping by displacement fields, affine fields,
composition, inversion and resampling. Normalised grid_sample coordinates
exist only inside :mod:`.warp`."""

from .warp import (
    GridSampler, warp_image, warp_tensor, sample_field_at_points, sample_map_at_points, sample_on_grid, world_grid_tensor,
)
from .fields import (
    SlabField, affine_to_field, compose_fields, field_to_grid, invert_field, field_to_tensor, resample_field, tensor_to_field,
)
from .resample import resample_to_spacing, resample_to_geometry

__all__ = [
    "GridSampler", "warp_image", "warp_tensor", "sample_field_at_points", "sample_map_at_points", "sample_on_grid", "world_grid_tensor",
    "SlabField", "affine_to_field", "compose_fields", "field_to_grid", "invert_field", "field_to_tensor", "resample_field", "tensor_to_field",
    "resample_to_spacing", "resample_to_geometry",
]
