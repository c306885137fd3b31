"""Process-wide settings that make CPU inference faster.

The chord networks and the MERT front end allocate activations of hundreds of megabytes many
times per track. Each one is new memory to the kernel, faulted in and zeroed 4 KiB page by
4 KiB page; on 2 cores that is a large share of the chord recogniser's time. PyTorch can ask
for transparent huge pages (2 MiB) for large tensors instead (``THP_MEM_ALLOC_ENABLE=1``):
512 times fewer faults, the same memory. The chord stage runs about 1.4x faster with it
(``benchmarks/speed.py`` measures it), and peak memory stays the same.

PyTorch reads the setting once, at its first allocation, so :func:`use_huge_pages` must run
before ``torch`` is imported. The command line and the app call it at startup; a program that
embeds :class:`~m2e_core.pipeline.Analyzer` may call it first thing, or set
``THP_MEM_ALLOC_ENABLE=1`` in its environment. ``M2E_HUGE_PAGES=0`` turns it off. Where the
kernel has transparent huge pages switched off (``never``) the setting does nothing.

The same call shortens how long PyTorch's OpenMP threads busy-wait for work between operations
(:func:`use_short_openmp_spin`; GNU OpenMP reads ``GOMP_SPINCOUNT`` once, when PyTorch loads it).
By default an idle thread spins for about 300 000 iterations before it sleeps. On a machine whose
cores other processes also use, a spinning thread takes the core from the thread with the work,
and every operation waits for its slowest thread: measured on 2 shared cores at a load average of
5-9, BTC's network took 5-11 s on a 3-minute track with the default and 1.3-2 s with a short spin,
a MERT-v1-95M segment 30 s against 24-26 s. ``M2E_SHORT_OPENMP_SPIN=0`` leaves the default, and
a ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` already in the environment is left as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "GOMP_SPIN_ENV",
    "HUGE_PAGES_ENV",
    "SHORT_SPIN_ENV",
    "TORCH_THP_ENV",
    "huge_pages_available",
    "use_huge_pages",
    "use_short_openmp_spin",
]

#: ``0`` turns the huge-page setting off.
HUGE_PAGES_ENV = "M2E_HUGE_PAGES"
#: PyTorch's switch for huge-page-aligned CPU allocations.
TORCH_THP_ENV = "THP_MEM_ALLOC_ENABLE"
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
#: ``0`` leaves OpenMP's busy-wait at its default.
SHORT_SPIN_ENV = "M2E_SHORT_OPENMP_SPIN"
#: GNU OpenMP's busy-wait length (iterations) before an idle thread sleeps.
GOMP_SPIN_ENV = "GOMP_SPINCOUNT"
#: A few microseconds of spinning: enough to bridge the gap between consecutive operations.
_SHORT_SPIN = 10_000


def huge_pages_available() -> bool:
    """Whether the kernel grants transparent huge pages on request (``always`` or ``madvise``)."""
    try:
        setting = _THP_SETTING.read_text(encoding="ascii")
    except OSError:
        return False
    return "[never]" not in setting


def use_huge_pages() -> bool:
    """Have PyTorch back large CPU tensors with transparent huge pages (before it is imported).

    Also calls :func:`use_short_openmp_spin`, which must run at the same moment.

    Returns
    -------
    bool
        Whether PyTorch in this process uses them: ``False`` when ``M2E_HUGE_PAGES=0``, when
        ``torch`` was imported before without the setting, or when the kernel has them off.
    """
    use_short_openmp_spin()
    if os.environ.get(HUGE_PAGES_ENV, "").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault(TORCH_THP_ENV, "1")
    return os.environ.get(TORCH_THP_ENV) == "1" and huge_pages_available()


def use_short_openmp_spin() -> bool:
    """Have PyTorch's OpenMP threads spin briefly before they sleep (before ``torch`` is imported).

    Returns
    -------
    bool
        Whether ``GOMP_SPINCOUNT`` is this module's short spin: ``False`` when
        ``M2E_SHORT_OPENMP_SPIN=0``, when ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` was set before,
        or when ``torch`` was imported first (its OpenMP runtime has read the environment).
    """
    if os.environ.get(SHORT_SPIN_ENV, "").strip() == "0":
        return False
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault(GOMP_SPIN_ENV, str(_SHORT_SPIN))
    return os.environ.get(GOMP_SPIN_ENV) == str(_SHORT_SPIN) and "OMP_WAIT_POLICY" not in os.environ
