"""Passwords never reach a log line, a saved config or an error line, whatever characters they hold."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from streamcap.common.secrets import RedactingFilter, redact, with_password
from streamcap.common.settings import CommonSettings, to_json_text

PASSWORD = "k3/Yq+Zr@x9=="  # what `openssl rand -base64` makes: '/', '+', '=' and here an '@'


def test_a_password_with_any_character_survives_the_url_round_trip():
    url = with_password("redis://redis:6379/0", PASSWORD)
    parsed = redis.connection.parse_url(url)
    assert (parsed["password"], parsed["host"], parsed["port"], parsed["db"]) == (PASSWORD, "redis", 6379, 0)


def test_a_url_keeps_its_own_password_and_unix_sockets_take_it_as_a_query():
    assert with_password("redis://u:mine@h:1/0", PASSWORD) == "redis://u:mine@h:1/0"
    unix = with_password("unix:///run/redis.sock?db=2", PASSWORD)
    assert redis.connection.parse_url(unix)["password"] == PASSWORD
    assert with_password("redis://h:1/0", None) == "redis://h:1/0"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("at rediss://user:pw@host:1/0, then", "at rediss://user:***@host:1/0, then"),
        ("{'redis_url': 'redis://:a%2Fb@h:1/0'}", "{'redis_url': 'redis://:***@h:1/0'}"),
        ("unix:///r.sock?db=0&password=abc", "unix:///r.sock?db=0&password=***"),
        ("redis://redis:6379/0 has none", "redis://redis:6379/0 has none"),
    ],
)
def test_redact_masks_url_passwords(text, expected):
    assert redact(text) == expected


def test_the_configured_password_is_masked_wherever_it_appears(monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    assert redact(f"AUTH failed for {PASSWORD}") == "AUTH failed for ***"
    assert redact("k3%2FYq%2BZr%40x9%3D%3D in a URL") == "*** in a URL"


def test_settings_take_the_password_separately_and_never_show_it(monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    cfg = CommonSettings(redis_url="redis://redis:6379/0")
    assert redis.connection.parse_url(cfg.require_redis())["password"] == PASSWORD
    shown = to_json_text(CommonSettings(redis_url=cfg.require_redis()))
    assert PASSWORD not in shown and "k3%2F" not in shown
    assert json.loads(shown)["redis_url"] == "redis://:***@redis:6379/0"


def test_log_records_are_redacted_arguments_included(caplog):
    logger = logging.getLogger("test.secrets")
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        logger.warning("config: %s", {"redis_url": "redis://:hunter22@redis:6379/0"})
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "hunter22" not in caplog.text and "redis://:***@redis:6379/0" in caplog.text
