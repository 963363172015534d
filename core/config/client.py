"""The config client: a component's config, fetched at start and kept current while it runs.

:class:`ConfigClient` fetches the merged config of its app and profile from
the config service, keeps it in memory (readers await nothing) and applies
every later version without a restart:

- **Start.** It fetches with retries and backoff. When the service stays
  unreachable, ``fail_fast`` makes :meth:`~ConfigClient.start` raise
  :class:`~core.errors.StartupError`; otherwise it serves the last-known copy
  kept on disk (written after every successful fetch), else the built-in
  ``defaults``, says which in the log, and keeps trying in the background.
- **Following changes.** It subscribes to the service's change channel in
  Redis. A change to one of its documents (``application``, ``{app}``,
  ``{app}-{profile}``), a revision gap (a lost message), a (re)connection and
  every ``resync_interval`` make it fetch again (a 304 when nothing changed).
  Without Redis it polls every ``resync_interval``.
- **Applying.** A new version is checked by every validator and typed view
  first: when one rejects it, the last good config stays in force and the
  rejection (version, reason) is logged and shown by :meth:`~ConfigClient.describe`.
  Then the change callbacks run with the dotted paths of the keys that changed.

The config in force is ``defaults`` deep-merged with the service's config, so
a key the service doesn't set keeps its default. Every mapping handed out is
read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import aiohttp
import orjson

from core import log
from core.config.merge import changed_paths, deep_merge, freeze
from core.config.store import CHANNEL
from core.config.typed import TypedView
from core.errors import StartupError, UpstreamError
from core.redis import Backoff, Redis, Subscription
from core.settings import Secret, private_dir
from core.tasks import TaskSet

logger = log.get("config")

__all__ = ["ConfigClient", "ConfigRefused", "ConfigUnavailable", "Source", "TypedView"]

T = TypeVar("T")

Source = Literal["server", "disk", "defaults"]
Validator = Callable[[Mapping[str, Any]], None]
ChangeCallback = Callable[[Mapping[str, Any], set[str]], Awaitable[None] | None]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class ConfigUnavailable(UpstreamError):
    """The config service could not be reached or gave no usable answer."""


class ConfigRefused(ConfigUnavailable):
    """The config service refused the read (401/403): the token is missing or wrong.

    Retrying won't help until the token changes, so the first fetch stops
    retrying at once; the client keeps its last-known config and keeps
    asking in the background, as for an unreachable service.
    """


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigClient:
    """One app's config, current while :meth:`start`-ed (see the module docstring).

    ``url`` is the config service's base URL; None serves ``defaults`` only
    (a component run without the config service). ``redis`` is where the
    service publishes changes; ``cache_dir`` where the last-known copy is
    kept (none when None); ``token`` (the service's ``CONFIGSVC_TOKEN``) is
    sent as a bearer token when given: a config with encrypted values is
    served, decrypted, only then. The last-known copy is written owner-only
    (mode 0600), since it holds those values decrypted.
    ``retries`` is how many times the first fetch is tried again before
    falling back (or failing, with ``fail_fast``).
    """

    def __init__(
        self,
        url: str | None,
        app: str,
        profile: str = "default",
        *,
        redis: Redis | None = None,
        cache_dir: Path | None = None,
        fail_fast: bool = False,
        defaults: Mapping[str, Any] | None = None,
        token: Secret | None = None,
        retries: int = 5,
        resync_interval: float = 30.0,
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.app = app
        self.profile = profile
        self.redis = redis
        self.cache_dir = cache_dir
        self.fail_fast = fail_fast
        self.defaults: dict[str, Any] = deep_merge(defaults or {})
        self.token = token
        self.retries = retries
        self.resync_interval = resync_interval
        self.timeout = timeout
        self.documents = frozenset({"application", app, f"{app}-{profile}"})

        self._raw: dict[str, Any] = dict(self.defaults)
        self._config: Mapping[str, Any] = freeze(self._raw)
        self._version: str | None = None
        self._server_config: dict[str, Any] | None = None
        self.source: Source = "defaults"
        self.sources: list[dict[str, Any]] = []
        self.rev: int | None = None
        self.last_rejection: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.server_up = False
        self.applied = 0
        self.fetches = 0
        self.gaps = 0
        self.rejections = 0

        self._validators: list[Validator] = []
        self._callbacks: list[ChangeCallback] = []
        self._views: list[TypedView[Any]] = []
        self._wanted = asyncio.Event()
        self._changed = asyncio.Condition()
        self._session = session
        self._own_session = session is None
        self._applied_once = False
        self._tasks = TaskSet(f"config:{app}")
        self.subscription = (
            Subscription(
                redis,
                [CHANNEL],
                self._on_message,
                on_connect=self._on_connect,
                name=f"config:{app}",
            )
            if redis is not None
            else None
        )

    # -- reading -----------------------------------------------------------------

    @property
    def config(self) -> Mapping[str, Any]:
        """The merged config in force (read-only)."""
        return self._config

    @property
    def version(self) -> str | None:
        """The config service's version of the config in force; None for built-in defaults."""
        return self._version

    @property
    def connected(self) -> bool:
        """Whether changes are being followed through Redis right now."""
        return self.subscription is not None and self.subscription.connected.is_set()

    def get(self, path: str, default: Any = None) -> Any:
        """The value at the dotted ``path`` (``"http.timeout"``), else ``default``."""
        node: Any = self._config
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def add_validator(self, fn: Validator) -> None:
        """Check every new version before it applies; ``fn`` raises ``ValueError(reason)`` to reject.

        Any other exception rejects the version too. A validator added after
        start doesn't re-check the config already in force.
        """
        self._validators.append(fn)

    def on_change(self, cb: ChangeCallback) -> None:
        """Call ``cb(config, changed_keys)`` (sync or async) after each new version applies.

        ``changed_keys`` holds dotted paths (``"http.pool.size"``). It is not
        called for the config applied by :meth:`start`; an exception is logged.
        """
        self._callbacks.append(cb)

    def typed(self, cls: type[T], section: str | None = None) -> TypedView[T]:
        """A view of the config (or its dotted table ``section``) as the frozen dataclass ``cls``.

        The view's building doubles as a validator: a version that doesn't fit
        ``cls`` is rejected for the whole client. Called once the config is
        in force, it builds from it at once and raises ``ValueError`` when it
        doesn't fit.
        """
        view = TypedView(cls, section)
        try:
            view.set(view.build(self._raw), self._version)
        except ValueError:
            if self._applied_once:
                raise
        self._views.append(view)
        return view

    async def wait_for(self, predicate: Callable[[ConfigClient], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds after an apply; ``TimeoutError`` after ``timeout``."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)

    def describe(self) -> dict[str, Any]:
        """State for a ``/health`` page: where the config came from and what was refused."""
        return {
            "url": self.url,
            "app": self.app,
            "profile": self.profile,
            "version": self._version,
            "source": self.source,
            "connected": self.connected if self.subscription is not None else None,
            "server": "UP" if self.server_up else "DOWN",
            "rev": self.rev,
            "last_rejection": self.last_rejection,
            "last_error": self.last_error,
            "applied": self.applied,
            "gaps": self.gaps,
        }

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Get the first config (see the module docstring), then follow changes.

        Raises :class:`StartupError` with ``fail_fast`` when the service
        can't be reached (or its config is rejected) after the retries.
        """
        if self.url is None:
            await self._use_defaults()
            logger.info("%s: no config service: built-in defaults", self.app)
            self._check_views()
            return
        if self._own_session:
            self._session = aiohttp.ClientSession()
        if self.subscription is not None:
            self._spawn(self.subscription.run(), "subscription")
        try:
            await self._first_fetch()
            self._check_views()
        except BaseException:
            await self.stop()
            raise
        self._spawn(self._refresh_forever(), "refresh")
        self._spawn(self._resync_forever(), "resync")

    def _check_views(self) -> None:
        """Every typed view has an object once started, else :class:`StartupError`.

        A view is left without one when neither the service's config nor the
        defaults fit it: the component would fail on its first read.
        """
        for view in self._views:
            if view.ready:
                continue
            reason = "no config in force fits it"
            try:
                view.build(self._raw)
            except ValueError as exc:
                reason = str(exc)
            raise StartupError(f"{self.app}: {view.cls.__name__}: {reason}")

    async def stop(self) -> None:
        """Stop following changes; the config in force stays readable."""
        if self.subscription is not None:
            self.subscription.stop()
        await self._tasks.stop()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.spawn(coro, what)

    async def _first_fetch(self) -> None:
        backoff = Backoff(base=0.1, cap=2.0)
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await backoff.sleep()
            try:
                await self._refresh(initial=True)
                return
            except ConfigRefused as exc:
                error = exc  # logged by _refresh; retrying won't bring a token
                break
            except ConfigUnavailable as exc:
                error = exc
                logger.warning(
                    "%s: config service %s: %s (attempt %d of %d)",
                    self.app, self.url, exc, attempt + 1, self.retries + 1,
                )  # fmt: skip
            except _Rejected as exc:
                error = exc
                break
        if self.fail_fast:
            raise StartupError(f"config for {self.app}/{self.profile} from {self.url}: {error}")
        self._wanted.set()  # keep trying in the background
        why = "unavailable"
        if isinstance(error, _Rejected):
            why = "rejected"
        elif isinstance(error, ConfigRefused):
            why = "refused (no token, or a wrong one)"
        cached = await asyncio.to_thread(self._read_cache)
        if cached is not None:
            try:
                await self._apply(
                    cached["config"], cached["version"], "disk", cached["sources"], notify=False
                )
                logger.warning(
                    "%s: config from the service %s: using the last-known copy %s (version %s)",
                    self.app, why, self._cache_path(), cached["version"],
                )  # fmt: skip
                return
            except _Rejected:
                pass
        await self._use_defaults()
        logger.warning(
            "%s: config from the service %s and no usable last-known copy: built-in defaults",
            self.app, why,
        )  # fmt: skip

    async def _use_defaults(self) -> None:
        """Make the built-in defaults the config in force (they are trusted: no validator runs)."""
        for view in self._views:
            with contextlib.suppress(ValueError):
                view.set(view.build(self.defaults), None)
        await self._commit(dict(self.defaults), None, "defaults", [], notify=False)

    # -- following changes -------------------------------------------------------------

    async def _on_connect(self) -> None:
        # Messages may have been lost while disconnected: forget the revision
        # and fetch again; messages buffered meanwhile follow this call.
        self.rev = None
        self._wanted.set()

    async def _on_message(self, channel: str, data: str) -> None:
        try:
            event = orjson.loads(data)
            rev, document = int(event["rev"]), str(event["document"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("%s: unreadable change message %r: fetching", self.app, data[:200])
            self._wanted.set()
            return
        if self.rev is None:
            self._wanted.set()
        elif rev <= self.rev:
            if rev == 1:
                # The service's revisions started over: Redis was emptied.
                self._wanted.set()
        elif rev != self.rev + 1:
            self.gaps += 1
            logger.info("%s: revision gap (had %d, got %d): fetching", self.app, self.rev, rev)
            self.rev = rev
            self._wanted.set()
        else:
            self.rev = rev
            if document in self.documents:
                self._wanted.set()

    async def _refresh_forever(self) -> None:
        backoff = Backoff(base=0.1, cap=min(5.0, self.resync_interval))
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self._refresh()
                backoff.reset()
            except (ConfigUnavailable, _Rejected) as exc:
                if isinstance(exc, _Rejected):
                    continue  # reported; wait for the next change
                self._wanted.set()
                await backoff.sleep()

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            self._wanted.set()

    async def _refresh(self, *, initial: bool = False) -> None:
        """Fetch the config and apply it if it is new; raises ConfigUnavailable or _Rejected."""
        seen = self.rev
        try:
            status, rev, body = await self._fetch()
        except ConfigUnavailable as exc:
            if self.server_up or initial:
                what = "refused the read" if isinstance(exc, ConfigRefused) else "unavailable"
                logger.warning("%s: config service %s %s: %s", self.app, self.url, what, exc)
            self.server_up = False
            self.last_error = str(exc)
            raise
        if not self.server_up and not initial:
            logger.info("%s: config service %s reachable again", self.app, self.url)
        self.server_up, self.last_error = True, None
        if rev is not None:
            # A fetch that started after revision `seen` answers at least `seen`,
            # unless the service's revisions started over (Redis emptied).
            self.rev = (
                rev if (seen is None or self.rev is None or rev < seen) else max(self.rev, rev)
            )
        if status == 304:
            if self.source != "server":
                self.source = "server"
                logger.info("%s: config service confirms version %s", self.app, self._version)
            return
        assert body is not None
        version = str(body["version"])
        if version == self._version and self.source == "server":
            return
        if self.last_rejection is not None and self.last_rejection["version"] == version:
            raise _Rejected(self.last_rejection["reason"])  # already reported
        await self._apply(
            body["config"], version, "server", body.get("sources", []), notify=not initial
        )
        if self.cache_dir is not None:
            await asyncio.to_thread(self._write_cache, body)

    async def _fetch(self) -> tuple[int, int | None, dict[str, Any] | None]:
        """``(status, rev, body)`` of one GET of the merged config (body None for a 304)."""
        assert self._session is not None
        headers = {"Accept": "application/json"}
        if self._version is not None and self._server_config is not None:
            headers["If-None-Match"] = f'"{self._version}"'
        if self.token:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        self.fetches += 1
        url = f"{self.url}/v1/config/{self.app}/{self.profile}"
        try:
            async with self._session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                raw_rev = resp.headers.get("X-Config-Rev")
                rev = int(raw_rev) if raw_rev and raw_rev.isdigit() else None
                if resp.status == 304:
                    return 304, rev, None
                if resp.status in (401, 403):
                    given = "a token it refuses" if self.token else "no token"
                    raise ConfigRefused(
                        f"GET {url} answered {resp.status} to a request with {given} "
                        f"(set this component's config token): {await _detail(resp)}"
                    )
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise ConfigUnavailable(f"GET {url} answered {resp.status}: {text}")
                body = orjson.loads(await resp.read())
        except ConfigUnavailable:
            raise  # an OSError too: not to be wrapped again below
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ConfigUnavailable(f"GET {url}: {type(exc).__name__}: {exc}") from None
        except orjson.JSONDecodeError as exc:
            raise ConfigUnavailable(f"GET {url}: malformed JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
            raise ConfigUnavailable(f"GET {url}: not a config (no 'config' object)")
        if not isinstance(body.get("version"), str):
            raise ConfigUnavailable(f"GET {url}: not a config (no 'version' string)")
        return 200, rev, body

    # -- applying ----------------------------------------------------------------

    async def _apply(
        self,
        server_config: dict[str, Any],
        version: str | None,
        source: Source,
        sources: list[dict[str, Any]],
        *,
        notify: bool = True,
    ) -> None:
        """Validate ``server_config`` merged over the defaults and make it current.

        Raises ``_Rejected`` (after recording and logging it) when a validator
        or a typed view refuses it; the config in force is then untouched.
        """
        effective = deep_merge(self.defaults, server_config)
        frozen = freeze(effective)
        built: list[Any] = []
        try:
            for fn in self._validators:
                fn(frozen)
            built = [view.build(effective) for view in self._views]
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            self.rejections += 1
            self.last_rejection = {"version": version, "reason": reason, "time": time.time()}
            logger.error(
                "%s: config version %s rejected, keeping %s: %s",
                self.app, version, self._version or "the built-in defaults", reason,
            )  # fmt: skip
            raise _Rejected(reason) from None
        for view, obj in zip(self._views, built, strict=True):
            view.set(obj, version)
        self._server_config = server_config if source != "defaults" else None
        await self._commit(effective, version, source, sources, frozen=frozen, notify=notify)

    async def _commit(
        self,
        effective: dict[str, Any],
        version: str | None,
        source: Source,
        sources: list[dict[str, Any]],
        *,
        frozen: Mapping[str, Any] | None = None,
        notify: bool,
    ) -> None:
        old = self._raw
        self._raw = effective
        self._config = frozen if frozen is not None else freeze(effective)
        self._version, self.source, self.sources = version, source, sources
        if source == "server":
            self.last_rejection = None
        self.applied += 1
        changed = changed_paths(old, effective)
        logger.info(
            "%s: config version %s applied from %s (%d key(s) changed)",
            self.app, version, source, len(changed),
        )  # fmt: skip
        self._applied_once = True
        async with self._changed:
            self._changed.notify_all()
        if notify and changed:
            await self._run_callbacks(changed)

    async def _run_callbacks(self, changed: set[str]) -> None:
        for cb in list(self._callbacks):
            try:
                result = cb(self._config, changed)
                if isinstance(result, Awaitable):
                    await result
            except Exception:
                logger.exception("%s: config change callback %r failed", self.app, cb)

    # -- the last-known copy -----------------------------------------------------------

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"config-{self.app}-{self.profile}.json"

    def _write_cache(self, body: Mapping[str, Any]) -> None:
        path = self._cache_path()
        if path is None:
            return
        doc = {
            "app": self.app,
            "profile": self.profile,
            "version": body["version"],
            "sources": body.get("sources", []),
            "config": body["config"],
            "saved_at": time.time(),
        }
        try:
            private_dir(path.parent)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            # Owner-only: the copy holds decrypted secrets when the config has any.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o600)
                out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("%s: cannot write the last-known copy %s: %s", self.app, path, exc)

    def _read_cache(self) -> dict[str, Any] | None:
        path = self._cache_path()
        if path is None or not path.exists():
            return None
        try:
            doc = orjson.loads(path.read_bytes())
            if (
                doc.get("app") == self.app
                and doc.get("profile") == self.profile
                and isinstance(doc.get("config"), dict)
            ):
                return {
                    "config": doc["config"],
                    "version": str(doc.get("version")),
                    "sources": list(doc.get("sources") or []),
                }
            logger.warning("%s: ignoring %s: not this app's config", self.app, path)
        except (OSError, orjson.JSONDecodeError) as exc:
            logger.warning("%s: ignoring the last-known copy %s: %s", self.app, path, exc)
        return None


async def _detail(resp: aiohttp.ClientResponse) -> str:
    """The ``detail`` of a problem-details answer, else the start of its text."""
    text = (await resp.text())[:300]
    try:
        detail = orjson.loads(text).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return text
    return str(detail) if detail else text
