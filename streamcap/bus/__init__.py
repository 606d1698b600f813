"""The Redis bus: the key schema, the connection, streams and heartbeats, in one namespace.

All services meet here. Nothing else in the code base spells a Redis key: ask `Keys` for it.

    from streamcap import bus
    r = bus.connect("redis://localhost:6379/0")
    keys = bus.Keys("streamcap")
    bus.ensure_group(r, keys.parts, bus.GROUP_DOWNLOADERS)
    r.xadd(keys.parts, bus.encode({"source": "relaion", "part": 0, "start": 0, "end": 1000}))

`schema` (keys, groups, TTLs, roles, states, counters, messages), `connection` (the client),
`outages` (REDIS_DOWN, waiting an outage out, recording it), `streams` (consumer groups,
reclaiming), `heartbeats` (the records themselves are in streamcap.formats.heartbeats).
"""

from streamcap.bus.connection import connect  # noqa: F401
from streamcap.bus.heartbeats import (  # noqa: F401
    UNREADABLE,
    Heartbeat,
    read_heartbeats,
    role_of,
    write_heartbeat,
)
from streamcap.bus.outages import (  # noqa: F401
    OUTAGE_MIN_S,
    REDIS_DOWN,
    RedisUnavailable,
    call_through_outages,
    describe_url,
    ping,
    record_outage,
    wait_for_redis,
    wait_out_outage,
)
from streamcap.bus.schema import (  # noqa: F401
    BLOCK_MS,
    CONTROL_DISK_PAUSED,
    CONTROL_DISK_PAUSED_SINCE,
    CONTROL_LAST_OUTAGE,
    GROUP_DOWNLOADERS,
    GROUP_EVALUATORS,
    HEARTBEAT_STALE_S,
    HEARTBEAT_TTL_S,
    MESSAGE_VERSION,
    PART_STATES,
    ROLE_DOWNLOADER,
    ROLE_EVALUATOR,
    ROLE_GC,
    ROLE_TRAINER,
    SOCKET_TIMEOUT_S,
    STAT_BYTES_DOWNLOADED,
    STAT_COMMITS_WASTED,
    STAT_FAIL_PREFIX,
    STAT_FAILURES,
    STAT_PARTS_COMMITTED,
    STAT_PARTS_DEAD,
    STAT_PARTS_REQUEUED,
    STAT_REDIS_RECONNECTS,
    STAT_RETRIED_ROWS,
    STAT_RETRIED_SAMPLES,
    STAT_ROWS,
    STAT_SAMPLES,
    STAT_SHARD_BYTES,
    STAT_SHARDS,
    Keys,
    MessageError,
    decode,
    encode,
)
from streamcap.bus.streams import (  # noqa: F401
    claim_stale,
    delivery_count,
    ensure_group,
    group_info,
    xrange_pages,
)
