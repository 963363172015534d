"""Cross-site request forgery defences for requests authenticated by a session cookie.

A browser attaches cookies to requests that other sites make it send, so a
request that carries a session cookie proves nothing about who wrote it.
Two checks, both required for every state-changing request (any method
but GET, HEAD, OPTIONS, TRACE) that a session authenticates:

1. **Where it comes from** (:func:`check_origin`): when the request has an
   ``Origin`` header it must be the gateway's own origin (``http://`` or
   ``https://`` followed by the request's ``Host``) or one of the origins
   configured (``--session-origins``). Without ``Origin``, a
   ``Sec-Fetch-Site`` header, when present, must say ``same-origin`` or
   ``none`` (the user typed it). A request with neither (not a browser, or
   a very old one) relies on the second check.
2. **A token only the page can know** (:func:`check_token`): the
   ``X-CSRF-Token`` header must equal the session's CSRF token, which the
   login answer and ``GET /-/session`` give to the page (and the
   ``essaim_csrf`` cookie carries, readable by the page's scripts). Another
   site can make the browser send the cookie but can read neither the
   answer nor the cookie, and can't set a custom header on a cross-site
   request without a CORS preflight, which the gateway does not grant. The
   header is compared with the value kept in the session in Redis, not with
   the cookie (a synchronizer token rather than a plain double submit), so
   a cookie planted by a sibling subdomain doesn't pass either.

Both refusals are 403 problem details, and nothing is forwarded.
``SameSite=Strict`` on the session cookie is a third layer, left to the
browser.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Sequence

from core.errors import Forbidden

__all__ = ["CSRF_HEADER", "Origins", "check_origin", "check_token", "header"]

CSRF_HEADER = "X-CSRF-Token"
_CSRF = CSRF_HEADER.lower().encode()
Headers = Sequence[tuple[bytes, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Origins:
    """The origins allowed besides the gateway's own (``scheme://host[:port]``, lower-case)."""

    extra: frozenset[str] = frozenset()

    @staticmethod
    def parse(text: str) -> Origins:
        """``https://a.example,http://localhost:3000``; ``ValueError`` for anything else."""
        found = set()
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            scheme, sep, rest = item.partition("://")
            if (
                scheme not in ("http", "https")
                or not sep
                or not rest
                or any(c in rest for c in "/?# ")
            ):
                raise ValueError(f"{item!r}: expected an origin, scheme://host[:port]")
            found.add(item.lower())
        return Origins(frozenset(found))


def header(headers: Headers, wanted: bytes) -> str | None:
    """The first value of header ``wanted`` (lower-case), as text; None when absent."""
    for name, value in headers:
        if name.lower() == wanted:
            return value.decode("latin-1")
    return None


def check_origin(headers: Headers, origins: Origins) -> None:
    """Return if the request may come from where it says; :class:`Forbidden` (403) otherwise."""
    origin = header(headers, b"origin")
    if origin is not None:
        origin = origin.strip().lower()
        if origin in origins.extra:
            return
        host = (header(headers, b"host") or "").strip().lower()
        if host and origin in (f"http://{host}", f"https://{host}"):
            return
        raise Forbidden(
            f"cross-origin request refused: Origin {origin!r} is neither this gateway's "
            "nor an allowed one (--session-origins)"
        )
    site = header(headers, b"sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused: Sec-Fetch-Site is {site.strip()!r}")


def check_token(headers: Headers, expected: str) -> None:
    """Return if ``X-CSRF-Token`` is the session's token; :class:`Forbidden` (403) otherwise."""
    given = header(headers, _CSRF)
    if given is None:
        raise Forbidden(
            f"a state-changing request with a session needs the {CSRF_HEADER} header "
            "(the csrf value of POST or GET /-/session)"
        )
    if not hmac.compare_digest(given.strip().encode("latin-1"), expected.encode("latin-1")):
        raise Forbidden(f"the {CSRF_HEADER} header is not this session's CSRF token")
