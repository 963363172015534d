"""``python -m services``: the whole demo system (:mod:`services.launcher`).

Subcommands, for developers: ``python -m services new NAME`` writes the
skeleton of a new service (:mod:`services.new`); ``python -m services
policies`` checks that the gateway and the services agree on each route's
policy (:mod:`services.policies`).
"""

from __future__ import annotations

import sys

from services import launcher

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["new"]:
        from services import new

        sys.exit(new.main(args[1:]))
    if args[:1] == ["policies"]:
        from services import policies

        sys.exit(policies.main(args[1:]))
    sys.exit(launcher.main(args))
