"""Imports every built-in method module so that it registers itself."""

from . import adam, affine, convex, embed, labeldriven, lindef, mlvirnet  # noqa: F401
