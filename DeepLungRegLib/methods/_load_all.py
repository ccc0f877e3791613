"""Imports every built-in method module so that it registers itself."""

from . import adam, affine, embed  # noqa: F401
