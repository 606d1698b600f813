"""Heartbeat records for tests: every field at its empty value unless given.

beat = record(DownloaderHeartbeat, state="paused_for_disk", urls_per_s=10.0)
bus.write_heartbeat(r, keys, "d1", beat)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from streamcap.formats.heartbeats import HeartbeatRecord

R = TypeVar("R", bound=HeartbeatRecord)
_EMPTY = {str: "", int: 0, float: 0.0, list: [], dict: {}}


def record(record_type: type[R], **fields: Any) -> R:
    """A `record_type` with `fields`, the others empty ('', 0, 0.0, [], {}, or None where allowed)."""
    types = typing.get_type_hints(record_type)
    values = {}
    for f in dataclasses.fields(record_type):  # type: ignore[arg-type]
        kind = typing.get_origin(types[f.name]) or types[f.name]
        values[f.name] = _EMPTY[kind] if kind in _EMPTY else None  # X | None: None
    return record_type(**(values | fields))
