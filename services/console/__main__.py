"""``python -m services.console``: see :mod:`services.console.service`."""

from __future__ import annotations

import sys

from core.service.scaffold import run_service
from services.console.service import SERVICE

if __name__ == "__main__":
    sys.exit(run_service(SERVICE))
