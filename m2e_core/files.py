"""File helpers shared across m2e: content hashes, atomic writes, spreadsheet-safe cells."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "current_umask", "file_sha256", "spreadsheet_safe", "write_text_atomic"]

_BLOCK = 1 << 20
#: First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def file_sha256(*paths: str | os.PathLike[str]) -> str:
    """Hex sha256 of the content of one file, or of several files read one after another.

    Examples
    --------
    >>> file_sha256("model.safetensors")  # doctest: +SKIP
    '9f2c...'
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(_BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc``), else by setting it back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Write to the yielded temporary path beside ``target``; it replaces ``target`` on success.

    Readers never see a partial file: the temporary file is renamed into place only when the
    block ends without an exception, and removed otherwise. The file gets the permissions a
    plain ``open(target, "w")`` would give (``0o666`` less the umask), not the ``0o600`` of a
    temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(target)


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula.

    Strings starting with ``= + - @``, a tab or a carriage return get a leading ``'`` (the
    OWASP advice for CSV injection); numbers and everything else are returned unchanged, so
    negative numbers stay numbers.

    Examples
    --------
    >>> spreadsheet_safe("=2+5+cmd|' -c calc'!A0.wav")
    "'=2+5+cmd|' -c calc'!A0.wav"
    >>> spreadsheet_safe(-1.5)
    -1.5
    """
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value
