"""Conditional requests on config documents (RFC 9110 §13): ETags, preconditions, 304 and 412.

A document's representations each have their own entity tag, made of its
version and the start of its content hash, and of what the representation
adds: ``"7.0123456789abcdef"`` (JSON), ``"7.0123456789abcdef.toml"``,
``"7.0123456789abcdef.decrypted"``... so a cache holding the JSON never
takes a TOML answer for the same (``Vary: Accept`` says the answer depends
on ``Accept``).

For writes, any representation's tag names the version it came from:
``If-Match`` holds when one of its (strong) tags names the current version,
``If-Match: *`` when the document exists, ``If-None-Match: *`` when it does
not (create only), and an ``If-None-Match`` list when none of its tags names
the current version. :func:`write_condition` turns those headers into the
condition :class:`core.config.store.ConfigStore` checks atomically with the
write, so two editors that read the same version can't both write.
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from core.config.store import Version
from core.errors import PreconditionFailed

__all__ = ["document_etag", "etag_matches", "modified_since", "write_condition"]

_TAG_RE = re.compile(r'^(W/)?"(\d+)\.([0-9a-f]{1,16})(?:\.[a-z.]+)?"\Z')


def document_etag(version: Version, *, toml: bool = False, decrypted: bool = False) -> str:
    """The entity tag of one representation of ``version``."""
    suffix = (".decrypted" if decrypted else "") + (".toml" if toml else "")
    return f'"{version.version}.{(version.hash or "")[:16]}{suffix}"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` lists ``etag`` (weak comparison) or is ``*``."""
    if not header:
        return False
    return any(tag.removeprefix("W/") in ("*", etag) for tag in _tags(header))


def _names(tag: str, current: Version | None, *, strong: bool) -> bool:
    """Whether ``tag`` names ``current`` (any of its representations)."""
    found = _TAG_RE.match(tag)
    if found is None or current is None or (strong and found.group(1)):
        return False
    return int(found.group(2)) == current.version and (current.hash or "").startswith(
        found.group(3)
    )


def _expected(current: Version) -> str:
    return f"{current.version}:{(current.hash or '')[:16]}"


def write_condition(
    name: str, if_match: str | None, if_none_match: str | None, current: Version | None
) -> str:
    """The store's ``expect`` for a write with these headers; :class:`PreconditionFailed` now
    when they already fail against ``current`` (the document as read before the write).

    ``""`` when the request has no precondition.
    """
    shown = "none" if current is None else f"version {current.version}"
    if if_match is not None:
        tags = _tags(if_match)
        if "*" in tags:
            if current is None:
                raise PreconditionFailed(
                    f"If-Match: * but there is no document named {name!r}",
                    current_version=None,
                )
            return "*"
        if not any(_names(tag, current, strong=True) for tag in tags):
            etag = document_etag(current) if current else None
            raise PreconditionFailed(
                f"document {name!r} changed: it is at {shown} ({etag or 'absent'}), "
                f"not the one If-Match names ({if_match[:100]}); GET it again, "
                "apply your change to it and PUT with its ETag",
                headers={"ETag": etag} if etag else None,
                current_version=current.version if current else None,
            )
        assert current is not None
        return _expected(current)
    if if_none_match is not None:
        tags = _tags(if_none_match)
        if "*" in tags:
            if current is not None:
                raise PreconditionFailed(
                    f"document {name!r} already exists ({shown}); If-None-Match: * creates only",
                    headers={"ETag": document_etag(current)},
                    current_version=current.version,
                )
            return "!"
        if any(_names(tag, current, strong=False) for tag in tags):
            assert current is not None
            raise PreconditionFailed(
                f"document {name!r} is at {shown}, which If-None-Match excludes",
                headers={"ETag": document_etag(current)},
                current_version=current.version,
            )
        # Any other version: the write must not land on the current one if it changes
        # meanwhile to a listed one; checking it is current now is enough then.
        return _expected(current) if current is not None else "!"
    return ""


def modified_since(header: str | None, time_ms: int) -> bool:
    """Whether a document last changed at ``time_ms`` is newer than ``If-Modified-Since``.

    True when the header is absent or not a valid HTTP date (RFC 9110: ignore it).
    """
    if not header:
        return True
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return True
    if since.tzinfo is None:
        return True
    # Last-Modified has whole seconds: compare at that resolution.
    return time_ms // 1000 > int(since.timestamp())
