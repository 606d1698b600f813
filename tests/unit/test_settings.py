import gc
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamcap.common.settings import (
    CommonSettings,
    ConfigError,
    Settings,
    all_settings_fields,
    at_least,
    build,
    describe,
    setting,
)


def test_defaults_are_valid():
    cfg = CommonSettings()
    assert cfg.namespace == "streamcap"
    assert cfg.shard_dir == Path("shards")
    assert cfg.redis_url is None


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"redis_url": "http://localhost:6379"}, "--redis-url / REDIS_URL"),
        ({"redis_url": "redis://[::1/0"}, "--redis-url / REDIS_URL"),
        ({"namespace": "two words"}, "--namespace / STREAMCAP_NAMESPACE"),
        ({"namespace": ""}, "--namespace / STREAMCAP_NAMESPACE"),
        ({"log_level": "LOUD"}, "--log-level / STREAMCAP_LOG_LEVEL"),
    ],
)
def test_wrong_value_is_one_line_naming_the_setting(kwargs, names):
    with pytest.raises(ConfigError) as e:
        CommonSettings(**kwargs)
    message = str(e.value)
    assert message.startswith(names + ": expected ")
    assert "\n" not in message
    assert repr(next(iter(kwargs.values()))) in message


def test_missing_redis_url_says_how_to_get_one():
    with pytest.raises(ConfigError, match="streamcap redis"):
        CommonSettings().require_redis()
    assert CommonSettings(redis_url="redis://h:1/0").require_redis() == "redis://h:1/0"


def test_build_keeps_defaults_for_values_not_given():
    cfg = build(CommonSettings, redis_url=None, namespace="ns", shard_dir="/tmp/x")
    assert cfg.namespace == "ns" and cfg.shard_dir == Path("/tmp/x") and cfg.redis_url is None


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        CommonSettings().namespace = "other"  # type: ignore[misc]


def test_every_field_has_flag_env_and_help():
    for f in all_settings_fields(CommonSettings):
        assert f.metadata["flag"].startswith("--") and f.metadata["help"]
        assert f.metadata["env"] in ("REDIS_URL",) or f.metadata["env"].startswith("STREAMCAP_")


def test_shard_dir_must_be_a_directory_or_creatable(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for bad in (a_file, a_file / "below"):
        with pytest.raises(ConfigError, match="--shard-dir / STREAMCAP_SHARD_DIR: expected a directory"):
            CommonSettings(shard_dir=bad)
    assert CommonSettings(shard_dir=tmp_path / "new" / "deeper").shard_dir == tmp_path / "new" / "deeper"


@pytest.fixture
def forgotten_after():
    """Settings classes a test makes are gone once it ends: the docs test lists every live one."""
    yield
    gc.collect()


def test_flag_and_variable_follow_from_the_field_name_and_the_class_prefix(forgotten_after):
    @dataclass(frozen=True, kw_only=True)
    class PipeSettings(CommonSettings, env_prefix="PIPE_"):
        part_size: int = setting(10, check=at_least(1))
        "Rows per part."
        run: str = setting("r", flag="--run-id", env="PIPE_RUN_ID")
        "Run id."
        quiet: bool = setting(False, env=None)
        "Say less."

    @dataclass(frozen=True, kw_only=True)
    class MorePipeSettings(PipeSettings):
        extra_knob: int = setting(1)
        "A knob."

    names = {f.name: (f.metadata["flag"], f.metadata["env"]) for f in all_settings_fields(MorePipeSettings)}
    assert names["part_size"] == ("--part-size", "PIPE_PART_SIZE")
    assert names["run"] == ("--run-id", "PIPE_RUN_ID")
    assert names["extra_knob"] == ("--extra-knob", "PIPE_EXTRA_KNOB")  # the prefix is inherited
    assert names["namespace"] == ("--namespace", "STREAMCAP_NAMESPACE")  # inherited settings keep theirs
    assert names["redis_url"] == ("--redis-url", "REDIS_URL")
    assert describe(PipeSettings, "quiet") == "--quiet"
    assert (
        _help(MorePipeSettings, "part_size") == "Rows per part." and _help(MorePipeSettings, "extra_knob") == "A knob."
    )
    with pytest.raises(ConfigError, match="^--part-size / PIPE_PART_SIZE: expected a number >= 1, got 0$"):
        PipeSettings(part_size=0)


def test_a_setting_without_help_fails_when_its_class_is_made(forgotten_after):
    with pytest.raises(TypeError, match="Undocumented.knob: a setting needs its help"):

        @dataclass(frozen=True, kw_only=True)
        class Undocumented(Settings):
            knob: int = setting(1)


def test_a_help_wrapped_over_lines_is_one_line(forgotten_after):
    @dataclass(frozen=True, kw_only=True)
    class Wrapped(Settings):
        knob: int = setting(1)
        """A help long enough to
        take two lines."""

    assert _help(Wrapped, "knob") == "A help long enough to take two lines."


def _help(cls: type, name: str) -> str:
    return next(f for f in all_settings_fields(cls) if f.name == name).metadata["help"]
