"""Settings of `streamcap enqueue` and `streamcap download` (defaults < env var < CLI flag).

    cfg = DownloaderSettings(redis_url="redis://localhost:6379/0", concurrency=64, image_size=384)
    cfg = EnqueueSettings(redis_url=..., part_size=500, limit=10_000)

Shard roll-over and the disk budget are the shardwriter's settings (`ShardWriterSettings`); the
downloader writes the shards, so its settings derive from them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from streamcap import __version__
from streamcap.common.settings import (
    CommonSettings,
    ProgressSettings,
    at_least,
    between,
    directory_path,
    fail,
    one_of,
    optional,
    setting,
)
from streamcap.shardwriter.config import MAX_DISK_BYTES, SIZE_FIELDS, ShardWriterSettings, byte_size

RESIZE_MODES = ("keep_ratio", "center_crop", "border", "no")
IMAGE_FORMATS = ("jpg", "webp")
# Directives of X-Robots-Tag that opt an image out of dataset collection.
DEFAULT_OPT_OUT = "noai,noimageai,noindex,noimageindex"
# The token a site names in `X-Robots-Tag: streamcap: noai` to address this tool only.
USER_AGENT_TOKEN = "streamcap"
DEFAULT_USER_AGENT = (
    f"{USER_AGENT_TOKEN}/{__version__} (image-caption dataset downloader; opt out with X-Robots-Tag: noai or noimageai)"
)
# Pillow's own default limit (about 89.5 megapixels, e.g. 9459 x 9459).
DEFAULT_MAX_PIXELS = 89_478_485

# Upper bounds of the counts and sizes: what a real machine can honour. Past them a value is a
# slip that would fork, connect or allocate until the machine falls over (--processes 100000).
MAX_PART_SIZE = 100_000  # rows one downloader holds and must finish within its lease
# The largest machines have about this many cores; each process starts its own image workers.
MAX_PROCESSES = 256
MAX_PARTS_IN_FLIGHT = 64  # per process, each with its rows in memory (up to 4x this many in all)
MAX_DELIVERIES = 100  # each one downloads the whole part again
MAX_CONCURRENCY = 4096  # a socket each, per process: past a few thousand, add --processes instead
MAX_RETRIES = 10  # --total-timeout ends a row long before more would run
MAX_RESPONSE_BYTES = 1_000_000_000  # bodies are held in memory, --concurrency of them per process
MAX_IMAGE_SIZE = 8192  # stored side: 8192 x 8192 RGB is 200 MB decoded, per image worker
MAX_DECODED_PIXELS = 1_000_000_000  # a decoded gigapixel RGB image is 3 GB, per image worker
MAX_MIN_SIZE = 65_535  # the longest side a JPEG can have
MAX_CAPTION_SENTENCES = 100


def _directives(v: object) -> str | None:
    items = [d.strip() for d in str(v).split(",")]
    return None if all(item and " " not in item for item in items) else "comma-separated directives like noai,noimageai"


def parse_servers(text: str) -> tuple[str, ...]:
    """`IP[:PORT],...` as c-ares spells servers ('1.2.3.4:53', '[::1]:53'); ValueError naming the bad one."""
    servers = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"{item!r} is not IP[:PORT]")
            port_text = rest[1:] if rest else "53"
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        else:
            host, port_text = item, "53"  # an IPv4 address, or a bare IPv6 one
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
        if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"{item!r} has no port from 1 to 65535")
        servers.append(f"[{ip}]:{int(port_text)}" if ip.version == 6 else f"{ip}:{int(port_text)}")
    if not servers:
        raise ValueError("no server given")
    return tuple(servers)


def _dns_servers(v: object) -> str | None:
    if not str(v).strip():
        return None  # the system's (resolv.conf)
    try:
        parse_servers(str(v))
    except ValueError as e:
        return f"IP[:PORT],... ({e})"
    return None


def _user_agent(v: object) -> str | None:
    text = str(v)
    ok = text.strip() and text.isprintable() and USER_AGENT_TOKEN in text.lower()
    return None if ok else f"a printable User-Agent that names the tool ({USER_AGENT_TOKEN!r})"


@dataclass(frozen=True, kw_only=True)
class EnqueueSettings(CommonSettings, ProgressSettings):
    """How `streamcap enqueue` reads a source and splits it into parts."""

    url_col: str = setting("url")
    """Column holding the image URL."""
    caption_col: str | None = setting(None)
    """Caption column (default: the first present of llava_caption, cogvlm_caption, alt_txt, caption, text)."""
    part_size: int = setting(1000, check=between(1, MAX_PART_SIZE))
    """Rows per part, the unit a downloader claims and commits."""
    limit: int | None = setting(None, check=optional(at_least(1)))
    """Take only the first N rows of the source."""
    name: str | None = setting(None, env="STREAMCAP_SOURCE_NAME")
    """Name of the source (default: the file or directory name); part of every sample key."""

    def validate(self) -> None:
        from streamcap.formats.records import source_slug

        if self.name is not None:
            # Sample keys keep only ASCII letters and digits of a name: 'ünï' would become 'n'.
            if not (self.name.isascii() and self.name.isprintable()):
                fail(self, "name", "a name in ASCII letters, digits and punctuation", self.name)
            try:
                source_slug(self.name)
            except ValueError:
                fail(self, "name", "a name with letters or digits", self.name)
        if self.caption_col is not None and self.caption_col == self.url_col:
            fail(self, "caption_col", f"a column other than the URL column ({self.url_col!r})", self.caption_col)


@dataclass(frozen=True, kw_only=True)
class DownloaderSettings(ShardWriterSettings, ProgressSettings):
    """The download service: claiming, fetching, security, image processing."""

    size_fields: ClassVar[tuple[str, ...]] = (*SIZE_FIELDS, "spool_max_bytes")  # read as "10G" too
    # --- the service ---
    processes: int = setting(1, check=between(1, MAX_PROCESSES))
    """Worker processes, each with its own event loop."""
    exit_when_empty: bool = setting(False)
    """Exit once no part is pending or in flight (batch runs, benchmarks)."""
    lease_seconds: float = setting(60.0, check=at_least(1))
    """A part whose worker stopped renewing its claim this long ago is reclaimed by another."""
    max_deliveries: int = setting(5, check=between(1, MAX_DELIVERIES))
    """Failed attempts (the part's own fault: a row that crashes the decoder, a corrupt source) before a part moves to
    parts:dead with its last error; deliveries lost to a killed or stalled worker and failures of the environment do
    not count."""
    environment_patience: float = setting(120.0, check=at_least(0))
    """With --exit-when-empty: seconds the environment may keep failing (shard dir not writable or full, source
    unreadable) with no part committed before the run gives up with exit code 3. Without it, downloaders wait for the
    environment as long as it takes."""
    grace_seconds: float = setting(30.0, check=at_least(0))
    """On SIGTERM/SIGINT, time to finish the parts in flight before releasing them."""
    parts_in_flight: int = setting(8, check=between(1, MAX_PARTS_IN_FLIGHT))
    """Parts one process works on at once, so slow rows at a part's end leave no connection idle; parts whose open rows
    all wait on servers do not count (up to 4x this many in all)."""
    straggler_seconds: float = setting(5.0, check=at_least(0))
    """Once half a part is done and no fast row of it has finished for this long, rows on the network this long are
    deferred: the part commits, a retry part fetches them later (0: never)."""
    # --- fetching ---
    concurrency: int = setting(128, check=between(1, MAX_CONCURRENCY))
    """Requests in flight per process."""
    per_host: int = setting(8, check=between(1, MAX_CONCURRENCY))
    """Connections in flight to one host per process."""
    connect_timeout: float = setting(10.0, check=at_least(0.1))
    """Seconds to open a connection."""
    read_timeout: float = setting(15.0, check=at_least(0.1))
    """Seconds to wait for the next bytes of a response."""
    total_timeout: float = setting(30.0, check=at_least(0.1))
    """Seconds one row may take in all: every retry, redirect and backoff included."""
    retries: int = setting(2, check=between(0, MAX_RETRIES))
    """Retries after a timeout, connection error, 429 or 5xx (none for other 4xx)."""
    retry_after_cap: float = setting(20.0, check=at_least(0))
    """Longest Retry-After (s) honoured; a longer one ends the row as http_status."""
    max_bytes: int = setting(25_000_000, check=between(1024, MAX_RESPONSE_BYTES))
    """Largest response body (decoded) accepted, in bytes."""
    user_agent: str = setting(DEFAULT_USER_AGENT, check=_user_agent)
    """User-Agent header sent with every request."""
    opt_out_directives: str = setting(DEFAULT_OPT_OUT, check=_directives)
    """X-Robots-Tag directives that opt an image out (counted as opted_out)."""
    allow_private: bool = setting(False)
    """Allow loopback/private/link-local addresses (tests and the demo only)."""
    # --- image processing ---
    image_size: int = setting(256, check=between(8, MAX_IMAGE_SIZE))
    """Target size in pixels (see --resize-mode)."""
    resize_mode: str = setting("keep_ratio", check=one_of(*RESIZE_MODES))
    """keep_ratio: shorter side = size; center_crop: square crop; border: pad to a square; no: as is."""
    image_format: str = setting("jpg", check=one_of(*IMAGE_FORMATS))
    """Stored image format."""
    quality: int = setting(95, check=between(1, 100))
    """JPEG/WebP quality of the stored images."""
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, check=between(1, MAX_DECODED_PIXELS))
    """Images with more pixels are refused as decompression bombs, before decoding."""
    min_size: int = setting(64, check=between(0, MAX_MIN_SIZE))
    """Images whose shorter side is smaller are refused (too_small)."""
    max_aspect_ratio: float = setting(10.0, check=at_least(0))
    """Images whose long/short side ratio is larger are refused (0: no limit)."""
    image_workers: int = setting(0, check=between(0, MAX_PROCESSES))
    """Image-processing processes per worker process (0: one per CPU core)."""
    caption_sentences: int = setting(2, check=between(0, MAX_CAPTION_SENTENCES))
    """Keep the first N sentences of each caption (0 keeps all); the raw caption stays in the json."""
    # --- names and hosts (downloader.dns, downloader.hosts) ---
    dns_servers: str = setting("", check=_dns_servers)
    """DNS servers to ask, IP[:PORT],... (default: the system's, from /etc/resolv.conf); a caching resolver near the workers (unbound, dnsmasq) helps at scale."""
    dns_timeout: float = setting(3.0, check=at_least(0.1))
    """Seconds one name lookup may take, retransmissions included; then its rows fail as dns_error."""
    dns_cache_seconds: float = setting(300.0, check=at_least(0))
    """Longest time a DNS answer is kept (its TTL, at most this long)."""
    dns_negative_seconds: float = setting(60.0, check=at_least(0))
    """How long a name that failed (NXDOMAIN, SERVFAIL, no answer) fails its other rows at once, without a lookup (0: look up again every time)."""
    per_host_rate: float = setting(0.0, check=at_least(0))
    """Requests per second to one host, over all workers sharing the Redis (0: no limit)."""
    host_backoff_cap: float = setting(300.0, check=at_least(0))
    """Longest pause (s) of a host that answers 429/503: every worker waits it out, doubling from its Retry-After (or 1 s) with each throttled answer in a row (0: never pause a host; each row waits for its own Retry-After)."""
    # --- shards in a bucket (--shard-dir s3://bucket/prefix): the local spool (downloader.spool) ---
    spool_dir: Path = setting(Path(".streamcap/spool"), check=directory_path)
    """With --shard-dir s3://...: local folder where parts are written before they are uploaded."""
    spool_max_bytes: int = setting(10 * 10**9, check=byte_size(0, MAX_DISK_BYTES))
    """With --shard-dir s3://...: claim no new part while the spool holds more than this (e.g. 10G); 0 = no limit."""

    def validate(self) -> None:
        super().validate()
        if self.per_host > self.concurrency:
            fail(self, "per_host", f"at most --concurrency ({self.concurrency})", self.per_host)
        if 0 < self.max_aspect_ratio < 1:
            fail(self, "max_aspect_ratio", "0 (no limit) or a ratio >= 1", self.max_aspect_ratio)

    @property
    def opt_out(self) -> frozenset[str]:
        return frozenset(d.strip().lower() for d in self.opt_out_directives.split(",") if d.strip())

    def worker(self) -> DownloaderSettings:
        """The settings of one worker process of a `--processes N` run (image workers resolved)."""
        import dataclasses

        return dataclasses.replace(self, processes=1, image_workers=self.image_workers_per_process)

    @property
    def image_workers_per_process(self) -> int:
        """--image-workers, or the machine's cores shared among the --processes."""
        if self.image_workers:
            return self.image_workers
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, round(cores / self.processes))
