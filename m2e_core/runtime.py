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
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["HUGE_PAGES_ENV", "TORCH_THP_ENV", "huge_pages_available", "use_huge_pages"]

#: ``0`` turns the huge-page setting off.
HUGE_PAGES_ENV = "M2E_HUGE_PAGES"
#: PyTorch's switch for huge-page-aligned CPU allocations.
TORCH_THP_ENV = "THP_MEM_ALLOC_ENABLE"
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    """Whether the kernel grants transparent huge pages on request (``always`` or ``madvise``)."""
    try:
        setting = _THP_SETTING.read_text(encoding="ascii")
    except OSError:
        return False
    return "[never]" not in setting


def use_huge_pages() -> bool:
    """Have PyTorch back large CPU tensors with transparent huge pages (before it is imported).

    Returns
    -------
    bool
        Whether PyTorch in this process uses them: ``False`` when ``M2E_HUGE_PAGES=0``, when
        ``torch`` was imported before without the setting, or when the kernel has them off.
    """
    if os.environ.get(HUGE_PAGES_ENV, "").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault(TORCH_THP_ENV, "1")
    return os.environ.get(TORCH_THP_ENV) == "1" and huge_pages_available()
