"""Device and precision selection: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch

from .errors import DeepLungRegError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device for ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.

    ``"auto"`` (or ``None``) picks CUDA when ``torch.cuda.is_available()`` and
    the CPU otherwise. Asking for CUDA where there is none is an error, never a
    silent fallback.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str):
        raise DeepLungRegError(f"resolve_device: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeepLungRegError("resolve_device: device 'cuda' was requested but torch reports no CUDA GPU; use --device cpu or auto")
        return torch.device(device)
    raise DeepLungRegError(f"resolve_device: unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Return the compute dtype for ``precision`` on ``device``.

    float16 and bfloat16 are refused on the CPU (too slow and too inaccurate for
    registration there).
    """
    if precision not in _DTYPES:
        raise DeepLungRegError(f"resolve_dtype: unknown precision {precision!r}; use one of {sorted(_DTYPES)}")
    dtype = _DTYPES[precision]
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        raise DeepLungRegError(f"resolve_dtype: {precision} is not allowed on the CPU; use float32")
    return dtype
