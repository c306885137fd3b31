"""The explorer's temporary files: one private directory per request, all removed at exit.

The root (``m2e-app-*`` in the system's temporary directory) is removed when the process ends
normally, on SIGTERM (how a host stops a container) and on SIGINT (Ctrl-C):
:func:`remove_on_signals` installs the handlers, from the main thread, at launch.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

_roots: weakref.WeakSet[TempFiles] = weakref.WeakSet()
_installed = False
_lock = threading.Lock()


class TempFiles:
    """Per-request directories under one root.

    Parameters
    ----------
    root : str or Path, optional
        Use this directory (kept at exit: it belongs to the caller). Default: a fresh
        ``m2e-app-*`` directory, removed at exit and on SIGTERM/SIGINT.
    max_age_s : float
        Request directories older than this are removed when a new one is made.
    """

    def __init__(self, root: str | Path | None = None, *, max_age_s: float = 3600.0) -> None:
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="m2e-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        if self.owned:
            _roots.add(self)
            atexit.register(self.remove)

    def request_dir(self) -> Path:
        """A new private directory for one request's files (expired ones are removed first)."""
        now = time.time()
        for old in self.root.glob("req-*"):
            try:
                if now - old.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.root))

    def remove(self) -> None:
        """Remove the root and everything in it (only when this object made it)."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


def remove_all() -> None:
    """Remove every temporary root the explorer made in this process."""
    for files in list(_roots):
        files.remove()


def remove_on_signals() -> None:
    """On SIGTERM and SIGINT, remove the temporary roots, then stop as the signal would.

    SIGTERM ends the process with status 143 (``SystemExit``, so ``atexit`` runs too); SIGINT
    goes on to the previous handler (Python's ``KeyboardInterrupt``, which Gradio's launch loop
    takes as the signal to close). Call from the main thread; calling again does nothing.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous_int = signal.getsignal(signal.SIGINT)

    def on_term(signum: int, frame: Any) -> None:
        remove_all()
        raise SystemExit(128 + signum)

    def on_int(signum: int, frame: Any) -> None:
        remove_all()
        if callable(previous_int):
            previous_int(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
