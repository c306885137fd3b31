"""The huge-page setting: PyTorch backs large CPU tensors with transparent huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2e_core.runtime import huge_pages_available

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, os, sys
from m2e_core.runtime import use_huge_pages

if sys.argv[1] == "torch-first":
    import torch
applied = use_huge_pages()
import torch

block = torch.ones(64 * 1024 * 1024)  # 256 MiB, touched
with open("/proc/self/smaps_rollup") as handle:
    huge_kb = sum(int(line.split()[1]) for line in handle if line.startswith("AnonHugePages:"))
print(json.dumps({"applied": applied, "env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "huge_mb": huge_kb / 1024}))
"""


def run_probe(order: str = "m2e-first", **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "M2E_HUGE_PAGES")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    result = subprocess.run([sys.executable, "-c", PROBE, order], env=environ, capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout)


needs_thp = pytest.mark.skipif(not huge_pages_available(), reason="the kernel has transparent huge pages off")


@needs_thp
def test_large_tensors_land_on_huge_pages():
    tuned = run_probe()
    assert tuned["applied"] is True and tuned["env"] == "1"
    assert tuned["huge_mb"] >= 200  # most of the 256 MiB tensor


@needs_thp
def test_off_switch_and_too_late():
    plain = run_probe(M2E_HUGE_PAGES="0")
    assert plain["applied"] is False and plain["env"] is None
    late = run_probe("torch-first")
    assert late["applied"] is False and late["env"] is None  # torch was imported first: nothing changes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_command_line_sets_it_before_torch():
    code = ("import os, runpy, sys\n"
            "sys.argv = ['m2e', '--help']\n"
            "try:\n    runpy.run_module('m2e_core', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('THP', os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)")
    environ = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "M2E_HUGE_PAGES")}
    environ.update(PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "THP 1 False" in result.stdout  # set, and torch not even imported for --help


SPIN_PROBE = """
import json, os, sys
from m2e_core.runtime import use_huge_pages

if sys.argv[1] == "torch-first":
    import torch
applied = use_huge_pages()
print(json.dumps({"applied": applied, "spin": os.environ.get("GOMP_SPINCOUNT")}))
"""


def run_spin_probe(order: str = "m2e-first", **env: str) -> dict:
    names = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "M2E_SHORT_OPENMP_SPIN")
    environ = {k: v for k, v in os.environ.items() if k not in names}
    environ.update(PYTHONPATH=str(ROOT), **env)
    result = subprocess.run([sys.executable, "-c", SPIN_PROBE, order], env=environ, capture_output=True,
                            text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def test_openmp_spin_is_shortened_before_torch_loads():
    assert run_spin_probe()["spin"] == "10000"
    assert run_spin_probe("torch-first")["spin"] is None  # too late: OpenMP has read the environment
    assert run_spin_probe(M2E_SHORT_OPENMP_SPIN="0")["spin"] is None
    assert run_spin_probe(GOMP_SPINCOUNT="500")["spin"] == "500"  # the user's own setting stays
    assert run_spin_probe(OMP_WAIT_POLICY="PASSIVE")["spin"] is None
