"""``deeplungreg review``: a registration's outputs and its landmark review in the browser.

* :mod:`.folder`: the output folder, checked (one line per problem) and read back; no trame needed.
* :mod:`.app`: the page (trame-slicer: Slicer's MRML classes, three slice views rendered on the server),
  needing ``pip install 'DeepLungRegLib[review]'``.
"""

from .folder import OPTIONAL_VIEWS, REQUIRED_FILES, ReviewFolder

__all__ = ["OPTIONAL_VIEWS", "REQUIRED_FILES", "ReviewFolder"]
