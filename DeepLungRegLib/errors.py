"""User-facing error type.

Every check on user input raises :class:`DeepLungRegError` with a one-line
message that starts with the name of the function that refused the input, so
the CLI, the Slicer module and Python callers can show it as it is.
"""

from __future__ import annotations


class DeepLungRegError(ValueError):
    """Invalid input or an impossible request, described in one line."""


class RegistrationCancelled(RuntimeError):
    """Raised inside a method when the caller's cancel flag is set."""


class Terminated(BaseException):
    """Raised by the command line's SIGTERM handler so that a run unwinds (and removes what it staged)
    like after Ctrl-C. A ``BaseException``, like :class:`KeyboardInterrupt`, so no ``except Exception`` swallows it."""
