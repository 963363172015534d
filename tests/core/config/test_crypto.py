"""core.config.crypto: Fernet values, their paths, and keys given in the setting."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from core.config.crypto import (
    Cipher,
    Undecryptable,
    check_ciphers,
    cipher_paths,
    decrypt_document,
)
from core.errors import SettingsError, Unprocessable
from core.settings import Secret

KEY = Fernet.generate_key().decode()
OTHER = Fernet.generate_key().decode()


def test_a_value_decrypts_to_its_plaintext_and_never_repeats() -> None:
    cipher = Cipher(Secret(KEY))
    first, second = cipher.encrypt("pw"), cipher.encrypt("pw")
    assert first.startswith("{cipher}")
    assert first != second
    assert cipher.decrypt(first) == cipher.decrypt(second) == "pw"


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old = Cipher(Secret(KEY)).encrypt("pw")
    rotated = Cipher(Secret(f"{OTHER}, {KEY}"))
    assert rotated.keys == 2
    assert rotated.decrypt(old) == "pw"
    assert Cipher(Secret(OTHER)).decrypt(rotated.encrypt("pw")) == "pw"
    with pytest.raises(ValueError, match="does not decrypt"):
        Cipher(Secret(OTHER)).decrypt(old)


@pytest.mark.parametrize(
    "keys",
    ["short", f"{KEY},", f"{KEY},{KEY[:-2]}"],
    ids=["short", "an-empty-second-key", "a-truncated-second-key"],  # no key in test ids
)
def test_a_malformed_key_names_the_setting_not_the_key(keys: str) -> None:
    with pytest.raises(SettingsError, match="CONFIGSVC_ENCRYPT_KEY") as raised:
        Cipher(Secret(keys))
    assert KEY not in str(raised.value)
    assert "short" not in str(raised.value)
    assert KEY not in repr(Cipher(Secret(KEY)))


def test_paths_name_tables_and_array_items() -> None:
    doc = {"a": {"b": "{cipher}x", "c": [1, {"d": "{cipher}y"}]}, "e": "plain {cipher}"}
    assert cipher_paths(doc) == ["a.b", "a.c[1].d"]


def test_decrypting_a_document_copies_it_and_names_what_fails() -> None:
    cipher = Cipher(Secret(KEY))
    doc = {"db": {"password": cipher.encrypt("pw"), "user": "u"}, "list": [cipher.encrypt("x")]}
    plain = decrypt_document(doc, cipher)
    assert plain == {"db": {"password": "pw", "user": "u"}, "list": ["x"]}
    assert doc["db"]["password"].startswith("{cipher}")
    with pytest.raises(Undecryptable) as raised:
        decrypt_document(doc, Cipher(Secret(OTHER)))
    assert raised.value.paths == ["db.password", "list[0]"]
    with pytest.raises(Undecryptable, match="no CONFIGSVC_ENCRYPT_KEY"):
        decrypt_document(doc, None)


def test_check_refuses_values_that_do_not_decrypt_without_quoting_them() -> None:
    cipher = Cipher(Secret(KEY))
    check_ciphers({"a": cipher.encrypt("pw"), "b": 1}, cipher)
    foreign = Cipher(Secret(OTHER)).encrypt("pw")
    with pytest.raises(Unprocessable) as raised:
        check_ciphers({"a": foreign}, cipher, source="billing.toml")
    problem = raised.value.body()
    assert problem["errors"] == [
        {"source": "billing.toml", "field": "a", "reason": "does not decrypt"}
    ]
    assert foreign.removeprefix("{cipher}") not in str(problem)
