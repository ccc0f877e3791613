"""Reading and writing images, displacement fields and landmarks."""

from .images import Image, image_from_sitk, image_to_sitk, read_image, write_image
from .fields import read_field, write_field, field_to_sitk_transform
from .landmarks import read_landmarks, write_landmarks

__all__ = [
    "Image", "image_from_sitk", "image_to_sitk", "read_image", "write_image",
    "read_field", "write_field", "field_to_sitk_transform", "read_landmarks", "write_landmarks",
]
