"""Process settings: one frozen object per process, read once at start.

A component declares its settings as a frozen dataclass whose fields carry an
:func:`option` (help text and, optionally, the environment variable's name).
:func:`load` builds the ``argparse`` parser from those fields, takes each value
from the command line, else the environment variable, else the default, and
converts it with the field's type. A malformed value raises
:class:`~core.errors.SettingsError` with one line naming the variable or flag.

No other module reads ``os.environ``: entry points call :func:`load` and pass
the result explicitly.

Secrets at rest: every component runs with the umask :data:`PRIVATE_UMASK`
(set by :func:`core.runner.configure` and by the launcher), so whatever it
creates (databases and their ``-wal``/``-shm`` files, config copies, logs,
Redis's data) is owner-only from its first byte. :func:`private_dir` and
:func:`private_file` make the same guarantee for code that may run under
another umask (tests, an embedding application), and tighten what an older
run left readable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import math
import os
import stat
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from core.errors import SettingsError

__all__ = [
    "PRIVATE_UMASK",
    "CommonSettings",
    "Secret",
    "check_redis_url",
    "is_loopback",
    "load",
    "option",
    "private_dir",
    "private_file",
]

T = TypeVar("T")

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs.

    Call :meth:`reveal` where the value is really needed (comparing a token).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def option(help: str, *, env: str | None = None, flag: str | None = None) -> dict[str, Any]:
    """Field metadata: ``field(default=..., metadata=option("help"))``.

    ``env`` names the environment variable (default: the component's prefix
    followed by the field name in upper case); ``flag`` the command-line flag
    (default: ``--field-name``).
    """
    return {"help": help, "env": env, "flag": flag}


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """Settings that every component has. Components subclass it."""

    host: str = dataclasses.field(default="127.0.0.1", metadata=option("address to listen on"))
    port: int = dataclasses.field(default=0, metadata=option("TCP port to listen on"))
    redis_url: str = dataclasses.field(
        default="redis://127.0.0.1:6379/0",
        metadata=option("Redis server URL (shared by all components)", env="REDIS_URL"),
    )
    log_format: LogFormat = dataclasses.field(
        default="text", metadata=option("log format: readable text or one JSON object a line")
    )
    log_level: LogLevel = dataclasses.field(default="info", metadata=option("log level"))
    shutdown_timeout: float = dataclasses.field(
        default=10.0, metadata=option("seconds to drain in-flight requests on SIGTERM/SIGINT")
    )
    listen_fd: int = dataclasses.field(
        default=-1,
        metadata=option(
            "a listening socket inherited from the parent process (the launcher), served"
            " instead of binding host:port; -1: none"
        ),
    )

    def validate(self) -> None:
        """Raise :class:`SettingsError` on a value that converts but makes no sense."""
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port: expected 0-65535, got {self.port}")
        if self.listen_fd < -1:
            raise SettingsError(
                f"listen_fd: expected a file descriptor or -1, got {self.listen_fd}"
            )
        if self.shutdown_timeout <= 0:
            raise SettingsError(f"shutdown_timeout: expected > 0, got {self.shutdown_timeout}")
        check_redis_url(self.redis_url)


def check_redis_url(url: str) -> None:
    """A malformed ``REDIS_URL`` fails at start with one line naming the accepted forms."""
    from core.redis import parse_url  # core.redis imports this module's errors, not it

    parse_url(url)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _converter(tp: Any) -> tuple[Callable[[str], Any], tuple[str, ...] | None]:
    """The function that turns one string into a value of type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = tuple(str(c) for c in typing.get_args(tp))

        def pick(text: str) -> str:
            if text not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
            return text

        return pick, choices
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner, inner_choices = _converter(args[0])

        def optional(text: str) -> Any:
            return None if text == "" else inner(text)

        return optional, inner_choices
    if tp is bool:
        return _bool, None
    if tp is int:

        def integer(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None

        return integer, None
    if tp is float:

        def number(text: str) -> float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {text!r}")
            return value

        return number, None
    if tp is Secret:
        return Secret, None
    if tp is str:
        return str, None
    raise TypeError(f"unsupported settings type {tp!r}")


def _names(cls: type[Any], prefix: str) -> list[tuple[dataclasses.Field[Any], str, str]]:
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        env = meta.get("env") or f"{prefix}{f.name.upper()}"
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        out.append((f, env, flag))
    return out


def build_parser(
    cls: type[Any], prefix: str, prog: str, description: str
) -> argparse.ArgumentParser:
    """The ``argparse`` parser for ``cls``; ``--help`` shows each flag's variable and default."""
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each flag defaults to its environment variable, then to the default shown.",
    )
    for f, env, flag in _names(cls, prefix):
        _, choices = _converter(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "''" if default in ("", None) else default
        if hints[f.name] is Secret:
            shown = "unset"
        help_text = f"{f.metadata.get('help', '')} [env {env}; default {shown}]"
        # A boolean flag alone means true (``--takeover``); ``--takeover false`` still works.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if hints[f.name] is bool else {}
        parser.add_argument(
            flag,
            dest=f.name,
            metavar=f.name.upper() if choices is None else "{" + ",".join(choices) + "}",
            default=None,
            help=help_text.replace("%", "%%"),
            **extra,
        )
    return parser


def load(
    cls: type[T],
    *,
    prefix: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str = "",
    description: str = "",
) -> T:
    """Read ``cls`` from flags over environment variables over defaults.

    ``argv`` defaults to ``sys.argv[1:]`` and ``environ`` to ``os.environ``;
    ``--help`` prints and exits 0, an unknown flag exits 2 (argparse's
    contract). A value that doesn't convert raises :class:`SettingsError`
    naming the flag or the variable it came from.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prefix, prog or cls.__module__, description)
    parsed = parser.parse_args(argv)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f, env, flag in _names(cls, prefix):
        convert, _ = _converter(hints[f.name])
        raw = getattr(parsed, f.name)
        source = flag
        if raw is None and env in environ:
            raw, source = environ[env], env
        if raw is None:
            continue
        try:
            values[f.name] = convert(raw)
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}") from None
    try:
        settings = cls(**values)
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    check = getattr(settings, "validate", None)
    if callable(check):
        check()
    return settings


# ----------------------------------------------------------------------------- secrets at rest

#: Files 0600 and directories 0700: nobody but the owner reads or lists them.
PRIVATE_UMASK = 0o077


def _tighten(path: Path, mode: int) -> None:
    """Take away group and other bits from ``path`` when we own it."""
    with contextlib.suppress(OSError):
        info = path.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(stat.S_IMODE(info.st_mode) & mode)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), with any missing parents.

    Missing directories are created 0700 (the umask can only remove bits);
    an existing ``path`` of ours is tightened to 0700.
    """
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read (0600), created empty when missing.

    Created with ``os.open(..., 0o600)``, so it is never readable by others;
    an existing file of ours is tightened to 0600.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    _tighten(path, 0o600)
    return path
