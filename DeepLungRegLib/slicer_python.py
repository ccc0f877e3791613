"""What a stock 3D Slicer (5.8 to 5.12) offers to Python code: the one list the Slicer module's path is held to.

The Slicer module and its background worker (``deeplungreg worker``, run by Slicer's ``PythonSlicer``)
may import, at module level, only the standard library and these top-level names. Anything else
(matplotlib, tqdm, Dask, trame, ...) is imported inside the function that needs it, off that path.
``Testing/pytest/test_module_stock_slicer.py`` walks the module-level imports of everything the module
and the worker import from DeepLungRegLib and checks them against this list, and
``Testing/pytest/test_slicer_bridge_background_stock.py`` runs the background path on a Python that
has only torch, numpy, scipy and SimpleITK.
"""

from __future__ import annotations

import sys

#: Top-level packages importable in a stock Slicer 5.8-5.12 Python (besides the standard library):
#: the third-party packages its SuperBuild installs (python-numpy, python-scipy, SimpleITK, VTK,
#: pip/setuptools/wheel/packaging), torch through the PyTorch extension (SlicerPyTorch), and
#: Slicer's own application modules.
SLICER_PACKAGES = frozenset({
    "numpy", "scipy", "SimpleITK", "vtk", "vtkmodules", "torch", "packaging", "pip", "setuptools", "wheel",
    "slicer", "qt", "ctk", "mrml", "sitkUtils", "SampleData", "DeepLungRegLib",
})

#: Standard-library modules of some supported Python but not of every one (Slicer 5.8 has Python 3.9,
#: 5.10 to 5.12 Python 3.12): not allowed on the module's path.
_STDLIB_NOT_EVERYWHERE = frozenset({"tomllib", "distutils", "imp", "asynchat", "asyncore", "smtpd", "_tkinter", "tkinter",
                                    "turtle", "turtledemo", "idlelib"})


def stdlib_modules() -> frozenset:
    """The standard library's top-level module names shared by the Pythons of Slicer 5.8 to 5.12."""
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:  # Python 3.9 (Slicer 5.8): its own modules are the ones it has
        names = set(sys.builtin_module_names) | _STDLIB_39
    return frozenset(names) - _STDLIB_NOT_EVERYWHERE


def available_in_slicer(module: str) -> bool:
    """True when ``module`` (dotted or not) is importable in a stock Slicer's Python."""
    top = module.split(".")[0]
    return top in SLICER_PACKAGES or top in stdlib_modules()


#: Python 3.9 has no ``sys.stdlib_module_names``; the modules this library may use from it.
_STDLIB_39 = frozenset({
    "__future__", "abc", "argparse", "ast", "atexit", "base64", "bisect", "collections", "concurrent", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "enum", "errno", "fnmatch", "functools", "gc", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html", "http", "importlib", "inspect", "io", "itertools", "json", "logging", "math", "mmap",
    "multiprocessing", "numbers", "operator", "os", "pathlib", "pickle", "platform", "pprint", "queue", "random", "re",
    "secrets", "shlex", "shutil", "signal", "socket", "stat", "string", "struct", "subprocess", "sys", "tempfile",
    "textwrap", "threading", "time", "traceback", "types", "typing", "unittest", "urllib", "uuid", "warnings", "weakref",
    "zipfile", "zlib",
})
