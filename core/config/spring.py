"""The config service's Spring Cloud Config API: Spring's config clients and their ports, unchanged.

Served beside the native ``/v1`` API, over the same documents:

=============================================  =============================================
``GET /{application}/{profile}[/{label}]``     Spring's ``Environment`` JSON
``GET [/{label}]/{application}-{profile}.yml``  the merged config as YAML (also ``.yaml``)
``… .properties``, ``… .json``                 as ``key: value`` lines; as nested JSON
``POST /encrypt``, ``POST /decrypt``           a value for ``{cipher}``; its plaintext
=============================================  =============================================

The ``Environment`` is ``{name, profiles, label, version, state,
propertySources}``: one property source per Essaim document that exists,
highest priority first (``{app}-{profile}`` for each profile, the last
profile first, then ``{app}``, then ``application``), each named
``essaim:{document}`` and flattened to dotted keys (``billing.tax_rate``,
``replicas[0].host``). ``profile`` may list several profiles separated by
commas, as Spring clients send them. The ``version`` changes whenever a
source does. Essaim keeps no branches: a label is accepted, echoed and
otherwise ignored.

Secrets as Spring serves them: the ``{cipher}`` values are decrypted by the
server, for a client that holds the token (``CONFIGSVC_TOKEN``, as a bearer
or as the HTTP Basic password, which is how Spring clients send
``spring.cloud.config.password``); without it the answer is 401 when a
source holds one. A value that no longer decrypts is served as Spring
serves it: ``invalid.{key}`` with ``<n/a>``. ``/encrypt`` answers the text
to put after ``{cipher}`` and ``/decrypt`` takes it (with or without the
prefix); both need the token.

Names: the application ``v1`` is refused (404): ``/v1/...`` is the native
API's. Application and profile names are folded to lower case, then follow
the documents' name rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from core import log
from core.config.crypto import CIPHER_PREFIX, Cipher, SecretReads
from core.config.document import check_name
from core.config.merge import deep_merge
from core.config.store import Merged, Version
from core.errors import BadRequest, NotFound, ServiceUnavailable, Unauthorized, Unprocessable
from core.http import json_response, read_body

__all__ = ["Backend", "add_routes", "flatten", "to_properties", "to_yaml"]

logger = log.get("configsvc")

RESERVED = "v1"
MAX_PLAINTEXT = 64 * 1024
LABEL_RE = re.compile(r"^[^\x00-\x1f/]{1,128}\Z")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\Z")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}
_FILE = r"{file:[^/]+\.(?:yml|yaml|properties|json)}"


@dataclasses.dataclass(frozen=True)
class Backend:
    """What the Spring API needs from the config service.

    ``merged`` reads the merged config of an app and profile (importing the
    directory first when Redis was emptied); ``authorize`` raises
    :class:`~core.errors.Unauthorized` unless the request holds the token.
    """

    merged: Callable[[str, str], Awaitable[Merged]]
    secrets: SecretReads
    authorize: Callable[[web.Request], None]


BACKEND = web.AppKey("spring_backend", Backend)


# ----------------------------------------------------------------------------- formats


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``doc`` as Spring's flat property map: dotted tables, indexed arrays (``a.b[0].c``).

    Empty tables and arrays have no leaf, so no key, as in Spring's YAML loading.
    """
    out: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            out[path] = value

    walk(doc, prefix)
    return out


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    # A JSON string is a YAML double-quoted scalar: its escapes are YAML's too.
    return orjson.dumps(str(value)).decode()


def _yaml_key(key: str) -> str:
    if _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS:
        return key
    return orjson.dumps(key).decode()


def to_yaml(doc: Mapping[str, Any]) -> str:
    """``doc`` as block YAML that any YAML 1.1 or 1.2 parser reads back equal."""
    lines: list[str] = []

    def block(value: Any, indent: int) -> None:
        pad = " " * indent
        if isinstance(value, Mapping):
            for key, item in value.items():
                head = f"{pad}{_yaml_key(str(key))}:"
                if isinstance(item, Mapping | list | tuple) and item:
                    lines.append(head)
                    block(item, indent + 2)
                else:
                    lines.append(f"{head} {_inline(item)}")
        else:
            for item in value:
                if isinstance(item, Mapping | list | tuple) and item:
                    lines.append(f"{pad}-")
                    block(item, indent + 2)
                else:
                    lines.append(f"{pad}- {_inline(item)}")

    def _inline(item: Any) -> str:
        if isinstance(item, Mapping):
            return "{}"
        if isinstance(item, list | tuple):
            return "[]"
        return _yaml_scalar(item)

    block(doc, 0)
    return "\n".join(lines) + "\n" if lines else "{}\n"


def _properties_escape(text: str, *, key: bool) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\f":
            out.append("\\f")
        elif (key and ch in "=:#!") or (ch == " " and (key or i == 0)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def to_properties(flat: Mapping[str, Any]) -> str:
    """Spring's ``.properties`` answer: ``key: value`` lines, escaped as Java properties."""
    lines = []
    for key, value in flat.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            text = ""
        else:
            text = str(value)
        lines.append(f"{_properties_escape(key, key=True)}: {_properties_escape(text, key=False)}")
    return "\n".join(lines) + ("\n" if lines else "")


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Sources:
    """The documents serving one request, highest priority first, and their combined version."""

    versions: tuple[Version, ...]
    layers: tuple[Mapping[str, Any], ...]
    version: str

    @property
    def merged(self) -> dict[str, Any]:
        return deep_merge(*reversed(self.layers))


def _names(application: str, profile: str) -> tuple[str, list[str]]:
    """The application and its profiles (comma-separated in ``profile``), checked and folded."""
    application = application.lower()
    if application == RESERVED:
        raise NotFound(
            f"the application name {RESERVED!r} is reserved: /{RESERVED}/... is the config "
            "service's own API"
        )
    check_name(application, "application")
    profiles = [check_name(p.strip(), "profile") for p in profile.lower().split(",")]
    return application, profiles


def _label(request: web.Request) -> str | None:
    label = request.match_info.get("label")
    if label is not None and not LABEL_RE.match(label):
        raise Unprocessable("a label is 1 to 128 characters, no '/' or control character")
    return label


async def _sources(backend: Backend, application: str, profiles: list[str]) -> Sources:
    """Every existing source of ``application`` with ``profiles``, highest priority first."""
    seen: dict[str, tuple[Version, Mapping[str, Any]]] = {}
    specific: list[str] = []
    shared: list[str] = []
    for profile in reversed(profiles):
        merged = await backend.merged(application, profile)
        for version, layer in zip(merged.sources, merged.layers, strict=True):
            seen[version.name] = (version, layer)
        for version in reversed(merged.sources):
            if version.name in (application, "application"):
                if version.name not in shared:
                    shared.append(version.name)
            elif version.name not in specific:
                specific.append(version.name)
    shared.sort(key=lambda name: name == "application")  # the app's own document first
    order = specific + shared
    versions = tuple(seen[name][0] for name in order)
    text = "|".join(f"{v.name}:{v.version}:{v.hash}" for v in versions)
    return Sources(
        versions=versions,
        layers=tuple(seen[name][1] for name in order),
        version=hashlib.sha256(text.encode()).hexdigest()[:16],
    )


def _decrypted(
    backend: Backend, request: web.Request, sources: Sources, what: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The flattened sources with ``{cipher}`` values decrypted, and the response's headers.

    401 when a source holds a secret and the request has no token.
    """
    secrets = backend.secrets
    holds = any(
        secrets.holds_secrets(v.hash, layer)
        for v, layer in zip(sources.versions, sources.layers, strict=True)
    )
    headers = {"Cache-Control": "no-cache"}
    if holds:
        try:
            backend.authorize(request)
        except Unauthorized as exc:
            raise Unauthorized(
                f"{what} holds encrypted values: reading it requires the config service's "
                "token (HTTP Basic password or bearer)",
                headers={"WWW-Authenticate": _challenge(exc)},
            ) from None
        headers = {"Cache-Control": "no-store", "Vary": "Authorization"}
    flats = []
    for version, layer in zip(sources.versions, sources.layers, strict=True):
        flat = flatten(layer)
        if holds:
            flat = _decrypt_flat(backend, flat, version.name)
        flats.append(flat)
    return flats, headers


def _challenge(exc: Unauthorized) -> str:
    """The native challenge, and Basic: what Spring clients answer with their password."""
    native = exc.headers.get("WWW-Authenticate", "")
    basic = 'Basic realm="essaim-configsvc"'
    return f"{native}, {basic}" if native else basic


def _decrypt_flat(backend: Backend, flat: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cipher = backend.secrets.cipher
    for key, value in flat.items():
        if isinstance(value, str) and value.startswith(CIPHER_PREFIX):
            try:
                if cipher is None:
                    raise ValueError("no key")
                out[key] = cipher.decrypt(value)
            except ValueError:
                # Spring's answer for a value it can't decrypt; the value is never logged.
                logger.error("%s: %s does not decrypt with the key in force", source, key)
                out[f"invalid.{key}"] = "<n/a>"
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- handlers


async def environment(request: web.Request) -> web.Response:
    """``GET /{application}/{profile}[/{label}]``: Spring's ``Environment``."""
    backend = request.app[BACKEND]
    application, profiles = _names(request.match_info["application"], request.match_info["profile"])
    label = _label(request)
    sources = await _sources(backend, application, profiles)
    flats, headers = _decrypted(
        backend, request, sources, f"the config of {application}/{','.join(profiles)}"
    )
    body = {
        "name": request.match_info["application"],
        "profiles": profiles,
        "label": label,
        "version": sources.version,
        "state": None,
        "propertySources": [
            {"name": f"essaim:{v.name}", "source": flat}
            for v, flat in zip(sources.versions, flats, strict=True)
        ],
    }
    return json_response(body, headers={**headers, "ETag": f'"{sources.version}"'})


async def file(request: web.Request) -> web.Response:
    """``GET [/{label}]/{application}-{profile}.(yml|yaml|properties|json)``: the merged config."""
    backend = request.app[BACKEND]
    name, _, ext = request.match_info["file"].rpartition(".")
    application, sep, profile = name.rpartition("-")
    if not sep or not application or not profile:
        raise NotFound(f"expected /{{application}}-{{profile}}.{ext}, got {name[:80]!r}.{ext}")
    application, profiles = _names(application, profile)
    _label(request)
    sources = await _sources(backend, application, profiles)
    flats, headers = _decrypted(
        backend, request, sources, f"the config of {application}/{','.join(profiles)}"
    )
    if ext == "properties":
        merged_flat: dict[str, Any] = {}
        for flat in reversed(flats):
            merged_flat.update(flat)
        return web.Response(text=to_properties(merged_flat), content_type="text/plain",
                            headers=headers)  # fmt: skip
    nested = _nested(sources, flats)
    if ext == "json":
        return json_response(nested, headers=headers)
    return web.Response(text=to_yaml(nested), content_type="text/plain", headers=headers)


def _nested(sources: Sources, flats: list[dict[str, Any]]) -> dict[str, Any]:
    """The deep merge of the sources, with the decrypted values of ``flats`` put back."""
    merged = sources.merged
    decrypted = {k: v for flat in reversed(flats) for k, v in flat.items()}
    out: dict[str, Any] = _replace_leaves(merged, "", decrypted)
    return out


def _replace_leaves(value: Any, path: str, flat: Mapping[str, Any]) -> Any:
    if isinstance(value, Mapping):
        return {k: _replace_leaves(v, f"{path}.{k}" if path else k, flat) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_leaves(v, f"{path}[{i}]", flat) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith(CIPHER_PREFIX):
        return flat.get(path, "<n/a>")
    return value


async def _text_body(request: web.Request) -> str:
    raw = await read_body(request, MAX_PLAINTEXT)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 (byte {exc.start})") from None
    if request.content_type == "application/x-www-form-urlencoded" and text.endswith("="):
        text = text[:-1]  # curl -d sends a form: Spring strips its '=' too
    if not text:
        raise BadRequest("the body is empty: send the text as text/plain")
    return text


def _cipher(request: web.Request) -> Cipher:
    backend = request.app[BACKEND]
    try:
        backend.authorize(request)
    except Unauthorized as exc:
        exc.headers["WWW-Authenticate"] = _challenge(exc)
        raise
    cipher = backend.secrets.cipher
    if cipher is None:
        raise ServiceUnavailable(
            "encryption is not configured: start the config service with CONFIGSVC_ENCRYPT_KEY"
        )
    return cipher


async def encrypt(request: web.Request) -> web.Response:
    """``POST /encrypt``: the text to write after ``{cipher}`` (Spring's answer, without the prefix)."""
    cipher = _cipher(request)
    value = cipher.encrypt(await _text_body(request)).removeprefix(CIPHER_PREFIX)
    return web.Response(
        text=value, content_type="text/plain", headers={"Cache-Control": "no-store"}
    )


async def decrypt(request: web.Request) -> web.Response:
    """``POST /decrypt``: the plaintext of a value made by ``/encrypt`` (400 when it doesn't decrypt)."""
    cipher = _cipher(request)
    text = (await _text_body(request)).strip()
    try:
        plain = cipher.decrypt(CIPHER_PREFIX + text.removeprefix(CIPHER_PREFIX))
    except ValueError:
        raise BadRequest("the value does not decrypt with the config service's key") from None
    return web.Response(
        text=plain, content_type="text/plain", headers={"Cache-Control": "no-store"}
    )


def add_routes(app: web.Application, backend: Backend) -> None:
    """The Spring routes; add them after the native ones (``/v1/...`` stays the native API's)."""
    app[BACKEND] = backend
    app.router.add_post("/encrypt", encrypt)
    app.router.add_post("/decrypt", decrypt)
    app.router.add_get("/" + _FILE, file)
    app.router.add_get("/{label}/" + _FILE, file)
    app.router.add_get("/{application}/{profile}", environment)
    app.router.add_get("/{application}/{profile}/{label}", environment)
