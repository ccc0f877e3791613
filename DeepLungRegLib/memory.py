"""Peak memory of this process, the same call on Linux, macOS and Windows.

Nothing here is imported at module level that a platform lacks: ``resource``
exists only on Unix (and reports ``ru_maxrss`` in KiB on Linux but in bytes on
macOS); Windows is asked through ``GetProcessMemoryInfo``.
"""

from __future__ import annotations

import importlib
import sys


def _windows_peak_bytes() -> float | None:
    import ctypes
    from ctypes import wintypes

    class _Counters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD), ("PeakWorkingSetSize", ctypes.c_size_t),
                    ("WorkingSetSize", ctypes.c_size_t), ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
                    ("QuotaPagedPoolUsage", ctypes.c_size_t), ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                    ("QuotaNonPagedPoolUsage", ctypes.c_size_t), ("PagefileUsage", ctypes.c_size_t),
                    ("PeakPagefileUsage", ctypes.c_size_t)]

    counters = _Counters()
    counters.cb = ctypes.sizeof(_Counters)
    kernel32 = ctypes.WinDLL("kernel32")
    psapi = ctypes.WinDLL("psapi")
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    if not psapi.GetProcessMemoryInfo(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        return None
    return float(counters.PeakWorkingSetSize)


def _proc_peak_kib() -> float | None:
    """``VmHWM`` of ``/proc/self/status`` (Linux), in KiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MB (``None`` where the platform cannot tell).

    Linux: ``VmHWM`` of ``/proc/self/status``, which starts afresh at exec
    (``ru_maxrss`` is inherited from the parent there); macOS and other Unix:
    ``ru_maxrss``; Windows: ``PeakWorkingSetSize``.
    """
    try:
        if sys.platform == "win32":
            b = _windows_peak_bytes()
            return None if b is None else b / 2**20
        kib = _proc_peak_kib()
        if kib is not None:
            return kib / 1024.0
        resource = importlib.import_module("resource")
        rss = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0
    except (ImportError, OSError, AttributeError, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory afresh (:func:`peak_rss_mb` then counts from now); returns
    whether the platform can (Linux: ``/proc/self/clear_refs``; elsewhere it cannot)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Give freed memory back to the system after a large piece of work: Python's garbage collection, and glibc's
    ``malloc_trim`` where the C library is glibc (a no-op elsewhere)."""
    import gc

    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
