"""Freed memory is reused by later allocations: page faults counted, not time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import resource, sys
import numpy as np
from m2e_core.allocator import keep_freed_memory
on = keep_freed_memory() if sys.argv[1] == "on" else False
np.ones(64 << 18, dtype=np.float32)  # 64 MiB once, so the heap has grown before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = np.ones(64 << 18, dtype=np.float32)  # 64 MiB, written in full
    del block
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **env: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **env))
    assert result.returncode == 0, result.stderr
    on, count = result.stdout.split()
    return on, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    off_state, off = faults("off")
    on_state, on = faults("on")
    assert off_state == "False" and on_state == "True"
    # Ten 64 MiB blocks: fresh pages every time by default (at least one fault per 2 MiB huge
    # page of each block), the same pages again once kept.
    assert off >= 10 * 32
    assert on * 20 < off


def test_can_be_switched_off():
    assert faults("on", M2E_KEEP_FREED_MEMORY="0")[0] == "False"
