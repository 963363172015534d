"""The config service: ``python -m configsvc``.

An HTTP API over config documents kept in Redis (:mod:`core.config.store`):
the merged config of an app and profile, raw documents with their versions,
history and rollback, and the import of the config directory
(:mod:`core.config.files`) at start and on ``POST /v1/reload``. Every change
is published on the change channel, which :class:`core.config.client.ConfigClient`
follows to apply it without a restart.

Encrypted values (:mod:`core.config.crypto`): a ``{cipher}...`` value is
stored as written, accepted only when it decrypts with ``CONFIGSVC_ENCRYPT_KEY``,
and served decrypted by ``GET /v1/config/...`` to a client with the token only;
``POST /v1/encrypt`` makes such values. Neither plaintext nor ciphertext is
ever logged.

Every version is also kept on disk (:mod:`core.config.journal`, an SQLite
file in ``--data-dir``), recorded before a write is answered. When the
service finds its Redis emptied (restarted without persistence), it restores
Redis from that file, then imports the directory: a change made over the API
survives, and a file edited meanwhile still becomes a new version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from aiohttp import web
from prometheus_client import Counter, Gauge

from core import log
from core.config import openapi, spring
from core.config.conditional import document_etag, etag_matches, modified_since, write_condition
from core.config.crypto import Cipher, SecretReads, Undecryptable, check_ciphers, decrypt_document
from core.config.document import MAX_BYTES, Format, check_name, parse
from core.config.events import ChangeHub, stream_changes
from core.config.files import Importer
from core.config.journal import Journal
from core.config.reads import SharedReads
from core.config.store import HISTORY_KEPT, ConfigStore, Merged, NotImported, WriteResult
from core.errors import (
    BadRequest,
    InternalError,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
    SettingsError,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    problem_middleware,
)
from core.http import (
    Check,
    add_health_routes,
    json_response,
    read_body,
    redis_check,
    redis_health,
    redis_unavailable,
    require_bearer,
)
from core.metrics import HTTPMetrics
from core.redis import REDIS_ERRORS, Redis, connect
from core.runner import BAD_SETTINGS, Site, configure, run
from core.settings import CommonSettings, Secret, is_loopback, option
from core.tasks import TaskSet

logger = log.get("configsvc")

MEDIA_TYPES: dict[str, Format] = {
    "application/json": "json",
    "application/toml": "toml",
}
REVISION_HEADER = "X-Config-Rev"
#: The largest plaintext ``POST /v1/encrypt`` takes (its value must fit in a document).
MAX_PLAINTEXT = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Settings(CommonSettings):
    """The config service's settings (prefix ``CONFIGSVC_``)."""

    port: int = dataclasses.field(default=8888, metadata=option("TCP port to listen on"))
    token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option(
            "bearer token required for writes and for reading configs with encrypted values; "
            "required off loopback and with an encrypt key"
        ),
    )
    encrypt_key: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option(
            "Fernet key(s), comma-separated, the first encrypting, for {cipher} values; "
            "unset: documents with {cipher} values are refused"
        ),
    )
    config_dir: str = dataclasses.field(
        default="./config",
        metadata=option("directory of TOML documents imported at start and on POST /v1/reload"),
    )
    data_dir: str = dataclasses.field(
        default="data/configsvc",
        metadata=option("directory of the durable copy of every version (configsvc.db)"),
    )
    import_check_interval: float = dataclasses.field(
        default=2.0,
        metadata=option("seconds between checks that Redis still holds the imported directory"),
    )

    def validate(self) -> None:
        super().validate()
        if self.import_check_interval <= 0:
            raise SettingsError(
                f"CONFIGSVC_IMPORT_CHECK_INTERVAL: expected > 0, got {self.import_check_interval}"
            )
        if not self.token and not is_loopback(self.host):
            raise SettingsError(
                f"CONFIGSVC_TOKEN: required when listening on {self.host} (not loopback): "
                "anyone who can write config can change every service's behaviour"
            )
        if self.encrypt_key and not self.token:
            raise SettingsError(
                "CONFIGSVC_TOKEN: required with CONFIGSVC_ENCRYPT_KEY: without it, anyone "
                "who can reach the service reads the decrypted secrets"
            )
        self.cipher()

    def cipher(self) -> Cipher | None:
        """The cipher of ``encrypt_key``, None when unset; :class:`SettingsError` when malformed."""
        return Cipher(self.encrypt_key) if self.encrypt_key else None


@dataclasses.dataclass(frozen=True)
class Meters:
    writes: Counter
    reloads: Counter
    import_errors: Gauge


# Typed application keys.
SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[Redis] = web.AppKey("redis")
STORE = web.AppKey("store", ConfigStore)
IMPORTER = web.AppKey("importer", Importer)
JOURNAL = web.AppKey("journal", Journal)
READS = web.AppKey("reads", SharedReads)
METRICS = web.AppKey("metrics", HTTPMetrics)
METERS = web.AppKey("meters", Meters)
SECRETS = web.AppKey("secrets", SecretReads)
HUB = web.AppKey("hub", ChangeHub)

# ----------------------------------------------------------------------------- helpers


def _require_token(request: web.Request) -> None:
    require_bearer(request, request.app[SETTINGS].token, "CONFIGSVC_TOKEN")


def _require_token_for_secrets(request: web.Request, what: str) -> None:
    """:class:`Unauthorized` unless the request carries the token: ``what`` holds secrets."""
    try:
        _require_token(request)
    except Unauthorized as exc:
        raise Unauthorized(
            f"{what} holds encrypted values: reading it requires "
            "'Authorization: Bearer <CONFIGSVC_TOKEN>'",
            headers=exc.headers,
        ) from None


#: Headers of an answer that holds (or confirms) decrypted secrets: never stored by a
#: cache, and never served to a request with other credentials.
SECRET_HEADERS = {"Cache-Control": "no-store", "Vary": "Authorization"}


def _document_name(request: web.Request) -> str:
    return check_name(request.match_info["name"])


def _write_body(result: WriteResult, hash_: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "name": result.name,
        "version": result.version,
        "hash": hash_,
        "changed": result.changed,
        "rev": result.rev,
        **extra,
    }


async def _write(request: web.Request, write: Callable[[], Awaitable[WriteResult]]) -> WriteResult:
    """Run ``write``; when Redis was emptied, import the directory first so it can't undo it."""
    try:
        return await write()
    except NotImported:
        await request.app[IMPORTER].ensure()
        return await write()


async def _restored(request: web.Request) -> ConfigStore:
    """The store, once Redis holds the config again if it was emptied (restored and imported).

    For the document endpoints, which read Redis directly: one ``EXISTS``.
    """
    store = request.app[STORE]
    if not await store.imported():
        await request.app[IMPORTER].ensure()
    return store


async def _condition(request: web.Request, name: str) -> str:
    """The store's condition for a write with ``If-Match``/``If-None-Match`` (412 when failed)."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is None and if_none_match is None:
        return ""
    current = await request.app[STORE].get(name)
    return write_condition(name, if_match, if_none_match, current)


def _lost_race(name: str, result: WriteResult) -> None:
    """412 when the document changed between the check and the write (another editor won)."""
    if result.precondition_failed:
        raise PreconditionFailed(
            f"document {name!r} changed while this request was checked (now version "
            f"{result.version}); GET it again, apply your change to it and retry with its ETag",
            current_version=result.version or None,
        )


def _count(request: web.Request, result: WriteResult) -> None:
    request.app[METERS].writes.labels("written" if result.changed else "unchanged").inc()


# ----------------------------------------------------------------------------- handlers


async def get_config(request: web.Request) -> web.Response:
    """``GET /v1/config/{app}/{profile}``: the merged config; 304 when ``If-None-Match`` matches.

    When a source holds ``{cipher}`` values the request needs the token (401
    otherwise, before any ETag comparison) and the values are served
    decrypted, with ``Cache-Control: no-store`` and ``Vary: Authorization``;
    500 when they don't decrypt with the key in force.
    """
    app_name = check_name(request.match_info["app"], "app")
    profile = check_name(request.match_info["profile"], "profile")
    store = request.app[STORE]
    merged = await _merged(request.app, app_name, profile)
    etag = f'"{merged.version}"'
    headers = {"ETag": etag, REVISION_HEADER: str(merged.rev), "Cache-Control": "no-cache"}
    secrets = request.app[SECRETS]
    secret = secrets.merged_holds_secrets(merged)
    if secret:
        _require_token_for_secrets(request, f"the config of {app_name}/{profile}")
        headers.update(SECRET_HEADERS)
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    if not secret:
        body = store.render(merged)
    else:
        try:
            body = secrets.render(merged)
        except Undecryptable as exc:
            raise _undecryptable(f"the config of {app_name}/{profile}", exc) from None
    return web.Response(body=body, content_type="application/json", headers=headers)


async def _merged(app: web.Application, app_name: str, profile: str) -> Merged:
    """The merged config, read after importing the directory when Redis was emptied."""
    merged = await app[READS].merged(app_name, profile)
    if not merged.imported:
        # Redis was emptied: serve the directory, never an empty config.
        await app[IMPORTER].ensure()
        merged = await app[READS].merged(app_name, profile)
    return merged


def _undecryptable(what: str, exc: Undecryptable) -> InternalError:
    return InternalError(
        f"{what} holds {{cipher}} values this service can't decrypt ({exc.why}; "
        f"was CONFIGSVC_ENCRYPT_KEY changed?): {', '.join(exc.paths)}"
    )


async def list_documents(request: web.Request) -> web.Response:
    """``GET /v1/documents``: every current document's name and version."""
    store = await _restored(request)
    documents = []
    for name in await store.names():
        current = await store.get(name)
        if current is not None:
            documents.append({"name": name, **current.meta()})
    return json_response({"rev": await store.rev(), "documents": documents})


def _wanted_format(request: web.Request) -> Format:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("json", "toml"):
            raise BadRequest(f"'format' must be json or toml, got {fmt[:20]!r}")
        return "toml" if fmt == "toml" else "json"
    accept = request.headers.get("Accept", "")
    return "toml" if "application/toml" in accept and "application/json" not in accept else "json"


async def get_document(request: web.Request) -> web.Response:
    """``GET /v1/documents/{name}[?version=N][&decrypt=true]``: the raw document, as JSON or TOML.

    Its version, hash and origin are in headers (``ETag``, ``X-Config-Version``,
    ``X-Config-Hash``, ``X-Config-Origin``, ``Last-Modified``). A document
    holding ``{cipher}`` values needs the token (401 otherwise) and is served
    as stored, encrypted, so that what is read can be written back as is;
    ``decrypt=true`` serves the plaintext instead (another ``ETag``). Each
    representation (JSON, TOML, decrypted) has its own ``ETag`` and the
    answer says ``Vary: Accept``; 304 when ``If-None-Match`` lists the
    representation's tag, or, without ``If-None-Match``, when it did not
    change since ``If-Modified-Since``.
    """
    name = _document_name(request)
    store = await _restored(request)
    fmt = _wanted_format(request)
    decrypt = _flag(request, "decrypt")
    raw_version = request.query.get("version")
    if raw_version is None:
        current = await store.get(name)
        if current is None:
            raise NotFound(f"no document named {name!r}")
    else:
        number = _version_number(raw_version)
        current = await store.version(name, number)
        if current is None:
            raise NotFound(f"document {name!r} has no retained version {number}")
        if current.deleted:
            raise NotFound(f"version {number} of {name!r} is its deletion: it has no content")
    secret = request.app[SECRETS].holds_secrets(current.hash, current.content)
    if secret:
        _require_token_for_secrets(request, f"document {name!r}")
    decrypt = decrypt and secret
    etag = document_etag(current, toml=fmt == "toml", decrypted=decrypt)
    headers = {
        "ETag": etag,
        "X-Config-Version": str(current.version),
        "X-Config-Hash": current.hash or "",
        "X-Config-Origin": current.origin,
        "Last-Modified": formatdate(current.time / 1000, usegmt=True),
        "Cache-Control": "no-cache",
        "Vary": "Accept",
        **(SECRET_HEADERS if secret else {}),
    }
    if secret:
        headers["Vary"] = "Accept, Authorization"
    if_none_match = request.headers.get("If-None-Match")
    if etag_matches(if_none_match, etag) or (
        if_none_match is None
        and not modified_since(request.headers.get("If-Modified-Since"), current.time)
    ):
        return web.Response(status=304, headers=headers)
    content = dict(current.content or {})
    if decrypt:
        try:
            content = decrypt_document(content, request.app[SECRETS].cipher)
        except Undecryptable as exc:
            raise _undecryptable(f"version {current.version} of {name!r}", exc) from None
    if fmt == "toml":
        return web.Response(
            text=tomli_w.dumps(content), content_type="application/toml", headers=headers
        )
    return json_response(content, headers=headers)


def _flag(request: web.Request, name: str) -> bool:
    """The boolean query parameter ``name`` (``true`` or ``false``; absent: false)."""
    raw = request.query.get(name, "false")
    if raw not in ("true", "false"):
        raise BadRequest(f"{name!r} must be true or false, got {raw[:20]!r}")
    return raw == "true"


def _version_number(raw: str) -> int:
    try:
        number = int(raw)
    except ValueError:
        raise BadRequest(f"'version' must be a version number, got {raw[:40]!r}") from None
    if number < 1:
        raise BadRequest(f"'version' must be >= 1, got {number}")
    return number


async def put_document(request: web.Request) -> web.Response:
    """``PUT /v1/documents/{name}``: a new version from a JSON or TOML body (201 when new).

    ``{cipher}`` values are stored as sent; 422 (nothing stored) when one of
    them doesn't decrypt with the key, or when no key is configured.
    ``If-Match`` (an ETag of the current version, or ``*``) and
    ``If-None-Match: *`` (create only) make it conditional: 412 when they
    don't hold, checked atomically with the write.
    """
    _require_token(request)
    name = _document_name(request)
    fmt = MEDIA_TYPES.get(request.content_type)
    if fmt is None:
        raise UnsupportedMediaType(
            f"send the document as application/json or application/toml, not {request.content_type}"
        )
    body = await read_body(request, MAX_BYTES)
    content = parse(body, fmt)
    check_ciphers(content, request.app[SECRETS].cipher, source="the body")
    store = request.app[STORE]
    expect = await _condition(request, name)
    result = await _write(
        request, lambda: store.write(name, content, "api", if_imported=True, expect=expect)
    )
    _lost_race(name, result)
    _count(request, result)
    stored = await store.get(name)
    hash_ = stored.hash if stored else None
    headers = {"ETag": document_etag(stored)} if stored else None
    if result.changed:
        logger.info("document %s: version %d (rev %d)", name, result.version, result.rev)
    return json_response(
        _write_body(result, hash_, created=result.created),
        status=201 if result.created else 200,
        headers=headers,
    )


async def delete_document(request: web.Request) -> web.Response:
    """``DELETE /v1/documents/{name}``: delete it (a version in its history); 404 when absent.

    ``If-Match`` makes it conditional, as for ``PUT`` (412).
    """
    _require_token(request)
    name = _document_name(request)
    store = request.app[STORE]
    expect = await _condition(request, name)
    result = await _write(request, lambda: store.delete(name, if_imported=True, expect=expect))
    _lost_race(name, result)
    if not result.found:
        raise NotFound(f"no document named {name!r}")
    _count(request, result)
    logger.info("document %s: deleted as version %d (rev %d)", name, result.version, result.rev)
    return json_response(_write_body(result, None, deleted=True))


async def history(request: web.Request) -> web.Response:
    """``GET /v1/documents/{name}/history``: retained versions, newest first, without content."""
    name = _document_name(request)
    versions = await (await _restored(request)).history(name)
    if not versions:
        raise NotFound(f"no document named {name!r} was ever written")
    return json_response({"name": name, "versions": [v.meta() for v in versions]})


async def rollback(request: web.Request) -> web.Response:
    """``POST /v1/documents/{name}/rollback?version=N``: make N's content current again.

    The content of N becomes a new version (none when it is already the
    current content). 404 when N is not retained; 422 when N was a deletion
    or holds ``{cipher}`` values the key in force can't decrypt.
    """
    _require_token(request)
    name = _document_name(request)
    raw = request.query.get("version")
    if raw is None:
        raise BadRequest("give the version to roll back to: ?version=N")
    number = _version_number(raw)
    store = await _restored(request)
    target = await store.version(name, number)
    if target is None:
        raise NotFound(f"document {name!r} has no retained version {number}")
    if target.deleted or target.content is None:
        raise Unprocessable(
            f"version {number} of {name!r} is its deletion; use DELETE to delete the document"
        )
    content = target.content
    check_ciphers(content, request.app[SECRETS].cipher, source=f"version {number} of {name!r}")
    result = await _write(
        request, lambda: store.write(name, content, f"rollback:{number}", if_imported=True)
    )
    _count(request, result)
    if result.changed:
        logger.info("document %s: rolled back to %d as version %d", name, number, result.version)
    return json_response(_write_body(result, target.hash, rolled_back_to=number))


async def reload(request: web.Request) -> web.Response:
    """``POST /v1/reload``: import the config directory again; 422 listing broken files."""
    _require_token(request)
    report = await request.app[IMPORTER].run("reload")
    meters = request.app[METERS]
    meters.import_errors.set(len(report.errors))
    if report.errors:
        meters.reloads.labels("refused").inc()
        raise Unprocessable(
            f"{len(report.errors)} file(s) in the config directory can't be imported; "
            "nothing changed: " + "; ".join(str(e) for e in report.errors),
            errors=[e.to_dict() for e in report.errors],
        )
    meters.reloads.labels("imported").inc()
    return json_response(report.to_dict())


async def encrypt(request: web.Request) -> web.Response:
    """``POST /v1/encrypt``: the ``{cipher}`` value of a plaintext, to write in a document.

    The body is the plaintext, exactly: ``text/plain`` (UTF-8) answers
    ``text/plain``, a JSON string (``application/json``) answers a JSON
    string. Needs the token when one is set (401); 503 without a key; 415
    for another media type; 400 for text that is not UTF-8 or malformed
    JSON; 422 for an empty plaintext or JSON that is not a string; 413 past
    :data:`MAX_PLAINTEXT`. Neither the plaintext nor the value is logged.
    """
    _require_token(request)
    cipher = request.app[SECRETS].cipher
    if cipher is None:
        raise ServiceUnavailable(
            "encryption is not configured: start the config service with CONFIGSVC_ENCRYPT_KEY"
        )
    ctype = request.content_type
    if ctype not in ("text/plain", "application/json"):
        raise UnsupportedMediaType(
            f"send the plaintext as text/plain or as a JSON string (application/json), not {ctype}"
        )
    raw = await read_body(request, MAX_PLAINTEXT)
    plaintext: Any
    if ctype == "text/plain":
        try:
            plaintext = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the plaintext is not UTF-8 (byte {exc.start})") from None
    else:
        try:
            plaintext = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # orjson's message names the position, never the text.
            raise BadRequest(f"malformed JSON in the body: {exc.msg}") from None
        if not isinstance(plaintext, str):
            raise Unprocessable("the JSON body must be a string: the plaintext to encrypt")
    if not plaintext:
        raise Unprocessable("the plaintext is empty: nothing to encrypt")
    value = cipher.encrypt(plaintext)
    headers = {"Cache-Control": "no-store"}
    if ctype == "text/plain":
        return web.Response(text=value, content_type="text/plain", headers=headers)
    return json_response(value, headers=headers)


async def health_page(request: web.Request) -> web.Response:
    app = request.app
    redis_ok = await redis_health(app[REDIS])
    body = {
        "status": "UP" if redis_ok else "DEGRADED",
        "redis": "UP" if redis_ok else "DOWN",
        "import": app[IMPORTER].describe(),
        "journal": {"path": str(app[JOURNAL].path), "recorded": app[JOURNAL].recorded},
    }
    return json_response(body, status=200 if redis_ok else 503)


# ----------------------------------------------------------------------------- app


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    journal = await Journal.open(settings.data_dir, keep=HISTORY_KEPT)
    client = connect(settings.redis_url)
    app[REDIS] = client
    app[JOURNAL] = journal
    app[STORE] = ConfigStore(client, journal=journal)
    app[READS] = SharedReads(app[STORE])
    yield
    await app[READS].close()
    await client.aclose()
    await journal.close()


def readiness(app: web.Application) -> dict[str, Check]:
    """Ready while Redis answers and the journal on disk can be read."""
    return {"redis": redis_check(app[REDIS]), "journal": app[JOURNAL].check}


async def _importer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The directory importer: started here, cancelled and awaited at stop."""
    settings = app[SETTINGS]
    importer = Importer(
        app[STORE],
        Path(settings.config_dir),
        settings.import_check_interval,
        cipher=app[SECRETS].cipher,
    )
    app[IMPORTER] = importer
    # The first import happens before the port opens when Redis is there, so
    # that a client's first fetch sees the directory; otherwise it happens
    # in the background as soon as Redis answers.
    try:
        await asyncio.wait_for(importer.run("start"), 10.0)
        done = True
    except REDIS_ERRORS as exc:
        logger.warning("Redis unavailable at start (%s): the directory is imported when it is", exc)
        done = False
    tasks = TaskSet("configsvc")
    tasks.spawn(importer.keep_imported(done_once=done), "import")
    yield
    await tasks.stop()


async def _events_ctx(app: web.Application) -> AsyncIterator[None]:
    """The change hub behind ``GET /v1/events``: its subscription runs until stop."""
    hub = ChangeHub(app[REDIS])
    app[HUB] = hub
    tasks = TaskSet("configsvc:events")
    tasks.spawn(hub.subscription.run(), "events")
    yield
    hub.subscription.stop()
    await tasks.stop()


async def _end_streams(app: web.Application) -> None:
    """Open event streams end at shutdown, so the drain does not wait for them."""
    if HUB in app:
        app[HUB].shutdown()


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events?since=REV``: see :mod:`core.config.events`."""
    return await stream_changes(request, request.app[STORE], request.app[HUB])


def build_app(settings: Settings) -> web.Application:
    """The config service application; Redis is connected in its cleanup context."""
    metrics = HTTPMetrics("configsvc")
    app = web.Application(
        middlewares=[metrics.middleware, problem_middleware, redis_unavailable("config service")],
        client_max_size=MAX_BYTES + 1024,
    )
    app[SETTINGS] = settings
    app[SECRETS] = SecretReads(settings.cipher())
    app[METRICS] = metrics
    app[METERS] = Meters(
        writes=Counter(
            "configsvc_document_writes",
            "document writes by result (written: a new version; unchanged: same content)",
            ["result"],
            registry=metrics.registry,
        ),
        reloads=Counter(
            "configsvc_reloads",
            "POST /v1/reload by result (imported, refused)",
            ["result"],
            registry=metrics.registry,
        ),
        import_errors=Gauge(
            "configsvc_import_errors",
            "broken files found by the last reload",
            registry=metrics.registry,
        ),
    )
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_importer_ctx)
    app.cleanup_ctx.append(_events_ctx)
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/v1/config/{app}/{profile}", get_config)
    app.router.add_get("/v1/documents", list_documents)
    app.router.add_get("/v1/documents/{name}", get_document)
    app.router.add_put("/v1/documents/{name}", put_document)
    app.router.add_delete("/v1/documents/{name}", delete_document)
    app.router.add_get("/v1/documents/{name}/history", history)
    app.router.add_post("/v1/documents/{name}/rollback", rollback)
    app.router.add_post("/v1/reload", reload)
    app.router.add_post("/v1/encrypt", encrypt)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/health", health_page)
    add_health_routes(app, readiness)
    app.router.add_get("/metrics", metrics.handle)
    # Before Spring's routes: /{application}-{profile}.json would take it otherwise.
    app.router.add_get("/openapi.json", openapi.build().handle)
    # Spring Cloud Config's paths, after the native ones (see core.config.spring on /v1).
    spring.add_routes(
        app,
        spring.Backend(
            merged=lambda app_name, profile: _merged(app, app_name, profile),
            secrets=app[SECRETS],
            authorize=_require_token,
        ),
    )
    return app


def main(argv: Sequence[str] | None = None) -> int:
    settings = configure(
        Settings,
        name="configsvc",
        prefix="CONFIGSVC_",
        argv=argv,
        description="Essaim config service: every component's configuration, hot-reloaded.",
    )
    if settings is None:
        return BAD_SETTINGS
    if not settings.token:
        logger.warning(
            "no CONFIGSVC_TOKEN: anyone who can reach %s:%d can write, delete and roll back "
            "every service's config (set one to require it for writes)",
            settings.host, settings.port,
        )  # fmt: skip
    return run([Site(build_app(settings), settings.host, settings.port, "configsvc",
                     fd=settings.listen_fd)],
               shutdown_timeout=settings.shutdown_timeout)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
