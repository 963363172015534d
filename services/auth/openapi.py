"""The auth API in the service's OpenAPI document."""

from __future__ import annotations

from core.openapi.schemas import ANY, INTEGER, STRING, array_of, json, obj, problem
from core.openapi.spec import Spec

__all__ = ["describe"]

TOKENS = obj(
    required=("access_token", "token_type", "expires_in", "refresh_token"),
    access_token=STRING, token_type=STRING, expires_in=INTEGER, refresh_token=STRING,
)  # fmt: skip
LOGIN = obj(extra=False, username={"type": "string", "minLength": 1, "maxLength": 128},
            password={"type": "string", "minLength": 1, "maxLength": 1024})  # fmt: skip
REFRESH = obj(extra=False, refresh_token={"type": "string", "minLength": 1, "maxLength": 256})
JSON = "application/json"


def describe(spec: Spec) -> None:
    bad = problem(422, "a missing or invalid field")
    spec.op("POST", "/token", "Log in: a password for an access and a refresh token",
            redis=False, body={JSON: LOGIN},
            responses=[(200, json(TOKENS)), problem(401, "wrong user name or password"), bad,
                       problem(429, "too many failed logins: Retry-After says when")])  # fmt: skip
    spec.op("POST", "/token/refresh", "Spend a refresh token for new tokens", redis=False,
            body={JSON: REFRESH},
            responses=[(200, json(TOKENS)),
                       problem(400, "an invalid, expired or reused refresh token"),
                       problem(401, "an invalid, expired or reused refresh token"), bad])  # fmt: skip
    spec.op(
        "POST",
        "/token/revoke",
        "End the session of a refresh token",
        redis=False,
        body={JSON: REFRESH},
        responses=[(200, json(obj(required=()))), bad],
    )
    spec.op(
        "GET",
        "/.well-known/jwks.json",
        "The public keys that verify access tokens",
        redis=False,
        responses=[(200, json(obj(keys=array_of(ANY))))],
    )
    spec.op("POST", "/keys/rotate", "Sign with the next key from now on (admin)", auth=True,
            redis=False,
            responses=[(200, json(obj(kid=STRING, keys=array_of(STRING)))),
                       problem(403, "not an admin")])  # fmt: skip
