"""The one line `streamcap status` leads with: the problem that most needs a person, and its fix.

    report["attention"] = attention(report)     # None: all healthy
    # attention: 100 % blocked_address: the URLs are private addresses; use --allow-private if that is intended

Problems are ranked by what they cost while nobody acts; the first that holds is the line (RANKED):

  1. a training run stopped itself: its GPUs idle until a person reads why;
  2. downloads paused for disk, or a downloader found the disk full: nothing downloads and the
     trainer soon starves;
  3. downloaders paused by their environment (shard dir not writable, source unreadable or
     changed, bucket down): they retry forever without a person;
  4. a trainer waits for data for a reason it found (registered shards missing from its
     --shard-dir, foreign .tar files, nothing enqueued, no downloader): paid GPUs idle;
  5. parts wait and no downloader runs;
  6. one failure reason takes most rows: downloads run and make (almost) no samples, e.g. every
     URL a private address without --allow-private;
  7. nothing is enqueued in this namespace;
  8. any other hint of `status.hints`, in that list's order (the trainer's waiting hints among
     them): a hint added there reaches this line with no change here.

Problems 1-7 are hints too (status.hints calls the same functions), so the hint list and this
line never say one thing two ways.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamcap.formats.heartbeats import DOWNLOADER_PAUSED
from streamcap.ops.data_wait import no_downloader_hint

DOMINANT_SHARE = 0.5  # a healthy web crawl spreads its failures; one reason over half the rows is no accident
DOMINANT_MIN_ROWS = 20  # fewer rows are no verdict

# What to do when one failure reason dominates (reasons: streamcap.formats.records.FAILURE_REASONS).
FAILURE_ADVICE = {
    "blocked_address": "the URLs are private addresses; use --allow-private if that is intended",
    "invalid_url": "the URL column holds no http(s) URLs: check --url-col of `streamcap enqueue`",
    "dns_error": "the URLs' host names do not resolve: check the downloaders' DNS, or the URLs",
    "connect_error": "the hosts cannot be reached: check the downloaders' network (proxy, firewall), or the URLs",
    "timeout": "the hosts answer too slowly: check the downloaders' network, or raise --total-timeout",
    "http_status": "the servers answer with errors (404s?): the URLs may be stale",
    "throttled": "the servers throttle the downloads: lower --per-host or set --per-host-rate",
    "too_large": "the images are over --max-bytes: raise it if that is intended",
    "opted_out": "the images opt out of AI use (X-Robots-Tag): they are skipped by design (--opt-out-directives)",
    "not_an_image": "the URLs serve no images (web pages?): check --url-col of `streamcap enqueue`",
    "decode_error": "the images are broken or truncated: check the source",
    "decompression_bomb": "the images are over --max-pixels: raise it if that is intended",
    "too_small": "the images are below --min-size: lower it if that is intended",
    "bad_aspect_ratio": "the images are beyond --max-aspect-ratio: raise it if that is intended",
    "empty_caption": "the captions are empty: check --caption-col of `streamcap enqueue`",
}

# What to do about each environment pause (reasons from streamcap.downloader.failures).
ENVIRONMENT_ADVICE = {
    "shard dir not writable": "make the shard dir writable for the downloaders (a read-only mount? "
    "its owner?); they release their parts uncounted and retry on their own",
    "source unreadable": "mount or copy the source file on that host; other downloaders take its "
    "parts meanwhile, and it retries on its own",
    "source changed": "restore the file as it was enqueued, or enqueue the new one with --name",
    "shard store unavailable": "check the bucket, its endpoint and credentials; the downloaders retry on their own",
}


def trainer_failed(report: dict[str, Any]) -> list[str]:
    return [f"the trainer stopped itself: {line}" for line in report["trainer"]["failed"]]


def trainer_waiting(report: dict[str, Any]) -> list[str]:
    return [f"the trainer waits for data: {line}" for line in report["trainer"]["waiting"]]


def disk(report: dict[str, Any]) -> list[str]:
    shards = report["shards"]
    out = []
    if shards["paused_for_disk"] and shards["gc"] is None:
        out.append(
            f"downloads paused for disk ({shards['paused_for_disk']}) and no gc watch runs: "
            "`streamcap shards gc --watch` frees shards every running training run has read; "
            "or raise --max-disk-bytes"
        )
    elif shards["paused_for_disk"]:
        out.append(f"downloads paused for disk ({shards['paused_for_disk']}); gc: {shards['gc']['last_result']}")
    full = [w for w in report["workers"] if w["reason"].startswith("disk_full")]
    if full:
        out.append(
            f"{len(full)} downloader(s) found the shard disk full ({full[0]['reason'][:120]}): "
            "free space there; they retry on their own"
        )
    return out


def paused(report: dict[str, Any]) -> list[str]:
    workers = [w for w in report["workers"] if w["state"] == DOWNLOADER_PAUSED and not w["stale"]]
    if not workers:
        return []
    reason = workers[0]["reason"]
    return [f"{len(workers)} downloader(s) paused: {reason[:160]}: {environment_advice(reason)}"]


def environment_advice(reason: str) -> str:
    return next(
        (advice for kind, advice in ENVIRONMENT_ADVICE.items() if reason.startswith(kind)), "they retry on their own"
    )


def no_downloader(report: dict[str, Any]) -> list[str]:
    parts = report["parts"]
    waiting = parts["pending"] + parts["in_flight"]
    if not waiting or report["urls"]["downloaders_live"]:
        return []
    line = no_downloader_hint(waiting)
    return [] if line in report["trainer"]["waiting"] else [line]  # a waiting trainer says it already


def dominant_failure(report: dict[str, Any]) -> list[str]:
    """One reason over DOMINANT_SHARE of the rows: of the live downloaders' rows since they
    started, else of all committed rows (the live ones say whether a restart fixed it)."""
    urls = report["urls"]
    rows, failures = urls.get("rows_live", 0), urls.get("failures_live", {})
    if rows < DOMINANT_MIN_ROWS:
        rows, failures = urls["rows"], urls["failures_by_reason"]
    if rows < DOMINANT_MIN_ROWS or not failures:
        return []
    reason, count = max(failures.items(), key=lambda kv: kv[1])
    if count < DOMINANT_SHARE * rows:
        return []
    advice = FAILURE_ADVICE.get(
        reason, "each failed row's detail is in its part's stats (`streamcap shards ls --json`)"
    )
    return [f"{100 * count / rows:.0f} % {reason}: {advice}"]


def nothing_enqueued(report: dict[str, Any]) -> list[str]:
    if report["parts"]["enqueued"]:
        return []
    return [
        f"nothing is enqueued in namespace '{report['namespace']}': run `streamcap enqueue SOURCE` (or --namespace)"
    ]


RANKED: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    trainer_failed,
    disk,
    paused,
    trainer_waiting,
    no_downloader,
    dominant_failure,
    nothing_enqueued,
)


def attention(report: dict[str, Any]) -> str | None:
    """The line for the most important problem (module doc), or None when nothing needs a person."""
    for problem in RANKED:
        lines = problem(report)
        if lines:
            return lines[0]
    return report["hints"][0] if report.get("hints") else None
