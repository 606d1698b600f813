"""Every count and size setting has an upper bound a real machine can honour: a value past it is
one line naming the setting and exit code 1, through the real CLI (`--processes 100000` once
forked until the machine fell over)."""

from __future__ import annotations

import inspect

import pytest

from streamcap.cli import app
from streamcap.common.settings import ConfigError, describe
from streamcap.demo.config import DemoSettings
from streamcap.downloader.config import DownloaderSettings, EnqueueSettings
from streamcap.entrypoint import run_app
from streamcap.eval.config import EvalSettings
from streamcap.shardwriter.config import ShardWriterSettings
from streamcap.trainer.config import TrainerSettings

ENQUEUE = ["enqueue", "urls.parquet"]  # the source is read only once the settings are valid
DOWNLOAD = ["download"]
GC = ["shards", "gc"]
TRAIN = ["train"]
EVAL = ["eval", "watch"]
DEMO = ["demo"]

# (command, the class declaring the setting, field, upper bound)
BOUNDS = [
    (ENQUEUE, EnqueueSettings, "part_size", 100_000),
    (DOWNLOAD, ShardWriterSettings, "shard_max_samples", 1_000_000),
    (DOWNLOAD, ShardWriterSettings, "shard_max_bytes", 64 * 2**30),
    (GC, ShardWriterSettings, "max_disk_bytes", 10**15),
    (GC, ShardWriterSettings, "min_free_bytes", 10**15),
    (GC, ShardWriterSettings, "min_reads", 1000),
    (DOWNLOAD, DownloaderSettings, "processes", 256),
    (DOWNLOAD, DownloaderSettings, "max_deliveries", 100),
    (DOWNLOAD, DownloaderSettings, "parts_in_flight", 64),
    (DOWNLOAD, DownloaderSettings, "concurrency", 4096),
    (DOWNLOAD, DownloaderSettings, "per_host", 4096),
    (DOWNLOAD, DownloaderSettings, "retries", 10),
    (DOWNLOAD, DownloaderSettings, "max_bytes", 1_000_000_000),
    (DOWNLOAD, DownloaderSettings, "image_size", 8192),
    (DOWNLOAD, DownloaderSettings, "quality", 100),
    (DOWNLOAD, DownloaderSettings, "max_pixels", 1_000_000_000),
    (DOWNLOAD, DownloaderSettings, "min_size", 65_535),
    (DOWNLOAD, DownloaderSettings, "image_workers", 256),
    (DOWNLOAD, DownloaderSettings, "caption_sentences", 100),
    (DOWNLOAD, DownloaderSettings, "spool_max_bytes", 10**15),
    (TRAIN, TrainerSettings, "image_size", 2048),
    (TRAIN, TrainerSettings, "max_len", 512),
    (TRAIN, TrainerSettings, "caption_sentences", 100),
    (TRAIN, TrainerSettings, "batch_size", 4096),
    (TRAIN, TrainerSettings, "loader_workers", 64),
    (TRAIN, TrainerSettings, "shuffle_buffer", 20_000),
    (TRAIN, TrainerSettings, "fresh_wait_ms", 1900),
    (TRAIN, TrainerSettings, "max_steps", 10_000_000),
    (TRAIN, TrainerSettings, "warmup_steps", 10_000_000),
    (TRAIN, TrainerSettings, "freeze_encoder_steps", 10_000_000),
    (TRAIN, TrainerSettings, "grad_accum", 1024),
    (TRAIN, TrainerSettings, "min_eos_position", 512),
    (TRAIN, TrainerSettings, "aug_ramp_steps", 10_000_000),
    (TRAIN, TrainerSettings, "checkpoint_every", 10_000_000),
    (TRAIN, TrainerSettings, "log_every", 10_000_000),
    (TRAIN, TrainerSettings, "sample_every", 10_000_000),
    (TRAIN, TrainerSettings, "histogram_every", 10_000_000),
    (TRAIN, TrainerSettings, "max_bad_steps", 1000),
    (TRAIN, TrainerSettings, "max_unusable_shards", 100_000),
    (TRAIN, TrainerSettings, "keep_checkpoints", 10_000),
    (TRAIN, TrainerSettings, "shard_cache_bytes", 10**15),
    (EVAL, EvalSettings, "beam", 64),
    (EVAL, EvalSettings, "max_tokens", 512),
    (EVAL, EvalSettings, "min_tokens", 512),
    (EVAL, EvalSettings, "no_repeat_ngram", 512),
    (EVAL, EvalSettings, "batch_size", 1024),
    (EVAL, EvalSettings, "gallery", 1000),
    (DEMO, DemoSettings, "rows", 100_000),
    (DEMO, DemoSettings, "eval_images", 10_000),
    (DEMO, DemoSettings, "steps", 100_000),
    (DEMO, DemoSettings, "batch_size", 1024),
    (DEMO, DemoSettings, "checkpoints", 100),
]
# Whole-number settings that are no count or size of anything a machine holds.
UNBOUNDED = {
    (EnqueueSettings, "limit"),  # past the source's length, the whole source is taken
    (EvalSettings, "limit"),  # likewise the whole split
    (TrainerSettings, "seed"),
    (DemoSettings, "seed"),
}


def _field(cls: type, name: str):
    return next(f for f in cls.__dataclass_fields__.values() if f.name == name)


@pytest.mark.parametrize("command, cls, name, bound", BOUNDS, ids=[f"{c.__name__}.{n}" for _, c, n, _ in BOUNDS])
def test_a_value_past_the_bound_is_one_line_and_exit_code_1(command, cls, name, bound, capsys):
    flag = _field(cls, name).metadata["flag"].split("/")[0]
    assert run_app(app, [*command, flag, str(bound + 1)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith(f"streamcap: error: {describe(cls, name)}: expected ")
    assert out.err.endswith(f", got {bound + 1}\n")
    assert _field(cls, name).metadata["check"](bound) is None  # the bound itself is accepted


def test_the_message_says_the_range():
    with pytest.raises(
        ConfigError, match=r"^--processes / STREAMCAP_PROCESSES: expected a number from 1 to 256, got 100000$"
    ):
        DownloaderSettings(processes=100_000)
    with pytest.raises(ConfigError, match=r"^--shard-max-bytes / \S+: expected a byte size from 4KiB to 64GiB, got "):
        DownloaderSettings(shard_max_bytes="1T")


def test_every_whole_number_setting_is_bounded_or_known_not_to_need_one():
    declared = {
        (cls, name)
        for cls in (
            EnqueueSettings,
            ShardWriterSettings,
            DownloaderSettings,
            TrainerSettings,
            EvalSettings,
            DemoSettings,
        )
        for name, hint in inspect.get_annotations(cls).items()
        if "int" in str(hint)
    }
    covered = {(cls, name) for _, cls, name, _ in BOUNDS} | UNBOUNDED
    assert declared == covered
