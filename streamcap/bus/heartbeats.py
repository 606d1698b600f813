"""Heartbeats: each process's liveness and live rates, in a hash that expires when it stops.

    bus.write_heartbeat(r, keys, "host-1234", DownloaderHeartbeat(...))   # every few seconds
    for beat in bus.read_heartbeats(r, keys, bus.ROLE_DOWNLOADER):
        beat.record.urls_per_s if beat.record else beat.problem

The hash `hb:<role>:<id>` holds the role's record (streamcap.formats.heartbeats), which also
says which role it is, plus `ts`, the time of the write. A hash no record of this streamcap
reads (another version, a field renamed) is still listed, with `record` None and `problem`
saying why, so `streamcap status` shows it instead of reading zeros.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from streamcap.bus.schema import (
    HEARTBEAT_STALE_S,
    HEARTBEAT_TTL_S,
    ROLE_DOWNLOADER,
    ROLE_EVALUATOR,
    ROLE_GC,
    ROLE_TRAINER,
    Keys,
)
from streamcap.formats.heartbeats import (
    DownloaderHeartbeat,
    EvaluatorHeartbeat,
    GcHeartbeat,
    HeartbeatError,
    HeartbeatRecord,
    TrainerHeartbeat,
)

# The record each role writes.
RECORD_TYPES: dict[str, type[HeartbeatRecord]] = {
    ROLE_DOWNLOADER: DownloaderHeartbeat,
    ROLE_TRAINER: TrainerHeartbeat,
    ROLE_EVALUATOR: EvaluatorHeartbeat,
    ROLE_GC: GcHeartbeat,
}
TS_FIELD = "ts"  # added by write_heartbeat: when the hash was last written
UNREADABLE = "unreadable"  # the state shown for a heartbeat no record reads


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat as read back: whose, how old, and its record (None when unreadable)."""

    role: str
    id: str
    age_s: float
    stale: bool  # not refreshed for HEARTBEAT_STALE_S, e.g. a process that hangs
    record: HeartbeatRecord | None
    problem: str = ""  # why `record` is None

    @property
    def state(self) -> str:
        return getattr(self.record, "state", UNREADABLE)


def role_of(record: HeartbeatRecord) -> str:
    """The role whose heartbeat `record` is; TypeError for anything else."""
    for role, record_type in RECORD_TYPES.items():
        if type(record) is record_type:
            return role
    raise TypeError(f"{type(record).__name__} is no heartbeat record (one of {', '.join(RECORD_TYPES)})")


def write_heartbeat(
    r: redis.Redis, keys: Keys, instance: str, record: HeartbeatRecord, ttl_s: int = HEARTBEAT_TTL_S
) -> None:
    """Replace the heartbeat hash of (the record's role, instance) and (re)arm its TTL, atomically."""
    key = keys.heartbeat(role_of(record), instance)
    mapping = {**record.to_fields(), TS_FIELD: repr(time.time())}
    pipe = r.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, ttl_s)
    pipe.execute()


def read_heartbeats(r: redis.Redis, keys: Keys, role: str = "*") -> list[Heartbeat]:
    """Every live heartbeat of `role` ('*' for all), oldest instance name first."""
    names = sorted(r.scan_iter(match=keys.heartbeat_pattern(role), count=500))
    if not names:
        return []
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    now, beats = time.time(), []
    for name, raw in zip(names, pipe.execute()):
        if not raw:  # expired between SCAN and HGETALL
            continue
        _, hb_role, instance = name[len(keys.namespace) + 1 :].split(":", 2)
        fields = dict(raw)
        try:
            age = now - float(fields.pop(TS_FIELD))
        except (KeyError, ValueError):  # no time of writing: as old as can be, so stale
            age = now
        record, problem = _record(hb_role, fields)
        beats.append(Heartbeat(hb_role, instance, round(age, 1), age > HEARTBEAT_STALE_S, record, problem))
    return beats


def _record(role: str, fields: dict[str, str]) -> tuple[HeartbeatRecord | None, str]:
    record_type = RECORD_TYPES.get(role)
    if record_type is None:
        return None, f"no heartbeat record for role {role!r} in this streamcap"
    try:
        return record_type.from_fields(fields), ""
    except HeartbeatError as e:
        return None, str(e)
