"""Hosts as `streamcap hosts` and `streamcap status` show them: in backoff, and failing most.

    report = host_report(r, keys, top=20)
    report["backoff"]     # [{host, seconds_left, strikes, why}], the longest pause first
    report["failing"]     # [{host, failures, reasons: {reason: n}, last}], the worst first

The downloaders write this state (streamcap.downloader.hosts); reading it needs only Redis.
"""

from __future__ import annotations

import json

import redis

from streamcap import bus
from streamcap.formats.records import HOST_REASONS


def host_report(r: redis.Redis, keys: bus.Keys, top: int = 20) -> dict:
    """{'backoff': [{host, seconds_left, strikes, why}], 'failing': [{host, failures, reasons, last}],
    'hosts_failing': how many hosts have failures counted}."""
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    backoff = []
    for host, until in r.zrangebyscore(keys.hosts_backoff, f"({now}", "+inf", withscores=True):
        state = json.loads(r.hget(keys.hosts_throttles, host) or "{}")
        backoff.append(
            {
                "host": host,
                "seconds_left": round(until - now, 1),
                "strikes": state.get("strikes", 0),
                "why": state.get("why", ""),
            }
        )
    backoff.sort(key=lambda h: -h["seconds_left"])
    failing = []
    for host, count in r.zrevrange(keys.hosts_failures, 0, top - 1, withscores=True):
        fields = [f"{host} {reason}" for reason in HOST_REASONS] + [host]
        *counts, last = r.hmget(keys.hosts_failure_reasons, fields)
        reasons = {reason: int(n) for reason, n in zip(HOST_REASONS, counts) if n}
        failing.append({"host": host, "failures": int(count), "reasons": reasons, "last": last or ""})
    return {"backoff": backoff, "failing": failing, "hosts_failing": r.zcard(keys.hosts_failures)}
