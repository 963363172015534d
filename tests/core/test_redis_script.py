"""core.redis.Script on a real server: a script the server forgot is loaded again."""

from __future__ import annotations

from typing import Any

import pytest

from core.redis import Redis, Script


async def test_a_script_answers_what_it_returns(redis: Redis) -> None:
    script = Script(redis, "return {KEYS[1], ARGV[1]}")
    assert await script(keys=["essaim:test:k"], args=["v"]) == ["essaim:test:k", "v"]


async def test_a_script_forgotten_between_its_load_and_its_run_is_loaded_again(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a server restarted between redis-py's SCRIPT LOAD and the EVALSHA
    # after it does: forget the script just loaded. Once; the next load holds.
    script = Script(redis, "return 'ran'")
    load = redis.script_load
    forgotten: list[str] = []

    async def load_then_forget(source: Any) -> str:
        sha = await load(source)
        if not forgotten:
            forgotten.append(sha)
            await redis.script_flush()
        return sha

    monkeypatch.setattr(redis, "script_load", load_then_forget)
    await redis.script_flush()
    assert await script() == "ran"
    assert len(forgotten) == 1
