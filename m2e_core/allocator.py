"""Reuse freed memory instead of handing it back to the kernel at once (glibc's malloc).

The encoder and the chord networks allocate and free tensors of megabytes to hundreds of
megabytes many times per track. glibc's ``malloc`` serves such sizes with fresh ``mmap`` pages
and unmaps them again on ``free``, so the kernel faults in and zeroes every new tensor page by
page: with huge pages (:mod:`m2e_core.runtime`) still 1-4 s of system time per 90 s of audio
through the encoder, measured with ``getrusage`` in ``benchmarks/speed.py``. With ``mmap`` off for
``malloc`` (``M_MMAP_MAX = 0``) and a high trim threshold, freed blocks go back to the process's
heap and the next tensor reuses them: the faults all but vanish (about 50 000 to 3 000 for the
encoder on three 30 s segments) and peak memory stays the same; the process keeps what it used
at its peak until it exits, which a long-running analysis would reuse anyway.

:func:`keep_freed_memory` sets it for the whole process, at any time (it applies to later
allocations). The command line calls it at startup; ``M2E_KEEP_FREED_MEMORY=0`` turns it off.
Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["KEEP_FREED_MEMORY_ENV", "keep_freed_memory"]

#: ``0`` turns :func:`keep_freed_memory` off.
KEEP_FREED_MEMORY_ENV = "M2E_KEEP_FREED_MEMORY"
# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free memory at the top of the heap kept before it is returned to the kernel.
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory(*, trim_threshold: int = _TRIM_THRESHOLD) -> bool:
    """Have glibc reuse freed memory for later allocations instead of unmapping it.

    Parameters
    ----------
    trim_threshold : int
        Bytes of free memory at the top of the heap kept before glibc returns it (default 1 GiB).

    Returns
    -------
    bool
        Whether the setting is in force: ``False`` when ``M2E_KEEP_FREED_MEMORY=0``, off glibc,
        or when glibc refused it.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    threshold = max(0, min(int(trim_threshold), 2**31 - 1))
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
