"""``python -m services``: the whole demo system (:mod:`services.launcher`).

``python -m services token USER`` prints an access token for a user of the
running system instead (:mod:`services.token`).
"""

from __future__ import annotations

import sys

from services import launcher, token

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["token"]:
        sys.exit(token.main(args[1:]))
    sys.exit(launcher.main(args))
