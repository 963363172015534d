"""``python -m services token USER``: a fresh access token for a user of the running system.

It reads the run directory the launcher wrote (``run/``, or ``--run-dir`` as
the launcher takes it): the gateway's address from ``system.json`` and the
user's password from ``USER.password`` (or ``--password-file``), asks the
gateway's ``POST /auth/token`` for a token and prints the access token alone
on stdout, so that ``TOKEN=$(python -m services token alice)`` works in a
shell. Anything else is one line on stderr and a non-zero exit status, so
that ``TOKEN`` is never silently empty:

=====  =========================================================
code   meaning
=====  =========================================================
0      the token is on stdout
1      the auth service refused: wrong password, unknown user
2      bad usage, or no run directory / password file where said
3      the system is not running (nothing answers)
4      rate-limited (retry after the time given)
=====  =========================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from core.errors import SettingsError
from core.settings import load, option
from services.rundir import RunDir

__all__ = ["TokenSettings", "fetch_token", "main"]

EXIT_REFUSED, EXIT_USAGE, EXIT_DOWN, EXIT_RATE_LIMITED = 1, 2, 3, 4


class TokenError(Exception):
    """Why no token could be had: ``str()`` is the line to print, ``code`` the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class TokenSettings:
    """The token command's settings (prefix ``ESSAIM_TOKEN_``; the run directory's is the launcher's)."""

    run_dir: str = dataclasses.field(
        default="run", metadata=option("the launcher's run directory", env="ESSAIM_RUN_DIR")
    )
    password_file: str = dataclasses.field(
        default="", metadata=option("file holding the password (default: RUN_DIR/USER.password)")
    )
    timeout: float = dataclasses.field(
        default=5.0, metadata=option("seconds to wait for the answer")
    )


def read_run_dir(settings: TokenSettings, user: str) -> tuple[str, str, Path]:
    """The gateway's URL, ``user``'s password and the file it came from; :class:`TokenError`."""
    files = RunDir(Path(settings.run_dir))
    if not files.path.is_dir():
        raise TokenError(
            f"no run directory {settings.run_dir}/: start the system with `make up` here,"
            " or give the launcher's with --run-dir",
            EXIT_USAGE,
        )
    system = files.system()
    if system is None:
        raise TokenError(
            f"the system of {settings.run_dir}/ is not running: start it with `make up`",
            EXIT_DOWN,
        )
    password_file = Path(settings.password_file or files.path / f"{user}.password")
    try:
        password = password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        users = ", ".join(str(u) for u in system.get("users", ()))
        raise TokenError(
            f"cannot read {password_file} ({exc.strerror}); the demo users: {users or 'none'}",
            EXIT_USAGE,
        ) from None
    return str(system["urls"].get("gateway", "")), password, password_file


async def fetch_token(settings: TokenSettings, user: str) -> str:
    """The access token for ``user``; :class:`TokenError` saying why not."""
    gateway, password, password_file = read_run_dir(settings, user)
    body = {"username": user, "password": password}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.timeout)) as http,
            http.post(f"{gateway}/auth/token", json=body) as response,
        ):
            status = response.status
            retry = response.headers.get("Retry-After", "1")
            answer = await response.json(content_type=None) if response.content_length else {}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TokenError(
            f"the gateway at {gateway} does not answer ({exc or type(exc).__name__}):"
            " is the system up?",
            EXIT_DOWN,
        ) from None
    if status == 200 and isinstance(answer, dict) and "access_token" in answer:
        return str(answer["access_token"])
    if status == 429:
        raise TokenError(f"rate-limited by the gateway: retry in {retry} s", EXIT_RATE_LIMITED)
    detail = answer.get("detail") if isinstance(answer, dict) else None
    if status in (400, 401, 403, 422):
        raise TokenError(
            f"the auth service refused {user!r} with the password in {password_file}:"
            f" {detail or status}",
            EXIT_REFUSED,
        )
    raise TokenError(f"the gateway answered {status}: {detail or 'no token'}", EXIT_DOWN)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    user = args.pop(0) if args and not args[0].startswith("-") else ""
    try:
        settings = load(
            TokenSettings,
            prefix="ESSAIM_TOKEN_",
            argv=args,
            prog="python -m services token USER",
            description="Print a fresh access token for USER (admin, alice) of the system that"
            " `make up` started.\nExit status: 0 token printed, 1 refused, 2 bad usage or"
            " missing file, 3 system down, 4 rate-limited.",
        )
    except SettingsError as exc:
        print(f"services token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not user:
        print("services token: give the user: python -m services token USER", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = asyncio.run(fetch_token(settings, user))
    except TokenError as exc:
        print(f"services token: {exc}", file=sys.stderr)
        return exc.code
    print(token)
    return 0
