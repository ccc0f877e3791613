"""DeepLungRegLib: lung CT registration with torch, numpy and SimpleITK.

Importable without 3D Slicer. See the README for the geometry and field
conventions (arrays (z, y, x), LPS world, fields in mm on the fixed grid with
``x_moving = x_fixed + u(x_fixed)``).
"""

__version__ = "0.1.0"

from .errors import DeepLungRegError, RegistrationCancelled  # noqa: E402
from .geometry import Geometry  # noqa: E402
from .io import Image, read_image, write_image, read_field, write_field, read_landmarks, write_landmarks  # noqa: E402

__all__ = [
    "__version__", "DeepLungRegError", "RegistrationCancelled", "Geometry", "Image", "read_image", "write_image",
    "read_field", "write_field", "read_landmarks", "write_landmarks",
]
