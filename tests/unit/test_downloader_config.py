"""Settings of enqueue and download: defaults, env vars, one-line errors naming the setting."""

from __future__ import annotations

import pytest

from streamcap.common.settings import ConfigError
from streamcap.downloader.config import DownloaderSettings, EnqueueSettings
from tests.support import timing


def test_defaults_follow_the_issue():
    cfg = DownloaderSettings()
    assert (cfg.quality, cfg.caption_sentences, cfg.resize_mode, cfg.image_format) == (95, 2, "keep_ratio", "jpg")
    assert cfg.opt_out == {"noai", "noimageai", "noindex", "noimageindex"}
    assert "streamcap" in cfg.user_agent and cfg.allow_private is False
    assert EnqueueSettings().part_size == 1000 and EnqueueSettings().url_col == "url"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"per_host": 300}, "--per-host / STREAMCAP_PER_HOST: expected at most --concurrency (128), got 300"),
        ({"resize_mode": "stretch"}, "--resize-mode / STREAMCAP_RESIZE_MODE: expected one of keep_ratio, center_crop"),
        ({"image_format": "png"}, "--image-format / STREAMCAP_IMAGE_FORMAT: expected one of jpg, webp"),
        ({"quality": 0}, "--quality / STREAMCAP_QUALITY: expected a number from 1 to 100, got 0"),
        ({"user_agent": "curl/8"}, "--user-agent / STREAMCAP_USER_AGENT: expected a printable User-Agent that names"),
        ({"opt_out_directives": "no ai"}, "--opt-out-directives / STREAMCAP_OPT_OUT_DIRECTIVES: expected comma"),
        ({"max_aspect_ratio": 0.5}, "--max-aspect-ratio / STREAMCAP_MAX_ASPECT_RATIO: expected 0 (no limit) or"),
        ({"total_timeout": 0}, "--total-timeout / STREAMCAP_TOTAL_TIMEOUT: expected a number >= 0.1, got 0"),
        ({"concurrency": 0}, "--concurrency / STREAMCAP_CONCURRENCY: expected a number from 1 to 4096, got 0"),
        ({"shard_max_bytes": "lots"}, "--shard-max-bytes / STREAMCAP_SHARD_MAX_BYTES: expected a byte size"),
    ],
)
def test_wrong_download_settings_are_one_line_naming_the_setting(kwargs, message):
    with pytest.raises(ConfigError) as err:
        DownloaderSettings(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"part_size": 0}, "--part-size / STREAMCAP_PART_SIZE: expected a number from 1 to 100000"),
        ({"limit": -3}, "--limit / STREAMCAP_LIMIT: expected a number >= 1"),
        ({"name": "!!!"}, "--name / STREAMCAP_SOURCE_NAME: expected a name with letters or digits"),
    ],
)
def test_wrong_enqueue_settings(kwargs, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        EnqueueSettings(**kwargs)


def test_one_worker_of_many_runs_one_process():
    assert DownloaderSettings(processes=4).worker().processes == 1


def test_the_downloader_and_enqueue_load_no_torch():
    # The downloader container installs no torch (nor webdataset, which would import it).
    import subprocess
    import sys

    code = (
        "import sys, downloader.service, downloader.enqueue, downloader.cli\n"
        "print(','.join(m for m in ('torch', 'webdataset', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timing.scaled(60), check=True
    )
    assert out.stdout.strip() == ""
