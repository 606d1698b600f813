"""Shards that hold nothing to train on: a run that can make no sample stops instead of spinning.

    streak = UnusableShards(limit=8)
    streak.opened(slot, "shard-000001.tar")       # the stream starts reading a shard (one slot per reading)
    streak.judged(slot, "no caption column ...")  # a sample of it was skipped, saying why
    streak.judged(slot, None)                     # ... or became training data: the streak ends
    streak.all_read(slot, samples=16)             # the reading reached the end of the shard
    streak.verdict()                              # None, or the one line to stop with

A wrong --caption-column (or shards of another kind) makes every sample unusable, and the loader
would replay the same shards for ever while the run sits at step 0 on a rented GPU. A reading
counts once every sample it read was judged and none was usable; `limit` such readings in a row
(replays count too, so a worker with fewer shards than `limit` stops after reading all it has
often enough) end the run. A reading that gave no sample at all (a missing or empty file) is not
counted here: with nothing else to read, the worker waits, and the trainer says what it waits for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

CAPTION_COLUMN_PROBLEM = "no caption column"  # the start of the SampleError of a missing --caption-column


@dataclass
class _Reading:
    name: str
    read: int | None = None  # samples read from the file, once it was read to its end
    judged: int = 0
    used: int = 0


class UnusableShards:
    """Counts shard readings in a row that gave samples but no usable one; see the module docstring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self._readings: dict[int, _Reading] = {}
        self._names: set[str] = set()
        self._reasons: Counter[str] = Counter()

    def opened(self, slot: int, name: str) -> None:
        self._readings[slot] = _Reading(name)

    def all_read(self, slot: int, samples: int) -> None:
        reading = self._readings.get(slot)
        if reading is not None:
            reading.read = samples
            self._settle(slot, reading)

    def judged(self, slot: int | None, why: str | None) -> None:
        """A sample of reading `slot` was used (`why` None) or skipped for `why`."""
        reading = self._readings.get(slot) if slot is not None else None
        if why is None:
            self.in_a_row = 0
            self._names.clear()
            self._reasons.clear()
        else:
            self._reasons[why] += 1
        if reading is None:  # a reading restored from a checkpoint: its earlier samples are not known
            return
        reading.judged += 1
        reading.used += why is None
        self._settle(slot, reading)

    def _settle(self, slot: int, reading: _Reading) -> None:
        if reading.read is None or reading.judged < reading.read:
            return
        del self._readings[slot]
        if reading.read and not reading.used:
            self.in_a_row += 1
            self._names.add(reading.name)

    def verdict(self) -> str | None:
        """The line to stop with once `limit` readings in a row gave no usable sample, else None."""
        if self.in_a_row < self.limit or not self._reasons:
            return None
        reason, count = self._reasons.most_common(1)[0]
        samples = sum(self._reasons.values())
        if reason.startswith(CAPTION_COLUMN_PROBLEM):
            advice = "pass --caption-column with one of the columns the shards have"
        else:
            advice = "check the shards (`streamcap shards verify`) and the caption settings"
        return (
            f"stopping: no usable sample in the last {self.in_a_row} shards read ({len(self._names)} different): "
            f"{reason} ({count} of {samples} samples); {advice}"
        )
