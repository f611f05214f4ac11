"""``python -m fastpause``: the same command as the ``fastpause`` console script."""

from fastpause.cli import main

raise SystemExit(main())
