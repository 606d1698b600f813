from pathlib import Path

import pytest

from streamcap.common.settings import CommonSettings, ConfigError, all_settings_fields, build


def test_defaults_are_valid():
    cfg = CommonSettings()
    assert cfg.namespace == "streamcap"
    assert cfg.shard_dir == Path("shards")
    assert cfg.redis_url is None


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"redis_url": "http://localhost:6379"}, "--redis-url / REDIS_URL"),
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
