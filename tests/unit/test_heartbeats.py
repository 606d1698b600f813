"""Heartbeat records (streamcap.formats.heartbeats): each role's record survives its Redis hash,
and a hash that is not exactly the record (renamed field, another version) fails with a reason."""

from __future__ import annotations

import dataclasses
import math

import pytest
import redis

from streamcap import bus
from streamcap.bus import heartbeats as bus_heartbeats
from streamcap.downloader.claims import PartClaimer
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.heartbeat import downloader_heartbeat
from streamcap.downloader.inflight import PartsInFlight
from streamcap.downloader.livestats import LiveStats
from streamcap.downloader.pausing import Pausing
from streamcap.formats.heartbeats import (
    HEARTBEAT_VERSION,
    VERSION_FIELD,
    DownloaderHeartbeat,
    EvaluatorHeartbeat,
    GcHeartbeat,
    HeartbeatError,
    TrainerHeartbeat,
)
from streamcap.shardwriter.config import ShardWriterSettings
from streamcap.shardwriter.gc_watch import GcTotals
from tests.support.heartbeats import record

EXAMPLES = [
    record(
        DownloaderHeartbeat,
        state="paused",
        reason="shard dir not writable: /data: read-only",
        urls_per_s=12.5,
        images_per_s=10.25,
        mb_per_s=0.75,
        in_flight=7,
        parts=["relaion:3", "relaion:4"],
        failures={"timeout": 3, "http_status": 1},
        parts_committed=2,
        pid=1234,
        started=1_700_000_000.5,
        version="0.1.0",
    ),
    record(
        TrainerHeartbeat,
        state="training",
        run="live",
        rank=1,
        world_size=2,
        step=40,
        samples_per_s=55.5,
        data_wait_pct=12.5,
        fresh_shards_pending=-1,
        loss=2.34567,
        lr=1e-4,
    ),
    record(
        EvaluatorHeartbeat,
        state="captioning",
        checkpoint="/ck/step-100.pt",
        step=100,
        progress="32/1000",
        latest={"step": 50, "run": "r1", "CIDEr": 0.42},
        best_value=0.42,
        best_step=50,
    ),
    record(EvaluatorHeartbeat, state="idle", step=None, best_value=None, best_step=None),
    record(GcHeartbeat, state="watching", rounds=3, deleted=5, freed_bytes=10**12, last_round_ts=1.5, interval_s=30.0),
]


@pytest.mark.parametrize("beat", EXAMPLES, ids=lambda b: type(b).__name__)
def test_every_role_survives_its_hash(beat):
    fields = beat.to_fields()
    assert all(isinstance(value, str) for value in fields.values())  # what a Redis hash holds
    assert fields[VERSION_FIELD] == str(HEARTBEAT_VERSION)
    assert type(beat).from_fields(fields) == beat


def test_a_loss_not_logged_yet_survives_as_nan():
    beat = record(TrainerHeartbeat, loss=float("nan"))
    assert math.isnan(TrainerHeartbeat.from_fields(beat.to_fields()).loss)


@pytest.mark.parametrize("record_type", sorted(bus_heartbeats.RECORD_TYPES.values(), key=lambda t: t.__name__))
def test_the_writers_fields_are_exactly_the_readers(record_type):
    """What `to_fields` writes is what `from_fields` declares, one for one (plus the version)."""
    declared = {f.name for f in dataclasses.fields(record_type)}
    assert set(record(record_type).to_fields()) == declared | {VERSION_FIELD}


def test_a_field_renamed_by_the_writer_fails_on_the_reader_naming_both():
    fields = EXAMPLES[0].to_fields()
    fields["urls_per_sec"] = fields.pop("urls_per_s")
    with pytest.raises(HeartbeatError) as e:
        DownloaderHeartbeat.from_fields(fields)
    assert "lacks urls_per_s" in str(e.value) and "does not know: urls_per_sec" in str(e.value)


def test_a_field_missing_is_an_error_not_a_zero():
    fields = EXAMPLES[4].to_fields()
    del fields["deleted"]
    with pytest.raises(HeartbeatError, match=f"gc heartbeat version {HEARTBEAT_VERSION} lacks deleted"):
        GcHeartbeat.from_fields(fields)


@pytest.mark.parametrize(
    "version, message",
    [
        (str(HEARTBEAT_VERSION + 1), "written by a newer streamcap (upgrade this one)"),
        ("0", "written by an older streamcap"),
        ("two", "version 'two' is not a number"),
        (None, "has no version field 'v'"),
    ],
)
def test_another_version_is_refused_with_a_reason(version, message):
    fields = EXAMPLES[1].to_fields()
    if version is None:
        del fields[VERSION_FIELD]
    else:
        fields[VERSION_FIELD] = version
    with pytest.raises(HeartbeatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainerHeartbeat.from_fields(fields)


@pytest.mark.parametrize(
    "field, raw", [("step", "forty"), ("step", "1.5"), ("loss", "[1]"), ("step", "true"), ("state", None)]
)
def test_a_value_of_the_wrong_type_names_its_field(field, raw):
    fields = EXAMPLES[1].to_fields()
    if raw is None:  # a str field reads anything; drop it instead
        del fields[field]
        match = f"lacks {field}"
    else:
        fields[field] = raw
        match = f"field {field}="
    with pytest.raises(HeartbeatError, match=match):
        TrainerHeartbeat.from_fields(fields)


def test_every_role_of_the_schema_has_a_record_and_records_name_their_role():
    assert set(bus_heartbeats.RECORD_TYPES) == {bus.ROLE_DOWNLOADER, bus.ROLE_TRAINER, bus.ROLE_EVALUATOR, bus.ROLE_GC}
    for role, record_type in bus_heartbeats.RECORD_TYPES.items():
        assert bus.role_of(record(record_type)) == role
    with pytest.raises(TypeError, match="no heartbeat record"):
        bus.role_of(object())  # type: ignore[arg-type]


def test_the_downloaders_heartbeat_reads_back():
    """What the downloader writes (downloader.heartbeat) is a record the readers take."""
    cfg = DownloaderSettings(concurrency=16)
    queue = PartClaimer(redis.Redis(), bus.Keys("unit"), "host-1", lease_ms=60_000)  # never connects here
    stats, pausing = LiveStats(), Pausing(cfg, queue)
    stats.row_done(None)
    stats.row_done("timeout")
    parts = PartsInFlight(cfg, queue, stats, claiming=None, pausing=pausing, beat_now=lambda: None)  # type: ignore[arg-type]
    beat = downloader_heartbeat(cfg, pausing, stats, parts, pool=None)
    assert (beat.state, beat.urls, beat.images, beat.failures, beat.concurrency) == ("idle", 2, 1, {"timeout": 1}, 16)
    assert DownloaderHeartbeat.from_fields(beat.to_fields()) == beat


def test_the_gc_watchs_heartbeat_reads_back():
    beat = GcTotals(rounds=2, deleted=3, freed_bytes=300, last_result="budget met").heartbeat(
        ShardWriterSettings(), interval_s=30
    )
    assert GcHeartbeat.from_fields(beat.to_fields()) == beat and beat.interval_s == 30.0
