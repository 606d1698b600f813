"""Heartbeats: each process's liveness and live rates, in a hash that expires when it stops."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from streamcap.bus.schema import HEARTBEAT_STALE_S, HEARTBEAT_TTL_S, Keys


def write_heartbeat(
    r: redis.Redis, keys: Keys, role: str, instance: str, fields: dict[str, Any], ttl_s: int = HEARTBEAT_TTL_S
) -> None:
    """Replace the heartbeat hash of (role, instance) and (re)arm its TTL, atomically.

    Values that are not str/int/float are stored as JSON (e.g. failures by reason).
    """
    key = keys.heartbeat(role, instance)
    mapping = {k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in fields.items()}
    mapping["ts"] = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, ttl_s)
    pipe.execute()


def read_heartbeats(r: redis.Redis, keys: Keys, role: str = "*") -> list[dict[str, Any]]:
    """Every live heartbeat of `role` ('*' for all), oldest instance name first.

    Each dict has the written fields (JSON values decoded), plus `role`, `id`, `age_s` and
    `stale` (not refreshed for HEARTBEAT_STALE_S, e.g. a process that hangs).
    """
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
        beat = {k: _maybe_json(v) for k, v in raw.items()}
        _, hb_role, instance = name[len(keys.namespace) + 1 :].split(":", 2)
        age = now - float(beat.get("ts", 0))
        beat.update(role=hb_role, id=instance, age_s=round(age, 1), stale=age > HEARTBEAT_STALE_S)
        beats.append(beat)
    return beats


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value
