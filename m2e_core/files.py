"""File helpers shared across m2e."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

_BLOCK = 1 << 20


def file_sha256(*paths: str | os.PathLike[str]) -> str:
    """Hex sha256 of the content of one file, or of several files read one after another.

    Examples
    --------
    >>> file_sha256("model.safetensors")  # doctest: +SKIP
    '9f2c...'
    """
    digest = hashlib.sha256()
    for path in paths:
        _update(digest, path)
    return digest.hexdigest()


def _update(digest: hashlib._Hash, path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as handle:
        for block in _blocks(handle):
            digest.update(block)


def _blocks(handle) -> Iterable[bytes]:
    return iter(lambda: handle.read(_BLOCK), b"")
