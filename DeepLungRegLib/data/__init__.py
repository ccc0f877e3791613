"""The data that ships inside the library: the network weights and the sample CTs.

Found with :mod:`importlib.resources`, so they are there wherever the package is: a source
checkout, a wheel installed with ``pip install .``, or the Slicer extension (which copies
``DeepLungRegLib`` with this folder beside the module).

* ``weights/<method>.pt``: the shipped weights of the network methods and of the
  feature CNN (``mindnet.pt``).
* ``sample/popi00_demo.nrrd``: the demo CT (the inhale of the sample pair).
* ``sample/popi00_demo_exhale.nrrd`` and ``sample/popi00_demo_{inhale,exhale}.mrk.json``: an
  exhale simulated from it, with corresponding landmarks (``scripts/make_sample_pair.py``).

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The demo CT (2.5 mm, int16 HU), used by ``deeplungreg demo`` and as the sample pair's inhale.
DEMO_CT = "popi00_demo.nrrd"

#: The sample pair offered in Slicer's Sample Data module, in load order:
#: (file name in ``sample/``, node name, Slicer file type). The landmark lists hold
#: the same points in the same order (fixed: inhale, moving: exhale).
SAMPLE_PAIR = (
    (DEMO_CT, "DeepLungReg inhale", "VolumeFile"),
    ("popi00_demo_exhale.nrrd", "DeepLungReg exhale", "VolumeFile"),
    ("popi00_demo_inhale.mrk.json", "DeepLungReg inhale landmarks", "MarkupsFile"),
    ("popi00_demo_exhale.mrk.json", "DeepLungReg exhale landmarks", "MarkupsFile"),
)

#: How the sample pair was made (``scripts/make_sample_pair.py``); the seed makes it reproducible.
SAMPLE_PAIR_SIMULATION = {"amplitude": "small", "seed": 27, "noise_hu": 0.0, "n_landmarks": 100}


def data_dir() -> Path:
    """This folder, as a path on disk (the package is never zipped: torch and SimpleITK read files)."""
    return Path(str(resources.files(__name__)))


def weights_dir() -> Path:
    """The folder of the shipped network weights."""
    return data_dir() / "weights"


def sample_dir() -> Path:
    """The folder of the sample CTs and landmarks."""
    return data_dir() / "sample"


def sample_path(name: str = DEMO_CT) -> Path:
    """A file in :func:`sample_dir` (default: the demo CT)."""
    return sample_dir() / name
