"""Registration methods, one file each, behind one registry.

>>> from DeepLungRegLib.methods import register, available_methods
>>> result = register(fixed, moving, "adam", fixed_mask=fm, moving_mask=mm)
"""

from .base import (
    CheckedPair, MethodConfig, RegistrationResult, available_methods, check_pair, get_method, method_settings, parse_options, register,
    register_method,
)
from . import adam, affine, convex, embed, networks  # noqa: E402,F401  (the built-in methods register themselves)

__all__ = ["CheckedPair", "check_pair", "MethodConfig", "RegistrationResult", "available_methods", "get_method", "method_settings", "parse_options", "register", "register_method"]
