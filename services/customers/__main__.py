"""``python -m services.customers``: see :mod:`services.customers.service`."""

from __future__ import annotations

import sys

from core.service.scaffold import run_service
from services.customers.service import SERVICE

if __name__ == "__main__":
    sys.exit(run_service(SERVICE))
