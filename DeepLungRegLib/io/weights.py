"""Reading ``.pt`` files (network weights and checkpoints) without running their code.

A ``.pt`` file is a pickle, and unpickling can run any code the file names. A
weights file given with ``-O weights=``, ``-O feature_weights=``, ``--init`` or
``--resume`` (or named in a shared config) comes from anywhere, so every file is
read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings,
lists and dicts only; anything else is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DeepLungRegError


def load_torch_file(path: str | os.PathLike, map_location="cpu", *, owner: str = "load", kind: str = "weights file") -> dict:
    """The dict stored in a ``.pt`` file, read with ``weights_only=True``.

    Raises:
        DeepLungRegError: for a missing file, a damaged or foreign one ("not a
            DeepLungReg ``kind``"), or one that holds anything but tensors and
            plain data, e.g. pickled code ("refused").
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise DeepLungRegError(f"{owner}: {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:
            what = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "")
            raise DeepLungRegError(f"{owner}: {path} holds more than weights and plain data, and is refused: "
                                   f"files are read with torch.load(weights_only=True) ({what[:160]})") from exc
        raise DeepLungRegError(f"{owner}: {path} is not a DeepLungReg {kind} (unreadable)") from exc
    except Exception as exc:  # a truncated or foreign file
        raise DeepLungRegError(f"{owner}: {path} is not a DeepLungReg {kind} ({str(exc).strip().splitlines()[0][:200]})") from exc
    if not isinstance(data, dict):
        raise DeepLungRegError(f"{owner}: {path} is not a DeepLungReg {kind} (it holds no dict of weights)")
    return data
