"""``python -m services.inventory``: see :mod:`services.inventory.service`."""

from __future__ import annotations

import sys

from core.service.scaffold import run_service
from services.inventory.service import SERVICE

if __name__ == "__main__":
    sys.exit(run_service(SERVICE))
