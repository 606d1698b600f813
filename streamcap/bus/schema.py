"""The Redis schema: every key name, group name, TTL, role, state and counter, and the message format.

Nothing else in the code base spells a Redis key or a status value: ask `Keys` and these
constants. Messages are JSON with a version field (`v`), stored in a stream entry's single
`json` field, so `redis-cli XRANGE` stays readable and no reader ever unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MESSAGE_VERSION = 1

# Consumer groups.
GROUP_DOWNLOADERS = "downloaders"
GROUP_EVALUATORS = "evaluators"

# Heartbeats expire when their writer stops refreshing them; a reader treats an entry older
# than HEARTBEAT_STALE_S as stale even while it still exists.
HEARTBEAT_TTL_S = 60
HEARTBEAT_STALE_S = 20

# Blocking stream reads must return well before the socket timeout, or redis-py would treat a
# quiet stream as a dead connection and retry the read.
SOCKET_TIMEOUT_S = 10.0
BLOCK_MS = 2_000

# Heartbeat roles.
ROLE_DOWNLOADER = "downloader"
ROLE_TRAINER = "trainer"
ROLE_EVALUATOR = "evaluator"
ROLE_GC = "gc"  # `streamcap shards gc --watch`: frees read shards while the disk is over budget

# Part states as `streamcap status` and the audit name them.
PART_STATES = ("pending", "in_flight", "done", "dead")

# Counters of the `stats` hash. Failures are counted per reason as STAT_FAIL_PREFIX + reason
# (reasons: streamcap.formats.records.FAILURE_REASONS). All are added by the part commit, so they
# count committed work only and never twice.
STAT_ROWS = "rows"  # samples + failures of committed parts
STAT_SAMPLES = "samples"
STAT_FAILURES = "failures"
STAT_FAIL_PREFIX = "fail:"
STAT_BYTES_DOWNLOADED = "bytes_downloaded"
STAT_SHARDS = "shards"
STAT_SHARD_BYTES = "shard_bytes"
STAT_PARTS_COMMITTED = "parts_committed"
STAT_COMMITS_WASTED = "commits_wasted"  # commits of parts another worker had already committed
STAT_PARTS_DEAD = "parts_dead"
STAT_RETRIED_ROWS = "retried_rows"  # rows fetched again by committed retries (`streamcap parts retry`)
STAT_RETRIED_SAMPLES = "retried_samples"  # of those, rows whose latest outcome is a sample
STAT_PARTS_REQUEUED = "parts_requeued"  # dead parts moved back to `parts` by `streamcap parts retry --dead`
STAT_REDIS_RECONNECTS = "redis_reconnects"  # outages waited out, summed over processes

# Fields of the `control` hash. Downloaders set CONTROL_DISK_PAUSED (a one-line reason) while
# the shard disk is over its budget and delete it when they resume; `streamcap status` shows it.
CONTROL_DISK_PAUSED = "disk_paused"
CONTROL_DISK_PAUSED_SINCE = "disk_paused_since"
# JSON {ended, seconds, who} of the last Redis outage a service waited out.
CONTROL_LAST_OUTAGE = "last_redis_outage"


class MessageError(ValueError):
    """A stream entry is not a message this version understands."""


@dataclass(frozen=True)
class Keys:
    """Every Redis key of the schema (docs/architecture.md), under one namespace prefix."""

    namespace: str = "streamcap"

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # --- the schema of docs/architecture.md ---
    @property
    def sources(self) -> str:
        """hash: source id -> JSON definition (uri, format, columns, rows, part size)."""
        return self.key("sources")

    @property
    def parts(self) -> str:
        """stream, group `downloaders`: one entry per part (source, index, row range)."""
        return self.key("parts")

    @property
    def parts_dead(self) -> str:
        """stream: parts that exceeded the delivery limit, with their last error."""
        return self.key("parts", "dead")

    @property
    def parts_done(self) -> str:
        """set: committed part ids; makes a redelivered part's commit a no-op."""
        return self.key("parts", "done")

    @property
    def shards(self) -> str:
        """stream, one group per training run: one entry per finalized shard."""
        return self.key("shards")

    @property
    def stats(self) -> str:
        """hash: pipeline counters (urls ok, failures by reason, bytes, shards, samples)."""
        return self.key("stats")

    @property
    def checkpoints(self) -> str:
        """stream, group `evaluators`: published checkpoints."""
        return self.key("checkpoints")

    @property
    def evals(self) -> str:
        """stream: evaluation results per checkpoint."""
        return self.key("evals")

    def heartbeat(self, role: str, instance: str) -> str:
        """hash with TTL: liveness and live rates of one process."""
        return self.key("hb", role, instance)

    def heartbeat_pattern(self, role: str = "*") -> str:
        return self.key("hb", role, "*")

    # --- keys the services add to the schema ---
    @property
    def parts_commits(self) -> str:
        """hash: part id -> token of the attempt whose commit was applied (a retried commit stays a no-op)."""
        return self.key("parts", "commits")

    @property
    def parts_deliveries(self) -> str:
        """hash: part id -> times its committed attempt's entry was delivered (1 = never redelivered)."""
        return self.key("parts", "deliveries")

    @property
    def parts_errors(self) -> str:
        """hash: part id -> JSON {error, consumer, ts} of its last failed attempt (for parts:dead)."""
        return self.key("parts", "errors")

    @property
    def parts_strikes(self) -> str:
        """hash: part entry id -> attempts that failed through the part's own fault (toward --max-deliveries)."""
        return self.key("parts", "strikes")

    @property
    def shards_deleted(self) -> str:
        """set: shard names removed by `streamcap shards gc`, so trainers stop replaying them."""
        return self.key("shards", "deleted")

    @property
    def shards_lost(self) -> str:
        """set: shard names gone not by gc (quarantined, or found missing by reconcile); also in
        `shards:deleted`. Their rows are `missing` until a retry fetches them again."""
        return self.key("shards", "lost")

    @property
    def parts_retries(self) -> str:
        """hash: part id -> id of its retry part on `parts` not committed yet (one at a time per part)."""
        return self.key("parts", "retries")

    def shard_reads(self, run: str) -> str:
        """hash: shard name -> times read (fresh or replayed) by training run `run`."""
        return self.key("shards", "reads", run)

    def shard_seen(self, run: str) -> str:
        """hash: shard name -> loader-worker consumer of run `run` that first read it through. Written
        at once, not at checkpoints: the shards other workers and ranks may replay before a
        checkpoint has counted any read in `shard_reads`."""
        return self.key("shards", "seen", run)

    def shard_reads_commits(self, run: str) -> str:
        """hash: rank -> step of the last checkpoint whose reads that rank of run `run` counted in
        `shard_reads` (a resumed rank re-applies a checkpoint's saved reads only if behind)."""
        return self.key("shards", "reads-commits", run)

    @property
    def runs(self) -> str:
        """hash: training run id -> JSON (started, last seen); gc keeps shards they still need."""
        return self.key("runs")

    @staticmethod
    def train_group(run: str) -> str:
        """Consumer group on `shards` for one training run."""
        return f"train:{run}"

    @property
    def control(self) -> str:
        """hash: operator-visible switches and states (e.g. downloads paused for disk)."""
        return self.key("control")

    @property
    def evals_best(self) -> str:
        """hash: the best evaluated checkpoint so far and its scores."""
        return self.key("evals", "best")

    # --- hosts, shared by every downloader (downloader.hosts; `streamcap hosts`) ---
    @property
    def hosts_backoff(self) -> str:
        """sorted set: host -> until when (Redis TIME, epoch s) no worker may send it a request."""
        return self.key("hosts", "backoff")

    @property
    def hosts_throttles(self) -> str:
        """hash: host -> JSON {strikes, why, at, until}: its 429/503 answers in a row, the last one's text."""
        return self.key("hosts", "throttles")

    @property
    def hosts_learned_rates(self) -> str:
        """hash: host -> JSON {rate, at}: the requests/s a host that throttled is paced at, learned
        from its 429/503s (halved on each, grown while answers succeed), and when it last throttled."""
        return self.key("hosts", "learned-rates")

    @property
    def hosts_failures(self) -> str:
        """sorted set: host -> rows that failed on it (formats.records.HOST_REASONS), the worst kept."""
        return self.key("hosts", "failures")

    @property
    def hosts_failure_reasons(self) -> str:
        """hash: '<host> <reason>' -> rows; '<host>' -> the last failure's detail."""
        return self.key("hosts", "failure-reasons")

    def host_rate(self, host: str) -> str:
        """string with TTL: the GCRA's next allowed time (µs, Redis TIME) of --per-host-rate for `host`."""
        return self.key("hosts", "rate", host)

    def schema(self) -> dict[str, tuple[str, str]]:
        """name -> (key, Redis type) for every fixed key; what `streamcap status` sizes."""
        return {
            "sources": (self.sources, "hash"),
            "parts": (self.parts, "stream"),
            "parts:dead": (self.parts_dead, "stream"),
            "parts:done": (self.parts_done, "set"),
            "parts:commits": (self.parts_commits, "hash"),
            "parts:deliveries": (self.parts_deliveries, "hash"),
            "parts:errors": (self.parts_errors, "hash"),
            "parts:strikes": (self.parts_strikes, "hash"),
            "shards": (self.shards, "stream"),
            "shards:deleted": (self.shards_deleted, "set"),
            "shards:lost": (self.shards_lost, "set"),
            "parts:retries": (self.parts_retries, "hash"),
            "stats": (self.stats, "hash"),
            "runs": (self.runs, "hash"),
            "control": (self.control, "hash"),
            "checkpoints": (self.checkpoints, "stream"),
            "evals": (self.evals, "stream"),
            "evals:best": (self.evals_best, "hash"),
        }


# --- messages --------------------------------------------------------------------------------


def encode(payload: dict[str, Any]) -> dict[str, str]:
    """A stream entry's fields for `payload` (JSON, versioned)."""
    return {"json": json.dumps({"v": MESSAGE_VERSION, **payload}, separators=(",", ":"))}


def decode(fields: dict[str, str] | None) -> dict[str, Any]:
    """The payload of a stream entry written by `encode`; MessageError if it is not one."""
    if not fields or "json" not in fields:
        raise MessageError(f"not a streamcap message: {fields!r}")
    try:
        payload = json.loads(fields["json"])
    except json.JSONDecodeError as e:
        raise MessageError(f"message is not valid JSON: {e}") from None
    if payload.get("v") != MESSAGE_VERSION:
        raise MessageError(f"message version {payload.get('v')!r}, this streamcap reads {MESSAGE_VERSION}")
    return payload
