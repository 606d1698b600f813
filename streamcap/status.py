"""`streamcap status`: gather the state of the pipeline from Redis, render it for people.

`collect()` returns plain data (what `--json` prints); `render()` turns it into rich tables.
"""

from __future__ import annotations

from typing import Any

import redis
from rich.console import Group
from rich.table import Table

from streamcap import bus

_SIZE_COMMANDS = {"stream": "xlen", "hash": "hlen", "set": "scard", "string": "strlen", "list": "llen", "zset": "zcard"}


def redis_info(r: redis.Redis) -> dict[str, Any]:
    """Version, memory and persistence mode of the server."""
    info = r.info()
    aof = bool(int(info.get("aof_enabled", 0)))
    rdb = bool(r.config_get("save").get("save")) if _can_config(r) else None
    return {
        "version": info.get("redis_version"),
        "uptime_s": info.get("uptime_in_seconds"),
        "used_memory": info.get("used_memory"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory": info.get("maxmemory"),
        "persistence": "aof" if aof else ("rdb" if rdb else "none" if rdb is not None else "unknown"),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "loading": bool(int(info.get("loading", 0))),
        "connected_clients": info.get("connected_clients"),
    }


def _can_config(r: redis.Redis) -> bool:
    try:
        r.config_get("save")
        return True
    except redis.ResponseError:  # CONFIG disabled (managed Redis)
        return False


def key_sizes(r: redis.Redis, keys: bus.Keys) -> dict[str, dict[str, Any]]:
    """Size of every fixed key of the schema (entries, fields or members); 0 when absent."""
    pipe = r.pipeline(transaction=False)
    schema = keys.schema()
    for key, _type in schema.values():
        pipe.type(key)
    actual_types = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for (key, expected), actual in zip(schema.values(), actual_types):
        command = _SIZE_COMMANDS.get(actual if actual != "none" else expected)
        getattr(pipe, command)(key)
    sizes = pipe.execute()
    return {
        name: {"key": key, "type": expected, "size": int(size or 0),
               "wrong_type": actual not in ("none", expected)}
        for (name, (key, expected)), actual, size in zip(schema.items(), actual_types, sizes)
    }


def collect(r: redis.Redis, keys: bus.Keys) -> dict[str, Any]:
    """Everything `streamcap status` shows, as plain data."""
    bus.ping(r)
    return {
        "namespace": keys.namespace,
        "redis": redis_info(r),
        "keys": key_sizes(r, keys),
        "control": r.hgetall(keys.control),  # e.g. downloads paused for disk, and why
        "workers": [
            {k: beat.get(k) for k in ("role", "id", "age_s", "stale")} for beat in bus.read_heartbeats(r, keys)
        ],
    }


def render(report: dict[str, Any]) -> Group:
    """Rich tables for a terminal."""
    server = report["redis"]
    head = Table(title=f"Redis · namespace '{report['namespace']}'", show_header=False, title_justify="left")
    head.add_row("version", str(server["version"]))
    head.add_row("memory", str(server["used_memory_human"]))
    head.add_row("persistence", str(server["persistence"]))
    head.add_row("clients", str(server["connected_clients"]))
    sizes = Table(title="Keys", title_justify="left")
    for col in ("name", "type", "size"):
        sizes.add_column(col, justify="right" if col == "size" else "left")
    for name, entry in report["keys"].items():
        flag = " (WRONG TYPE)" if entry["wrong_type"] else ""
        sizes.add_row(name, entry["type"] + flag, str(entry["size"]))
    parts: list[Any] = [head, sizes]
    if report.get("control"):
        control = Table(title="Control", show_header=False, title_justify="left")
        for name, value in sorted(report["control"].items()):
            control.add_row(name, str(value))
        parts.append(control)
    if report["workers"]:
        workers = Table(title="Workers (heartbeats)", title_justify="left")
        for col in ("role", "id", "age s", "state"):
            workers.add_column(col)
        for w in report["workers"]:
            workers.add_row(w["role"], w["id"], str(w["age_s"]), "STALE" if w["stale"] else "live")
        parts.append(workers)
    return Group(*parts)
