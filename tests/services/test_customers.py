"""The customers service: its API over real HTTP, its own database, and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.customers.service import SERVICE
from tests.services.conftest import Client, MakeClient, rows


@pytest.fixture
async def client(make_service: MakeClient) -> Client:
    return await make_service(SERVICE)


async def test_create_list_get_update_and_delete_a_customer(client: Client, tmp_path: Path) -> None:
    created = await client.post(
        "/customers", json={"name": " Ada Lovelace ", "email": "ada@example.com"}
    )
    assert created.status == 201
    ada = await created.json()
    assert ada == {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}
    assert created.headers["Location"] == "/customers/1"
    assert created.headers["X-Instance-ID"] == "customers-test"
    await client.post("/customers", json={"name": "Alan Turing", "email": "alan@example.com"})

    listed = await (await client.get("/customers")).json()
    assert [c["name"] for c in listed["customers"]] == ["Ada Lovelace", "Alan Turing"]
    page = await (await client.get("/customers", params={"limit": "1", "after": "1"})).json()
    assert page == {"customers": [{"id": 2, "name": "Alan Turing", "email": "alan@example.com"}],
                    "next_after": 2}  # fmt: skip

    patched = await client.patch("/customers/1", json={"name": "Ada King"})
    assert await patched.json() == {"id": 1, "name": "Ada King", "email": "ada@example.com"}
    assert await (await client.get("/customers/1")).json() == await patched.json()

    assert (await client.delete("/customers/2")).status == 204
    assert (await client.get("/customers/2")).status == 404
    db = tmp_path / "customers" / "customers.db"
    assert rows(db, "SELECT id, name, email FROM customers") == [(1, "Ada King", "ada@example.com")]


@pytest.mark.parametrize(
    ("method", "body", "status", "field"),
    [
        ("POST", b"{not json", 400, None),
        ("POST", b"[1, 2]", 400, "the body"),
        ("POST", b"", 400, None),
        ("POST", {"name": "Bob"}, 422, "email"),
        ("POST", {"name": "", "email": "bob@example.com"}, 422, "name"),
        ("POST", {"name": "Bob", "email": "not-an-email"}, 422, "email"),
        ("POST", {"name": "Bob", "email": "bob@example.com", "age": 3}, 422, "age"),
        ("POST", {"name": 42, "email": "bob@example.com"}, 400, "name"),
        ("POST", {"name": "B" * 201, "email": "bob@example.com"}, 422, "name"),
        ("POST", {"name": "Bob", "email": "ADA@example.com"}, 409, "email"),
        ("PATCH", {}, 422, "body"),
        ("PATCH", {"email": "ada@"}, 422, "email"),
        ("PATCH", {"id": 7}, 422, "id"),
    ],
)
async def test_bad_input_is_problem_details_and_changes_nothing(
    client: Client, tmp_path: Path, method: str, body: Any, status: int, field: str | None
) -> None:
    await client.post("/customers", json={"name": "Ada", "email": "ada@example.com"})
    db = tmp_path / "customers" / "customers.db"
    before = rows(db, "SELECT * FROM customers")
    path = "/customers" if method == "POST" else "/customers/1"
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = await client.request(method, path, **kwargs)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == status
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]]
    assert rows(db, "SELECT * FROM customers") == before


async def test_unknown_and_malformed_ids_are_404(client: Client) -> None:
    for path in ("/customers/99", "/customers/abc", "/customers/0", "/customers/-1"):
        for method in ("GET", "PATCH", "DELETE"):
            response = await client.request(method, path, json={"name": "X"})
            assert response.status == 404, (method, path)
            assert (await response.json())["title"] == "Not Found"
    bad = await client.get("/customers", params={"limit": "0"})
    assert bad.status == 400
    assert (await bad.json())["errors"] == [
        {"field": "limit", "reason": "must be between 1 and 1000"}
    ]
