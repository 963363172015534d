"""``python -m services.auth``: see :mod:`services.auth.service`."""

from __future__ import annotations

import sys

from core.service.scaffold import run_service
from services.auth.service import SERVICE

if __name__ == "__main__":
    sys.exit(run_service(SERVICE))
