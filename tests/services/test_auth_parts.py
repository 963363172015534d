"""The auth service's pure parts: password hashes, the seed format, the key ring."""

from __future__ import annotations

import pytest

from services.auth.keys import KeyRing
from services.auth.passwords import hash_password, verify_password
from services.auth.users import Seed, parse_seed


def test_password_hashes_are_salted_and_verify() -> None:
    first, second = hash_password("pw", cost=10), hash_password("pw", cost=10)
    assert first != second
    assert first.startswith("scrypt$10$8$1$")
    assert verify_password("pw", first)
    assert verify_password("pw", second)
    assert not verify_password("pW", first)
    for broken in ("", "md5$x", "scrypt$10$8$1$!!$!!", "scrypt$40$8$1$AA$AA", first[:-4]):
        assert not verify_password("pw", broken)
    with pytest.raises(ValueError, match="cost"):
        hash_password("pw", cost=4)


def test_seed_format() -> None:
    assert parse_seed(" admin:s3:cr:et:admin,user ; bob:pw: ;") == [
        Seed("admin", "s3:cr:et", ("admin", "user")),
        Seed("bob", "pw", ()),
    ]
    for bad, message in [
        ("admin", "entry 1: expected name:password:roles"),
        ("x:pw:admin;-bad:pw:user", "entry 2: user name '-bad'"),
        ("bob::user", "empty password"),
        ("bob:pw:ad min", "role 'ad min'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_seed(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_key_ring_publishes_ahead_rotates_and_drops_expired_keys() -> None:
    clock = Clock()
    ring = KeyRing(token_ttl=300, rotation_interval=3600, leeway=60, clock=clock)
    assert ring.maintain()
    current, upcoming = ring.current.kid, ring.next.kid
    assert [k["kid"] for k in ring.jwks()["keys"]] == [current, upcoming]
    assert not ring.maintain()

    clock.now += 3600
    assert ring.maintain()
    assert ring.current.kid == upcoming
    published = [k["kid"] for k in ring.jwks()["keys"]]
    assert published == [upcoming, ring.next.kid, current]

    clock.now += 359
    assert not ring.maintain()
    clock.now += 1
    assert ring.maintain()
    assert current not in [k["kid"] for k in ring.jwks()["keys"]]

    again = KeyRing.from_rows(ring.rows(), token_ttl=300, rotation_interval=3600, clock=clock)
    assert [k["kid"] for k in again.jwks()["keys"]] == [k["kid"] for k in ring.jwks()["keys"]]
