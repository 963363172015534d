"""``python -m services.billing``: see :mod:`services.billing.service`."""

from __future__ import annotations

import sys

from core.service.scaffold import run_service
from services.billing.service import SERVICE

if __name__ == "__main__":
    sys.exit(run_service(SERVICE))
