"""What pipeline tests do around the services: put rows in, wait, read outcomes, audit at the end.

with ImageServer() as server:
    rows = paced_rows(server, 600, delay_s=0.2)                 # (url, caption), failures mixed in
    enqueue_rows(r, keys, shard_dir, rows, part_size=40)        # as `streamcap enqueue` does
    wait_until(lambda: r.scard(keys.parts_done) >= 2, 60, "two parts committed")
outcomes(shard_dir)                                             # row -> ('sample', '') or (reason, detail)
report = final_audit(r, keys, shard_dir)                        # lost=0, duplicates=0, no discrepancy
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from streamcap import bus
from streamcap.downloader.config import DownloaderSettings, EnqueueSettings
from streamcap.downloader.enqueue import describe_source, enqueue
from streamcap.formats.records import PartStats
from streamcap.formats.shards import iter_samples
from streamcap.shardwriter import registry
from streamcap.shardwriter.audit import AuditReport, audit
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.text.vocab import count_words, train_vocab
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.timing import Deadline

CAPTION = "A dog runs on the beach. It carries a stick."
Row = tuple[str, str]


# --- waiting ----------------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    poll_s: float = 0.05,
) -> Any:
    """The condition's first truthy value; AssertionError naming `what` after `timeout` s of a quiet
    machine (a `timing.Deadline`: longer on a busy one), or as soon as `proc` (a process the
    condition depends on) has exited. Failures quote `log`'s tail."""
    deadline = Deadline(timeout)
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{' '.join(map(str, proc.args[2:4]))} exited ({proc.returncode}) while waiting for {what}{_tail(log)}"
            )
        if deadline.passed():
            raise AssertionError(f"timed out after {deadline.describe()} waiting for {what}{_tail(log)}")
        time.sleep(poll_s)


def _tail(log: Path | None, chars: int = 4000) -> str:
    return "\n" + log.read_text(errors="replace")[-chars:] if log is not None and log.exists() else ""


# --- an in-process downloader ----------------------------------------------------------------------


def worker_settings(redis_url: str, keys: bus.Keys, shard_dir: Path, **overrides: Any) -> DownloaderSettings:
    """Settings of an in-process batch worker (`Worker(cfg, r).serve()`): one image process, 16
    connections, no retries unless `overrides` say; each test module sets its own timeouts."""
    values: dict[str, Any] = dict(
        redis_url=redis_url,
        namespace=keys.namespace,
        shard_dir=shard_dir,
        exit_when_empty=True,
        lease_seconds=5,
        retries=0,
        concurrency=16,
        per_host=16,
        image_workers=1,
    )
    return DownloaderSettings(**{**values, **overrides})


# --- rows in ----------------------------------------------------------------------------------------


def enqueue_rows(
    r,
    keys: bus.Keys,
    shard_dir: Path,
    rows: Sequence[Row | str],
    part_size: int,
    name: str = "src",
    columns: dict[str, list] | None = None,
) -> Path:
    """Rows as a url + llava_caption parquet next to the shard dir, enqueued as `streamcap enqueue`
    does. A row is (url, caption), or a bare URL captioned CAPTION; `columns` adds columns."""
    path = write_parquet(shard_dir.parent / f"{name}.parquet", rows, columns)
    record, _ = describe_source(EnqueueSettings(part_size=part_size, name=name), str(path))
    assert enqueue(r, keys, shard_dir, record).added
    return path


def unpin_source(r, keys: bus.Keys, name: str) -> None:
    """Drop a source's pin, as if enqueued before sources were pinned: its file is then read as
    it is, so a test can damage it after enqueue. (A pinned source whose file changed is an
    environment failure that waits for the file to be restored: test_user_mistakes.)"""
    definition = json.loads(r.hget(keys.sources, name))
    r.hset(keys.sources, name, json.dumps({k: v for k, v in definition.items() if k != "files"}))


def write_parquet(path: Path, rows: Sequence[Row | str], columns: dict[str, list] | None = None) -> Path:
    pairs = [(row, CAPTION) if isinstance(row, str) else row for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {"url": [u for u, _ in pairs], "llava_caption": [c for _, c in pairs], **(columns or {})}
    pq.write_table(pa.table(table), path)
    return path


def stock(server: ImageServer) -> ImageServer:
    """The images paced_rows asks for: a small photo, an HTML page, a truncated JPEG."""
    good = jpeg_bytes(96, 96)
    server.images.update({"good.jpg": good, "html": b"<html>not an image</html>", "cut.jpg": good[: len(good) // 2]})
    return server


def paced_rows(server: ImageServer, n: int, delay_s: float = 0.0, failures: bool = True) -> list[Row]:
    """n rows of (url, caption) on a `stock`ed server. Good rows take `delay_s` on the server (so
    a run lasts long enough to be interrupted whatever the CPU); with `failures`, a fixed mix
    of rows fails: every 10th a 404, every 17th HTML, every 23rd a truncated JPEG, every 31st no URL."""
    rows = []
    for i in range(n):
        if failures and i % 10 == 9:
            url = server.url(f"/status/404?i={i}")
        elif failures and i % 17 == 16:
            url = server.url(f"/img/html?i={i}")
        elif failures and i % 23 == 22:
            url = server.url(f"/img/cut.jpg?i={i}")
        elif failures and i % 31 == 30:
            url = ""
        else:
            url = server.url(f"/img/good.jpg?delay={delay_s}&i={i}")
        rows.append((url, CAPTION))
    return rows


def vocab_file(path: Path, captions: list[str]) -> Path:
    """A WordPiece vocab of the captions (the trainer needs one)."""
    WordPieceTokenizer.from_vocab(train_vocab(count_words(captions * 20), 200, min_frequency=1)).save(path)
    return path


# --- outcomes and the accounting check --------------------------------------------------------------------


def part_stats(shard_dir: Path) -> dict[int, PartStats]:
    """Stats file of every committed part, by part index."""
    problems: list[str] = []
    stats = registry.load_part_stats(shard_dir, problems)
    assert not problems, problems
    return {s.part: s for s in stats.values()}


def outcomes(shard_dir: Path) -> dict[int, tuple[str, str]]:
    """row -> ('sample', '') or (failure reason, detail), from the stats files and the shards."""
    out: dict[int, tuple[str, str]] = {}
    for stats in part_stats(shard_dir).values():
        for f in stats.failures:
            out[f.row] = (f.reason, f.detail)
        for shard in stats.shards:
            for sample in iter_samples(shard_dir / shard.name):
                out[sample.meta["row"]] = ("sample", "")
    return out


def samples_by_row(shard_dir: Path) -> dict[int, Any]:
    return {s.meta["row"]: s for path in sorted(shard_dir.glob("*.tar")) for s in iter_samples(path)}


def failure_counters(r, keys: bus.Keys) -> dict[str, int]:
    """The `stats` hash's failure counters, by reason."""
    stats = r.hgetall(keys.stats)
    return {k[len(bus.STAT_FAIL_PREFIX) :]: int(v) for k, v in stats.items() if k.startswith(bus.STAT_FAIL_PREFIX)}


def pending_parts(r, keys: bus.Keys) -> int:
    """Parts claimed by some downloader and not acknowledged yet."""
    group = bus.group_info(r, keys.parts, bus.GROUP_DOWNLOADERS)
    return int(group["pending"]) if group else 0


def final_audit(r, keys: bus.Keys, shard_dir: Path, *, expect_done: bool = True) -> AuditReport:
    """The audit every pipeline test ends with, once its workers are gone: exact, or the discrepancies."""
    report = audit(r, keys, shard_dir, expect_done=expect_done)
    print(report.summary())
    assert report.lost == 0 and report.duplicates == 0, report.summary()
    assert report.ok and not report.discrepancies, report.discrepancies
    return report


def histogram_line(report: AuditReport) -> str:
    bars = ", ".join(f"{times}x: {n}" for times, n in sorted(report.deliveries.items()))
    return f"redelivery histogram (deliveries: parts): {bars}; redelivered parts={report.redelivered_parts}"
