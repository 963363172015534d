"""``python -m services.auth``: see :mod:`services.auth.service`."""

from __future__ import annotations

import sys

from services.auth.service import main

if __name__ == "__main__":
    sys.exit(main())
