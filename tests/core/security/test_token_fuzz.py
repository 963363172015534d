"""Fuzzing token headers and claims: a bad token is always 401, never a 500 with a traceback.

Tokens are signed with the key the verifier trusts, so that each example
reaches past the signature check into the header and claim checks, which is
where a field of an unexpected type used to escape as an exception (issue
10: ``"kid": ["x"]`` was a 500 at the gateway and at the services).
Examples are bounded so that the file runs in a few seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.security.jwks import KeySet
from core.security.tokens import Identity, TokenError, Verifier
from tests.minting import AUDIENCE, ISSUER, Signer, b64url, jwks

SIGNER = Signer("k1")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
header_names = st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5c", "cty", "b64"]) | st.text(
    max_size=4
)
claim_names = st.sampled_from(["exp", "iat", "nbf", "sub", "iss", "aud", "roles", "jti"]) | st.text(
    max_size=4
)


@st.composite
def headers(draw: st.DrawFn) -> Any:
    """A token header: mostly the right one with some fields changed, sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    header: dict[str, Any] = {"alg": "EdDSA", "kid": SIGNER.kid, "typ": "JWT"}
    for name, value in draw(st.dictionaries(header_names, json_values, max_size=3)).items():
        header[name] = value
    for name in draw(st.lists(st.sampled_from(["alg", "kid", "typ"]), max_size=2)):
        header.pop(name, None)
    return header


@st.composite
def claims(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    body: dict[str, Any] = SIGNER.claims()
    for name, value in draw(st.dictionaries(claim_names, json_values, max_size=3)).items():
        body[name] = value
    for name in draw(st.lists(claim_names, max_size=2)):
        body.pop(name, None)
    return body


def sign(header: Any, body: Any) -> str:
    """A JWT with exactly this header and claims, signed with ``SIGNER``'s key."""
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(body).encode())
    return f"{h}.{p}.{b64url(SIGNER.private.sign(f'{h}.{p}'.encode()))}"


def well_formed(header: Any, body: Any) -> bool:
    """Whether a token may pass: the checks the verifier documents, written out plainly."""
    if not isinstance(header, dict) or not isinstance(body, dict):
        return False
    if header.get("alg") != "EdDSA" or header.get("kid") != SIGNER.kid:
        return False
    return set(header) <= {"alg", "kid", "typ"} and isinstance(header.get("typ", ""), str)


def verifier() -> Verifier:
    keys = KeySet()
    keys.load(jwks(SIGNER))
    return Verifier(keys, issuer=ISSUER, audience=AUDIENCE)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(headers(), claims())
def test_a_token_is_an_identity_or_a_token_error_never_another_exception(
    header: Any, body: Any
) -> None:
    try:
        identity = verifier().verify(sign(header, body))
    except TokenError:
        return
    assert isinstance(identity, Identity)
    assert well_formed(header, body)
    assert identity.exp > time.time() - 60


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "EdDSA", "kid": ["x"]},
        {"alg": "EdDSA", "kid": 7},
        {"alg": "EdDSA", "kid": {"a": 1}},
        {"alg": "EdDSA", "kid": ""},
        {"alg": ["EdDSA"], "kid": "k1"},
        {"alg": "EdDSA", "kid": "k1", "typ": 5},
        {"alg": "EdDSA", "kid": "k1", "crit": ["exp"]},
        {"alg": "EdDSA", "kid": "k1", "jku": "http://evil.test/jwks"},
        [1, 2],
    ],
)
def test_a_header_field_of_the_wrong_type_or_unknown_is_a_token_error(header: Any) -> None:
    with pytest.raises(TokenError):
        verifier().verify(sign(header, SIGNER.claims()))


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 2**1100], ids=["inf", "nan", "huge"])
def test_an_infinite_or_huge_expiry_is_a_token_error(value: float) -> None:
    with pytest.raises(TokenError):
        verifier().verify(sign({"alg": "EdDSA", "kid": "k1"}, SIGNER.claims(exp=value)))
