"""``python -m m2e_core``: the command line."""

from .runtime import use_huge_pages

use_huge_pages()  # PyTorch reads the setting once, when it first allocates: before it is imported

from .cli import main  # noqa: E402

raise SystemExit(main())
