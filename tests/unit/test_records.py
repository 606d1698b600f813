import pytest

from streamcap.formats.records import (
    CheckpointRecord,
    FailedRow,
    PartRecord,
    PartStats,
    ShardRecord,
    SourceRecord,
    source_slug,
)


def test_source_splits_into_parts_covering_every_row_once():
    src = SourceRecord(
        id="relaion", uri="x.parquet", format="parquet", url_col="url", caption_col="c", rows=2501, part_size=1000
    )
    parts = [src.part(i) for i in range(src.parts)]
    assert [(p.start, p.end) for p in parts] == [(0, 1000), (1000, 2000), (2000, 2501)]
    assert sum(p.rows for p in parts) == 2501
    assert parts[1].part_id == "relaion:1"


@pytest.mark.parametrize(
    "record",
    [
        PartRecord("s", 2, 2000, 3000),
        ShardRecord(
            name="s-000002-0000.tar", source="s", part=2, seq=0, samples=10, bytes=1234, first_row=2000, last_row=2011
        ),
        CheckpointRecord(path="/ckpt/step-100.pt", step=100, run="r1", created=1.5),
        SourceRecord(
            id="s",
            uri="u",
            format="csv",
            url_col="url",
            caption_col="c",
            rows=5,
            part_size=2,
            extra_caption_cols=("alt",),
        ),
    ],
)
def test_messages_roundtrip(record):
    assert type(record).from_message(record.to_message()) == record


def test_part_stats_roundtrip_and_counts():
    stats = PartStats(
        source="s",
        part=0,
        start=0,
        end=4,
        samples=2,
        failures=[FailedRow(1, "http://x", "timeout"), FailedRow(3, "", "invalid_url")],
    )
    assert stats.failures_by_reason() == {"timeout": 1, "invalid_url": 1}
    again = PartStats.from_json(stats.to_json())
    assert again == stats


def test_unknown_failure_reason_is_refused():
    with pytest.raises(ValueError, match="unknown failure reason"):
        FailedRow(0, "u", "gremlins")


def test_source_slug():
    assert source_slug("LAION/POP v1.2") == "laion-pop-v1-2"
    with pytest.raises(ValueError):
        source_slug("...")


def test_a_retry_replaces_its_rows_outcomes_and_can_be_undone():
    from streamcap.formats.records import FailedRow, PartStats, ShardRecord

    old = ShardRecord("s-000000-0000.tar", "s", 0, 0, samples=2, bytes=10, first_row=0, last_row=1)
    lost = ShardRecord("s-000000-0001.tar", "s", 0, 1, samples=1, bytes=10, first_row=4, last_row=4)
    base = PartStats(
        "s", 0, 0, 5, samples=3, bytes_downloaded=7, shards=[old, lost],
        failures=[FailedRow(2, "u2", "blocked_address"), FailedRow(3, "u3", "timeout")],
    )  # fmt: skip
    new = ShardRecord("s-000000-0002.tar", "s", 0, 2, samples=2, bytes=10, first_row=2, last_row=4)
    work = PartStats(
        "s", 0, 0, 5, samples=2, bytes_downloaded=5, shards=[new], failures=[FailedRow(3, "u3", "connect_error")]
    )
    merged = base.with_retry("r1", work, [2, 3, 4], seq0=2, drop=(lost.name,))
    assert merged.done_id == "s:0~r1" and merged.samples == 4 and merged.bytes_downloaded == 12
    assert [s.name for s in merged.shards] == [old.name, new.name]
    assert [(f.row, f.reason) for f in merged.failures] == [(3, "connect_error")]
    assert (merged.retried_rows, merged.retried_samples) == (3, 2)
    again = PartStats.from_json(merged.to_json())
    assert again.retries == merged.retries and again.without_retry("r1").to_json() == base.to_json()
