"""REDIS_URL: the three topologies it names, and one clear line for anything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import registry
from core.errors import SettingsError
from core.redis import parse_url

ROOT = Path(__file__).resolve().parents[2]


def test_one_node_sentinel_and_cluster_urls_are_read() -> None:
    single = parse_url("redis://:pw@10.0.0.1:6380/2")
    assert (single.topology, single.nodes, single.password, single.db) == (
        "single", (("10.0.0.1", 6380),), "pw", 2,
    )  # fmt: skip
    sentinel = parse_url("redis+sentinel://:s3cret@h1:26379,h2:26380/mymaster/3")
    assert sentinel.topology == "sentinel"
    assert sentinel.nodes == (("h1", 26379), ("h2", 26380))
    assert (sentinel.primary, sentinel.db, sentinel.password) == ("mymaster", 3, "s3cret")
    assert parse_url("redis+sentinel://h1/mymaster").nodes == (("h1", 26379),)
    cluster = parse_url("redis+cluster://:pw@h1:7000,h2:7001/")
    assert (cluster.topology, cluster.nodes, cluster.password) == (
        "cluster", (("h1", 7000), ("h2", 7001)), "pw",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h:6379", "unknown scheme 'http'"),
        ("localhost:6379", "not a URL"),
        ("redis+sentinel://h1:26379", "Sentinel needs the primary's name"),
        ("redis+sentinel://h1:26379/mymaster/x", "database 'x' is not a number"),
        ("redis+cluster://h1:7000/3", "Redis Cluster has only database 0"),
        ("redis+cluster://h1:99999", "'h1:99999' is not host:port"),
        ("redis://h:port/0", "Port could not be cast"),
    ],
)
def test_any_other_url_is_one_line_naming_the_accepted_forms(url: str, why: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_url(url)
    message = str(raised.value)
    assert "\n" not in message
    assert why in message
    for form in ("redis://", "redis+sentinel://", "redis+cluster://"):
        assert form in message


def test_a_password_is_not_repeated_in_the_error() -> None:
    with pytest.raises(SettingsError) as raised:
        parse_url("redis+sentinel://:hunter2@h1:26379")
    assert "hunter2" not in str(raised.value)


def test_a_component_with_a_bad_url_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert registry.main(["--redis-url", "redis+cluster://h1:7000/5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("registry: REDIS_URL 'redis+cluster://h1:7000/5': ")
    assert len(err.splitlines()) == 1


def test_the_launcher_with_a_bad_url_exits_2_with_one_line_and_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services"],
        env={"REDIS_URL": "redis+sentinel://h1:26379", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Sentinel needs the primary's name" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
