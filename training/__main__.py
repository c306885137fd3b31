"""``python -m training``: see :mod:`training.cli`."""

from __future__ import annotations

import sys

from m2e_core.runtime import use_huge_pages

use_huge_pages()  # PyTorch reads the setting once, when it first allocates: before it is imported

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python -m training"))
