"""Encrypted config values: ``{cipher}<token>`` strings, their key, and where they are.

A config value written as ``"{cipher}gAAAAAB..."`` is a secret: the config
service stores it as written (encrypted), checks on every write that it
decrypts with its key, and serves it decrypted only to a client holding the
service's token. Everything that touches such values goes through this module:

- :class:`Cipher` holds the key (``CONFIGSVC_ENCRYPT_KEY``) and encrypts or
  decrypts one value. The scheme is Fernet from ``cryptography`` (AES-128-CBC
  with HMAC-SHA256, authenticated, random IV): a tampered or foreign value
  fails to decrypt instead of decrypting to garbage. The setting may list
  several keys separated by commas: the first encrypts, each of them decrypts
  (``MultiFernet``), so a key is rotated without rewriting every document at
  once.
- :func:`cipher_paths` finds the ``{cipher}`` values of a document,
  :func:`check_ciphers` refuses a document whose values don't all decrypt,
  :func:`decrypt_document` returns a copy with every value decrypted.
- :class:`SecretReads` tells which stored contents hold secrets and renders a
  merged config decrypted, both cached (a content never changes for its hash,
  nor a merged config for its version).

Only strings are encrypted; a decrypted value is a string. Neither plaintext
nor ciphertext ever appears in an error message or a log line: errors name
the value's path (``db.password``, ``replicas[1].password``) only.
"""

from __future__ import annotations

import binascii
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core import log
from core.config.store import Merged
from core.errors import EssaimError, SettingsError, Unprocessable
from core.settings import Secret

__all__ = [
    "CIPHER_PREFIX",
    "Cipher",
    "SecretReads",
    "Undecryptable",
    "check_ciphers",
    "cipher_paths",
    "decrypt_document",
]

CIPHER_PREFIX = "{cipher}"

logger = log.get("configsvc")


class Undecryptable(EssaimError, ValueError):
    """Stored values don't decrypt with the key in force (unset, or changed since they were written).

    ``paths`` name the values; the message never holds a value.
    """

    def __init__(self, paths: list[str], why: str) -> None:
        super().__init__(f"{why}: {', '.join(paths)}")
        self.paths = paths
        self.why = why


class Cipher:
    """Encrypts and decrypts config values with one or more Fernet keys.

    ``keys`` is the setting's value: Fernet keys (32 bytes, url-safe base64,
    as made by ``Fernet.generate_key()``) separated by commas; the first
    encrypts. A malformed key raises :class:`SettingsError` naming
    ``setting`` and the key's position, never its text.
    """

    def __init__(self, keys: Secret, setting: str = "CONFIGSVC_ENCRYPT_KEY") -> None:
        parts = [k.strip() for k in keys.reveal().split(",")]
        if not parts or not all(parts):
            raise SettingsError(f"{setting}: expected Fernet keys separated by commas")
        fernets = []
        for i, part in enumerate(parts, 1):
            try:
                fernets.append(Fernet(part.encode()))
            except (ValueError, binascii.Error):
                raise SettingsError(
                    f"{setting}: key {i} of {len(parts)} is not a Fernet key "
                    "(32 bytes in url-safe base64, 44 characters: "
                    "python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())')"
                ) from None
        self._fernet = MultiFernet(fernets)
        self.keys = len(fernets)

    def __repr__(self) -> str:
        return f"Cipher(keys={self.keys})"

    def encrypt(self, plaintext: str) -> str:
        """``{cipher}`` followed by the Fernet token of ``plaintext`` (UTF-8), with the first key."""
        return CIPHER_PREFIX + self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, value: str) -> str:
        """The plaintext of a ``{cipher}`` value; ``ValueError`` when it doesn't decrypt.

        It doesn't decrypt when it is not a Fernet token made by one of the
        keys, was altered, or its plaintext is not UTF-8. The error says so
        without quoting the value.
        """
        token = value.removeprefix(CIPHER_PREFIX)
        try:
            return self._fernet.decrypt(token.encode()).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise ValueError("does not decrypt with the key") from None


def cipher_paths(doc: Mapping[str, Any]) -> list[str]:
    """The paths of the ``{cipher}`` string values in ``doc``, in document order.

    A path is dotted for tables and indexed for arrays (``db.password``,
    ``replicas[1].password``).
    """
    return [path for path, _ in _ciphers(doc)]


def _ciphers(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(path, value)`` of each ``{cipher}`` value, in document order (iterative walk)."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            items = [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list | tuple):
            stack.extend(reversed([(v, f"{path}[{i}]") for i, v in enumerate(value)]))
        elif isinstance(value, str) and value.startswith(CIPHER_PREFIX):
            out.append((path, value))
    return out


def check_ciphers(
    doc: Mapping[str, Any], cipher: Cipher | None, *, source: str = "the document"
) -> None:
    """:class:`Unprocessable` unless every ``{cipher}`` value of ``doc`` decrypts with ``cipher``.

    Without a cipher (no key configured) any ``{cipher}`` value is refused:
    the service would store a secret it can never serve. The problem lists
    the paths in ``errors`` (``{"source", "field", "reason"}``), never a value.
    """
    found = _ciphers(doc)
    if not found:
        return
    paths = [path for path, _ in found]
    if cipher is None:
        raise Unprocessable(
            f"{source}: {', '.join(paths)}: {{cipher}} values, but this config service has "
            "no CONFIGSVC_ENCRYPT_KEY: it could never decrypt them",
            errors=[{"source": source, "field": p, "reason": "no key"} for p in paths],
        )
    bad = []
    for path, value in found:
        try:
            cipher.decrypt(value)
        except ValueError:
            bad.append(path)
    if bad:
        raise Unprocessable(
            f"{source}: {', '.join(bad)}: a {{cipher}} value that does not decrypt with "
            "CONFIGSVC_ENCRYPT_KEY (write the value POST /v1/encrypt returns, as is)",
            errors=[{"source": source, "field": p, "reason": "does not decrypt"} for p in bad],
        )


def decrypt_document(doc: Mapping[str, Any], cipher: Cipher | None) -> dict[str, Any]:
    """A copy of ``doc`` with every ``{cipher}`` value replaced by its plaintext.

    Raises :class:`Undecryptable` naming every value that doesn't decrypt
    (all of them without a cipher). ``doc`` is not modified.
    """
    bad: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and value.startswith(CIPHER_PREFIX):
            if cipher is not None:
                try:
                    return cipher.decrypt(value)
                except ValueError:
                    pass
            bad.append(path)
        return value

    # Documents are at most MAX_DEPTH (32) deep, so the recursion is bounded.
    out: dict[str, Any] = walk(doc, "")
    if bad:
        why = "no CONFIGSVC_ENCRYPT_KEY" if cipher is None else "not decryptable with the key"
        raise Undecryptable(bad, why)
    return out


class SecretReads:
    """What the config service needs to serve secrets: which contents hold them, decrypted renders.

    :meth:`holds_secrets` is cached by content hash, :meth:`render` by app,
    profile and merged version, ``size`` entries each (least recently used
    go first). The decrypted renders live in this process's memory only. A
    version that doesn't decrypt is logged once (paths only) and remembered.
    """

    def __init__(self, cipher: Cipher | None, size: int = 512) -> None:
        self.cipher = cipher
        self._size = size
        self._holds: OrderedDict[str, bool] = OrderedDict()
        self._rendered: OrderedDict[str, bytes | Undecryptable] = OrderedDict()

    def holds_secrets(self, hash_: str | None, content: Mapping[str, Any] | None) -> bool:
        """Whether ``content`` (whose hash is ``hash_``) holds a ``{cipher}`` value."""
        if content is None:
            return False
        if hash_ is None:
            return bool(cipher_paths(content))
        found = self._holds.get(hash_)
        if found is None:
            found = bool(cipher_paths(content))
            _remember(self._holds, hash_, found, self._size)
        else:
            self._holds.move_to_end(hash_)
        return found

    def merged_holds_secrets(self, merged: Merged) -> bool:
        """Whether any source of ``merged`` holds a ``{cipher}`` value (even one overridden)."""
        return any(
            self.holds_secrets(source.hash, layer)
            for source, layer in zip(merged.sources, merged.layers, strict=True)
        )

    def render(self, merged: Merged) -> bytes:
        """The JSON of ``merged`` as served, its ``{cipher}`` values decrypted; cached per version.

        Raises :class:`Undecryptable` when a value doesn't decrypt with the
        key in force.
        """
        key = f"{merged.app}/{merged.profile}/{merged.version}"
        body = self._rendered.get(key)
        if body is None:
            doc = merged.to_dict()
            try:
                doc["config"] = decrypt_document(doc["config"], self.cipher)
                body = orjson.dumps(doc)
            except Undecryptable as exc:
                logger.error("config %s version %s can't be served: %s", key.rsplit("/", 1)[0],
                             merged.version, exc)  # fmt: skip
                body = exc
            _remember(self._rendered, key, body, self._size)
        else:
            self._rendered.move_to_end(key)
        if isinstance(body, Undecryptable):
            # A new exception each time: re-raising one object grows its traceback.
            raise Undecryptable(body.paths, body.why)
        return body


def _remember(cache: OrderedDict[str, Any], key: str, value: Any, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)
