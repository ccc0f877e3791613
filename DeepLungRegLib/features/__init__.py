"""Image features for registration."""

from .mind import mind_ssc

__all__ = ["mind_ssc"]
