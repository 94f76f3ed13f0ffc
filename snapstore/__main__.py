"""``python -m snapstore``: the command line (see ``snapstore.cli``)."""

from .cli import main

raise SystemExit(main())
