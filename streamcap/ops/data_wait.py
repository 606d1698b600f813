"""Why a trainer has no shard to read: the one line a waiting trainer logs and puts in its heartbeat.

    line = why_no_data(r, keys, shard_dir)   # "" while shards are simply on their way

The trainer asks with its own --shard-dir (`streamcap status` may run elsewhere, with another
one) and its heartbeat carries the answer (`TrainerHeartbeat.waiting_reason`), which status
shows as a hint. From the most specific mistake to the least:

- registered shards, none of the newest of which is in this directory: a wrong --shard-dir;
- no shard registered, but .tar files in the directory: tars of another pipeline or namespace;
- nothing enqueued in the namespace at all: `streamcap enqueue`;
- parts enqueued but no downloader running: `streamcap download`;
- every part finished and no shard written: every row failed.

Anything else (downloaders at work on the first shard) is no mistake, and the answer is "".
"""

from __future__ import annotations

import json
from pathlib import Path

import redis

from streamcap import bus
from streamcap.common.store import ShardStore, open_store
from streamcap.formats.heartbeats import DownloaderHeartbeat
from streamcap.formats.records import ShardRecord, SourceRecord

NEWEST_CHECKED = 20  # registered shards looked for in the directory (a bucket answers each with a request)


def no_downloader_hint(parts: int) -> str:
    """The line for parts waiting without a downloader (`streamcap status` shows the same)."""
    return f"{parts} parts wait but no downloader is running: start `streamcap download`"


def why_no_data(r: redis.Redis, keys: bus.Keys, shard_dir: ShardStore | Path | str) -> str:
    """What keeps shards from a trainer reading `shard_dir` in namespace `keys`; "" when nothing does."""
    store = open_store(shard_dir)
    registered = int(r.xlen(keys.shards))
    if registered:
        return _missing(r, keys, store, registered)
    tars = store.list(suffix=".tar")
    if tars:
        return (
            f"{len(tars)} .tar files in {_where(store)} are not registered shards of namespace {keys.namespace!r} "
            "(another pipeline's, or another --namespace's?): pass the --namespace that wrote them, "
            "or `streamcap enqueue` a source and `streamcap download` it into this one"
        )
    sources = [SourceRecord.from_message(json.loads(raw)) for raw in r.hvals(keys.sources)]
    if not sources:
        return f"nothing is enqueued in namespace {keys.namespace!r}: run `streamcap enqueue SOURCE`, then `streamcap download`"
    enqueued = sum(s.parts for s in sources)
    open_parts = max(0, enqueued - int(r.scard(keys.parts_done)) - int(r.xlen(keys.parts_dead)))
    if not open_parts:
        return (
            f"all {enqueued} parts are finished and no shard was written: every row failed "
            "(`streamcap status` lists the reasons, `streamcap audit` the parts)"
        )
    if not any(
        isinstance(b.record, DownloaderHeartbeat) and not b.stale
        for b in bus.read_heartbeats(r, keys, bus.ROLE_DOWNLOADER)
    ):
        return no_downloader_hint(open_parts)
    return ""


def _missing(r: redis.Redis, keys: bus.Keys, store: ShardStore, registered: int) -> str:
    """The line when none of the newest registered shards gc has not deleted is in `store`."""
    names = []
    for _entry_id, fields in r.xrevrange(keys.shards, count=NEWEST_CHECKED):
        try:
            names.append(ShardRecord.from_message(bus.decode(fields)).name)
        except (bus.MessageError, TypeError, KeyError, ValueError):
            continue
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.sismember(keys.shards_deleted, name)
    deleted = pipe.execute()
    names = [name for name, gone in zip(names, deleted) if not gone]
    if not names or any(store.head(name) is not None for name in names):
        return ""
    which = f"all {registered}" if registered <= len(names) else f"the {len(names)} newest of {registered}"
    return (
        f"{which} registered shards of namespace {keys.namespace!r} are missing from {_where(store)}: wrong --shard-dir? "
        "pass the directory `streamcap download` writes them to"
    )


def _where(store: ShardStore) -> str:
    return str(store) if store.remote else str(Path(str(store)).resolve())
