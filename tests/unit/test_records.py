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
