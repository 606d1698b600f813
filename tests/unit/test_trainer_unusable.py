"""A run whose shards hold nothing to train on stops instead of spinning (issue 25, item 3):
the count of shard readings in a row without a usable sample (trainer.unusable)."""

from __future__ import annotations

from streamcap.trainer.unusable import UnusableShards

NO_COLUMN = "no caption column 'nonexist' in the sample (it has: caption, caption_raw)"


def _read(streak: UnusableShards, slot: int, name: str, verdicts: list[str | None]) -> None:
    """One reading of `name` whose samples were judged `verdicts` (None: used), then its end."""
    streak.opened(slot, name)
    for why in verdicts:
        streak.judged(slot, why)
    streak.all_read(slot, len(verdicts))


def test_readings_without_a_usable_sample_stop_at_the_limit_replays_included():
    streak = UnusableShards(limit=4)
    for slot in range(3):
        _read(streak, slot, f"s{slot % 2}.tar", [NO_COLUMN] * 5)
        assert streak.verdict() is None
    _read(streak, 3, "s1.tar", [NO_COLUMN] * 5)  # two shards, read twice each
    line = streak.verdict()
    assert line == (
        "stopping: no usable sample in the last 4 shards read (2 different): "
        f"{NO_COLUMN} (20 of 20 samples); pass --caption-column with one of the columns the shards have"
    )


def test_one_usable_sample_ends_the_streak_and_empty_readings_do_not_count():
    streak = UnusableShards(limit=2)
    _read(streak, 0, "a.tar", ["image does not decode: x"] * 3)
    _read(streak, 1, "b.tar", ["image does not decode: x", None])
    _read(streak, 2, "missing.tar", [])  # a missing or empty file: waiting, not failing
    _read(streak, 3, "missing.tar", [])
    assert streak.in_a_row == 0 and streak.verdict() is None
    _read(streak, 4, "c.tar", ["image does not decode: x"])
    _read(streak, 5, "d.tar", ["empty caption in column 'caption'", "image does not decode: x"])
    assert "check the shards (`streamcap shards verify`)" in streak.verdict()


def test_a_reading_counts_only_once_every_sample_it_read_is_judged():
    streak = UnusableShards(limit=1)
    streak.opened(0, "a.tar")
    streak.judged(0, NO_COLUMN)
    streak.all_read(0, 2)  # the shard ended with one of its samples still in the shuffle buffer
    assert streak.verdict() is None
    streak.judged(0, None)  # ... and that one was usable
    assert streak.in_a_row == 0 and streak.verdict() is None
    streak.judged(None, NO_COLUMN)  # a sample restored from a checkpoint: its reading is unknown
    assert streak.verdict() is None
