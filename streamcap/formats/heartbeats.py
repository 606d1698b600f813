"""Heartbeat records: what each kind of process says about itself every few seconds.

One frozen dataclass per role is the only definition of its heartbeat: the service builds one,
`bus.write_heartbeat` stores its `to_fields()` in the role's hash, and every reader
(`streamcap status`, the trainer's view of the downloaders, the tests) gets it back through
`from_fields`, never through field names of its own.

    beat = GcHeartbeat(state="watching", rounds=3, ...)
    fields = beat.to_fields()              # {"v": "1", "state": "watching", "rounds": "3", ...}
    GcHeartbeat.from_fields(fields)        # the same record
    GcHeartbeat.from_fields({"v": "2"})    # HeartbeatError: version 2, this streamcap reads 1

Every record carries HEARTBEAT_VERSION as `v`. A hash that is not exactly the record (a field
missing, one this streamcap does not know, a value of the wrong type, another version) raises a
HeartbeatError that says which, so a renamed field is an error on the first read, not a zero.
Adding or renaming a field means raising HEARTBEAT_VERSION.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

HEARTBEAT_VERSION = 4
VERSION_FIELD = "v"

# Downloader states (`state`), and the two that mean "not claiming, see `reason`".
DOWNLOADER_WORKING, DOWNLOADER_IDLE, DOWNLOADER_STOPPING = "working", "idle", "stopping"
DOWNLOADER_PAUSED, DOWNLOADER_PAUSED_FOR_DISK = "paused", "paused_for_disk"
DOWNLOADER_WAITING_FOR_REDIS = "waiting_for_redis"
# Trainer rank states; a rank that ended on purpose says so in its last heartbeat, and
# `streamcap status` expects no more from it.
TRAINER_TRAINING, TRAINER_WAITING_FOR_DATA = "training", "waiting_for_data"
TRAINER_FINISHED, TRAINER_STOPPED = "finished", "stopped"
TRAINER_FAILED = "failed"  # the run stopped itself (`error` says why): it needs a person, not a restart
ENDED_STATES = (TRAINER_FINISHED, TRAINER_STOPPED, TRAINER_FAILED)
GC_WATCHING = "watching"

R = TypeVar("R", bound="HeartbeatRecord")


class HeartbeatError(ValueError):
    """A heartbeat hash that is not the record this streamcap defines for its role."""


class HeartbeatRecord:
    """What the records share: the hash encoding, checked both ways."""

    WHAT: ClassVar[str] = "heartbeat"

    def to_fields(self) -> dict[str, str]:
        """The Redis hash of this record: every field as text (JSON for lists, dicts and None)."""
        fields = {VERSION_FIELD: str(HEARTBEAT_VERSION)}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            fields[f.name] = value if isinstance(value, str) else json.dumps(value)
        return fields

    @classmethod
    def from_fields(cls: type[R], fields: dict[str, str]) -> R:
        """The record `fields` hold; HeartbeatError naming what does not fit."""
        _check_version(cls.WHAT, fields.get(VERSION_FIELD))
        types = typing.get_type_hints(cls)
        declared = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        missing = [name for name in declared if name not in fields]
        unknown = sorted(set(fields) - set(declared) - {VERSION_FIELD})
        if missing or unknown:
            problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has fields this streamcap does not know: {', '.join(unknown)}"] if unknown else []
            )
            raise HeartbeatError(
                f"{cls.WHAT} version {HEARTBEAT_VERSION} {' and '.join(problems)} "
                "(a streamcap of another build wrote it: run one version everywhere)"
            )
        return cls(**{name: _decode(cls.WHAT, name, types[name], fields[name]) for name in declared})


def _check_version(what: str, raw: str | None) -> None:
    if raw is None:
        raise HeartbeatError(f"{what} has no version field '{VERSION_FIELD}' (written by an older streamcap?)")
    try:
        version = int(raw)
    except ValueError:
        raise HeartbeatError(f"{what} version {raw!r} is not a number") from None
    if version != HEARTBEAT_VERSION:
        who = "a newer streamcap (upgrade this one)" if version > HEARTBEAT_VERSION else "an older streamcap"
        raise HeartbeatError(f"{what} version {version}, this streamcap reads {HEARTBEAT_VERSION}: written by {who}")


def _decode(what: str, name: str, kind: Any, raw: str) -> Any:
    if kind is str:
        return raw
    allowed = _types(kind)
    try:
        value = json.loads(raw)  # Python's json reads NaN too: a loss before the first logged step
    except ValueError:
        value = raw  # fails the type check below
    if isinstance(value, bool) or not isinstance(value, allowed):  # no field is a bool
        if not (float in allowed and isinstance(value, int) and not isinstance(value, bool)):
            raise HeartbeatError(f"{what} field {name}={raw[:80]!r} does not read as {_name(kind)}")
        value = float(value)  # a float written as 3 by another writer
    return value


def _types(kind: Any) -> tuple[type, ...]:
    """The classes a value of annotation `kind` may be: int -> (int,), float | None -> (float, NoneType)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return tuple(typing.get_origin(k) or k for k in typing.get_args(kind))
    return (typing.get_origin(kind) or kind,)


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


@dataclass(frozen=True)
class DownloaderHeartbeat(HeartbeatRecord):
    """`hb:downloader:<consumer>`: one downloader worker process (downloader.heartbeat)."""

    WHAT: ClassVar[str] = "downloader heartbeat"

    state: str  # working | idle | paused | paused_for_disk | waiting_for_redis | stopping
    reason: str  # why paused, e.g. "shard dir not writable: ..." ('' otherwise)
    urls_per_s: float  # rates over the last 30 s
    images_per_s: float
    mb_per_s: float
    in_flight: int  # requests on the network now
    rows_open: int  # rows of claimed parts not finished yet
    parts: list[str]  # the part ids in flight
    urls: int  # totals since start: rows finished, rows that became samples
    images: int
    failures: dict[str, int]  # {reason: count} since start
    parts_committed: int
    parts_released: int
    parts_failed: int
    parts_superseded: int
    parts_dead: int
    parts_env_failed: int  # attempts given back because of the environment
    rows_deferred: int  # slow rows deferred to a retry part (downloader.stragglers)
    image_crashes: int
    dns_lookups: int  # names asked of the DNS servers since start
    dns_cache_hits: int  # names answered from the cache, failures (negative cache) included
    concurrency: int
    pid: int
    started: float  # unix time
    version: str  # streamcap's

    def rates(self) -> dict[str, float]:
        """Every live rate of the record (the fields ending in _per_s), by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_per_s")}


@dataclass(frozen=True)
class TrainerHeartbeat(HeartbeatRecord):
    """`hb:trainer:<run>-rank<rank>`: one training rank (trainer.step_report, trainer.redis_status)."""

    WHAT: ClassVar[str] = "trainer heartbeat"

    state: str  # training | waiting_for_data | finished | stopped | failed
    error: str  # with `failed`: the one line the run stopped with ('' otherwise)
    waiting_reason: str  # with `waiting_for_data`: what keeps shards away (ops.data_wait; '' while on their way)
    run: str
    rank: int
    world_size: int
    step: int
    max_steps: int
    samples_per_s: float  # samples this rank trained on per second, since the last heartbeat
    data_wait_pct: float  # % of that time the training loop waited for the next batch
    fresh: int  # samples of fresh / replayed shards this rank has trained on (totals)
    replay: int
    fresh_ratio: float  # fresh / (fresh + replay) since the last heartbeat
    fresh_wait_s: float  # seconds loader workers blocked waiting for a fresh shard (total)
    fresh_shards_pending: int  # shards registered but not yet claimed by the run; -1: not counted here
    bad_samples: int  # samples skipped as corrupt or unusable (total)
    loss: float  # latest values; NaN before the first logged step
    lr: float
    aug_level: float
    nonfinite_steps: int  # steps skipped for a non-finite loss or gradient norm (total, across resumes)
    nonfinite_in_a_row: int  # the current streak (the run stops at --max-bad-steps)
    last_nonfinite_step: int  # the latest of them (0: none)
    oom_steps: int  # the same for steps skipped for running out of GPU memory (3 in a row stop)
    oom_in_a_row: int
    checkpoints_freed_bytes: int  # old checkpoints --keep-checkpoints deleted (rank 0; since it started)

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


@dataclass(frozen=True)
class EvaluatorHeartbeat(HeartbeatRecord):
    """`hb:evaluator:<id>`: one `streamcap eval watch` process (eval.watcher)."""

    WHAT: ClassVar[str] = "evaluator heartbeat"

    state: str  # idle | loading | captioning | scoring | writing
    checkpoint: str  # path being evaluated ('' when idle); step, run: its step and run
    step: int | None
    run: str
    progress: str  # images captioned / images in the set, e.g. "320/1000"
    evaluated: int  # checkpoints this process has finished (failed ones included)
    latest: dict[str, Any]  # {"step", "run", <metric>: value ...} of the last finished evaluation
    metric: str  # the metric that picks the best checkpoint
    best_value: float | None  # the best so far (from `evals:best`); None before any
    best_step: int | None
    best_checkpoint: str
    dataset: str
    device: str


@dataclass(frozen=True)
class GcHeartbeat(HeartbeatRecord):
    """`hb:gc:<id>`: the `streamcap shards gc --watch` loop (shardwriter.gc_watch)."""

    WHAT: ClassVar[str] = "gc heartbeat"

    state: str  # watching
    rounds: int
    deleted: int  # shards deleted since start
    freed_bytes: int
    last_round_ts: float  # unix time of the last round; 0 before the first
    last_result: str  # why the last round stopped deleting
    interval_s: float
    max_disk_bytes: int
    min_free_bytes: int
    min_reads: int
