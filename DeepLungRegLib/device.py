"""Device and precision selection: CUDA when present, CPU otherwise."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import DeepLungRegError

#: ``precision`` values and their storage dtype. ``tf32`` stores float32 and lets CUDA's matrix
#: products and convolutions round their inputs to TensorFloat-32 (10-bit mantissa); ``float32``
#: forbids that during a registration, whatever torch's global flags say.
_DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device for ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.

    ``"auto"`` (or ``None``) picks CUDA when ``torch.cuda.is_available()`` and
    the CPU otherwise. Asking for CUDA where there is none, or for a GPU index
    this machine lacks, is an error, never a silent fallback.
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
        index = device[5:] if device.startswith("cuda:") else device[4:]
        if device != "cuda" and not (device.startswith("cuda:") and index.isdigit()):
            raise DeepLungRegError(f"resolve_device: unknown device {device!r}; use 'cuda' or 'cuda:N' (N a GPU index)")
        if not torch.cuda.is_available():
            raise DeepLungRegError("resolve_device: device 'cuda' was requested but torch reports no CUDA GPU; use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise DeepLungRegError(f"resolve_device: {device} was requested but torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                                   f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device(device)
    raise DeepLungRegError(f"resolve_device: unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Return the compute dtype for ``precision`` on ``device``.

    float16 and bfloat16 are refused on the CPU (too slow and too inaccurate for
    registration there); ``tf32`` is float32 (on the CPU exactly ``float32``).
    """
    if precision not in _DTYPES:
        raise DeepLungRegError(f"resolve_dtype: unknown precision {precision!r}; use one of {sorted(_DTYPES)}")
    dtype = _DTYPES[precision]
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        raise DeepLungRegError(f"resolve_dtype: {precision} is not allowed on the CPU; use float32")
    return dtype


def _tf32_state() -> tuple:
    """CUDA's TF32 switches for matrix products and cuDNN convolutions, read through the API this torch has
    (``fp32_precision`` since torch 2.9; reading the legacy ``allow_tf32`` after the new API was used raises)."""
    mm, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(mm, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return ("fp32_precision", mm.fp32_precision, conv.fp32_precision)
    return ("allow_tf32", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _set_tf32_state(state: tuple) -> None:
    api, matmul, conv = state
    if api == "fp32_precision":
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def tf32_enabled() -> tuple[bool, bool]:
    """Whether CUDA may use TF32 now for ``(matrix products, cuDNN convolutions)``."""
    api, matmul, conv = _tf32_state()
    if api == "fp32_precision":
        # "none" defers to torch.set_float32_matmul_precision for matmuls (its default "highest": no TF32)
        try:
            mm_on = matmul == "tf32" or (matmul == "none" and torch.get_float32_matmul_precision() != "highest")
        except RuntimeError:  # torch refuses to read the global setting after a mix of its two APIs
            mm_on = False
        return mm_on, conv == "tf32"
    return bool(matmul), bool(conv)


@contextmanager
def precision_scope(precision: str, device: torch.device):
    """Inside, CUDA uses TF32 for float32 matrix products and convolutions exactly when ``precision`` is ``"tf32"``.

    torch's defaults differ between the two (convolutions: TF32 on; matrix products: off), and a
    caller may have changed them; a registration's result must not depend on that. The flags are
    torch's process-wide switches, restored on exit. Nothing changes on the CPU.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    saved = _tf32_state()
    api = saved[0]
    on = precision == "tf32"
    _set_tf32_state((api, "tf32" if on else "ieee", "tf32" if on else "ieee") if api == "fp32_precision" else (api, on, on))
    try:
        yield
    finally:
        _set_tf32_state(saved)
