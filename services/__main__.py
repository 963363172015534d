"""``python -m services``: the whole demo system (:mod:`services.launcher`).

``python -m services token USER`` prints an access token for a user of the
running system instead (:mod:`services.token`); ``status``, ``restart NAME``
and ``scale SERVICE N`` act on the running system through the launcher's
control socket (:mod:`services.commands`). Subcommands, for developers:
``python -m services new NAME`` writes the skeleton of a new service
(:mod:`services.new`); ``python -m services policies`` checks that the
gateway and the services agree on each route's policy (:mod:`services.policies`).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["token"]:
        from services import token

        sys.exit(token.main(args[1:]))
    if args[:1] in (["status"], ["restart"], ["scale"]):
        from services import commands

        sys.exit(commands.main(args[0], args[1:]))
    if args[:1] == ["new"]:
        from services import new

        sys.exit(new.main(args[1:]))
    if args[:1] == ["policies"]:
        from services import policies

        sys.exit(policies.main(args[1:]))
    # Imported last: the commands above start faster without the launcher's imports.
    from services import launcher

    sys.exit(launcher.main(args))
