"""``python -m services``: the whole demo system (see :mod:`services.launcher`)."""

from __future__ import annotations

import sys

from services.launcher import main

if __name__ == "__main__":
    sys.exit(main())
