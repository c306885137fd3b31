"""``python -m m2e_core``: the command line."""

from .cli import main

raise SystemExit(main())
