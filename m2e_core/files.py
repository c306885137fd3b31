"""File helpers shared across m2e."""

from __future__ import annotations

import hashlib
import os

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
        with open(path, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(_BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()
