"""Settings: flags over environment over defaults, one clear line on a bad value."""

from __future__ import annotations

import dataclasses

import pytest

from core.errors import SettingsError
from core.settings import CommonSettings, Secret, load, option


@dataclasses.dataclass(frozen=True)
class Demo(CommonSettings):
    port: int = dataclasses.field(default=1234, metadata=option("port"))
    token: Secret = dataclasses.field(default=Secret(""), metadata=option("token"))
    ratio: float = dataclasses.field(default=0.5, metadata=option("a ratio"))
    verbose: bool = dataclasses.field(default=False, metadata=option("chatty"))
    config_url: str | None = dataclasses.field(default=None, metadata=option("optional url"))


def test_defaults_apply_without_flags_or_environment() -> None:
    s = load(Demo, prefix="DEMO_", argv=[], environ={})
    assert (s.port, s.host, s.ratio, s.verbose, s.config_url) == (
        1234,
        "127.0.0.1",
        0.5,
        False,
        None,
    )
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"DEMO_PORT": "2000", "REDIS_URL": "redis://h:1/2", "DEMO_VERBOSE": "yes"}
    s = load(Demo, prefix="DEMO_", argv=[], environ=env)
    assert (s.port, s.redis_url, s.verbose) == (2000, "redis://h:1/2", True)
    s = load(Demo, prefix="DEMO_", argv=["--port", "3000"], environ=env)
    assert s.port == 3000


def test_settings_are_frozen() -> None:
    s = load(Demo, prefix="DEMO_", argv=[], environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"DEMO_PORT": "http"}, "DEMO_PORT: expected an integer, got 'http'"),
        (["--ratio", "x"], {}, "--ratio: expected a number, got 'x'"),
        (
            [],
            {"DEMO_VERBOSE": "maybe"},
            "DEMO_VERBOSE: expected a boolean (true/false), got 'maybe'",
        ),
        ([], {"DEMO_LOG_FORMAT": "xml"}, "DEMO_LOG_FORMAT: expected one of text, json, got 'xml'"),
        (["--port", "70000"], {}, "port: expected 0-65535, got 70000"),
    ],
)
def test_a_bad_value_raises_one_line_naming_its_source(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load(Demo, prefix="DEMO_", argv=argv, environ=env)
    assert str(info.value) == message


def test_secret_hides_itself() -> None:
    s = load(Demo, prefix="DEMO_", argv=[], environ={"DEMO_TOKEN": "hunter2"})
    assert s.token.reveal() == "hunter2"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.token)
    assert not Secret("")


def test_help_names_each_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load(Demo, prefix="DEMO_", argv=["--help"], environ={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--config-url" in out
    assert "DEMO_CONFIG_URL" in out
    assert "REDIS_URL" in out
