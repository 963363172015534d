"""The normalized request path: what is decoded, merged, and refused."""

from __future__ import annotations

import pytest

from core.errors import BadRequest
from core.routes.path import TARGET_SCAN, normalize_path


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("/", "/"),
        ("/api/products/3", "/api/products/3"),
        ("/%61pi/%7Euser", "/api/~user"),  # unreserved characters decoded
        ("/a%3bb/%3a", "/a%3Bb/%3A"),  # other escapes kept, hex upper-cased
        ("/a%25/b", "/a%25/b"),  # an encoded '%' stays encoded: nothing is decoded twice
        ("//inventory//products", "/inventory/products"),  # repeated slashes merged
        ("/a//", "/a/"),  # the trailing slash kept
        ("//", "/"),
        ("/a/.b/..c/.../b..", "/a/.b/..c/.../b.."),  # dots inside names are names
        ("/a/b;x=1", "/a/b;x=1"),
    ],
)
def test_a_path_normalizes_to_one_form(given: str, normal: str) -> None:
    assert normalize_path(given) == normal
    assert normalize_path(normal) == normal  # idempotent


@pytest.mark.parametrize(
    "given",
    [
        "/a/../admin",
        "/a/./b",
        "/..",
        "/a/..",
        "/a/%2e%2e/admin",
        "/a/%2E%2e/admin",
        "/a/.%2E/admin",
        "/a/%2e/b",
        "/a/..;x/admin",  # Tomcat's path parameters on a dot segment
        "/a/.;/b",
        "/a%2Fb",
        "/a%2fb",
        "/a%5cb",
        "/a\\b",
        "/a%00b",
        "/a%zz",
        "/a%4",
        "/a%",
    ],
)
def test_dot_segments_encoded_separators_nul_and_bad_escapes_are_refused(given: str) -> None:
    with pytest.raises(BadRequest):
        normalize_path(given)


def test_the_scan_finds_the_query_or_what_needs_work_whichever_comes_first() -> None:
    assert TARGET_SCAN.search(b"/api/products/12345") is None
    assert TARGET_SCAN.search(b"/a/b.json") is None
    # The query is passed over up to a fragment, whatever it holds.
    assert TARGET_SCAN.search(b"/a/b?x=%2e//").group() == b"?x=%2e//"
    assert TARGET_SCAN.search(b"/a/b?x=%2e//#f").end() == len(b"/a/b?x=%2e//")
    for target in (b"/a%61", b"/a/./b", b"/a//b", b"/a\\b", b"/.hidden", b"/a#b?c"):
        assert TARGET_SCAN.search(target).group()[:1] != b"?", target
