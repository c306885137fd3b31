"""The README's commands work as typed: every shell block marked runnable is run, offline.

A block is runnable when the line before its opening fence is ``<!-- runnable -->``. The blocks
run in README order, each in a fresh ``bash -euo pipefail`` from the repository root, with the
virtual environment's ``bin`` first on ``PATH`` (as the README asks after the quick start) and
no network: an empty ``M2E_HOME``, ``HF_HUB_OFFLINE=1``. Blocks may use what an earlier block
made (``m2e make-tiny-models /tmp/m2e-tiny`` first, then an analysis with those models). The
``/tmp/m2e*`` paths they name are removed before the run, so every run starts as a new user would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
_FENCE = re.compile(r"^```(\w*)\s*$")
_SCRATCH = re.compile(r"/tmp/m2e[\w.-]*")

pytestmark = pytest.mark.slow


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, shell text)`` of every block marked runnable, in order."""
    lines = text.splitlines()
    blocks: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == MARKER:
            opening = index + 1
            match = _FENCE.match(lines[opening]) if opening < len(lines) else None
            if match is None or match.group(1) not in ("bash", "sh", "shell"):
                raise AssertionError(f"README.md:{index + 1}: {MARKER} must come right before a ```bash block")
            end = opening + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            if end == len(lines):
                raise AssertionError(f"README.md:{opening + 1}: the runnable block is never closed")
            blocks.append((opening + 1, "\n".join(lines[opening + 1:end])))
            index = end
        index += 1
    return blocks


def test_marker_parsing():
    text = "intro\n<!-- runnable -->\n```bash\necho one\necho two\n```\n```bash\nnot marked\n```\n"
    assert runnable_blocks(text) == [(3, "echo one\necho two")]  # the line of the opening fence
    with pytest.raises(AssertionError, match="right before"):
        runnable_blocks("<!-- runnable -->\nno block\n")


def scratch_paths(blocks: list[tuple[int, str]]) -> set[Path]:
    """The ``/tmp/m2e*`` files and folders the blocks write (removed before a run)."""
    return {Path(match) for _, block in blocks for match in _SCRATCH.findall(block)}


def test_scratch_paths():
    blocks = [(1, "m2e make-tiny-models /tmp/m2e-tiny\nm2e analyze x --out /tmp/m2e-shards.jsonl.shard-*")]
    assert scratch_paths(blocks) == {Path("/tmp/m2e-tiny"), Path("/tmp/m2e-shards.jsonl.shard-")}


def test_readme_commands_run_as_typed(tmp_path):
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 4, "the README marks its offline commands as runnable"
    # What an earlier run of these commands left in /tmp must not change what this run does
    # (a library file of other models would refuse to resume, as it should).
    for path in scratch_paths(blocks):
        for found in path.parent.glob(path.name + "*"):
            shutil.rmtree(found) if found.is_dir() else found.unlink()
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "M2E_HOME": str(tmp_path / "m2e-home"),
        "HF_HUB_OFFLINE": "1",
        "M2E_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    for line, block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (
            f"README.md:{line}: the block failed (exit {result.returncode})\n{block}\n--- stdout\n"
            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
