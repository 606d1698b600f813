"""How `streamcap status` looks in a terminal: rich tables over the data of `status.collect`."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _pairs(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", min_width=40)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    return table


def _redis(report: dict[str, Any]) -> Table:
    server = report["redis"]
    outage = server["last_outage"]
    return _pairs(
        f"Redis · namespace '{report['namespace']}'",
        [
            ("version", server["version"]),
            ("memory", server["used_memory_human"]),
            ("persistence", server["persistence"]),
            ("uptime", f"{server['uptime_s']} s"),
            ("reconnects", server["reconnects"]),
            (
                "last outage",
                f"{outage['seconds']:.0f} s, {time.time() - outage['ended']:.0f} s ago ({outage['who']})"
                if outage
                else None,
            ),
        ],
    )


def _queue(parts: dict[str, Any]) -> Table:
    table = Table(title="Queue (parts)", title_justify="left")
    for col in ("", "enqueued", "pending", "in flight", "done", "dead"):
        table.add_column(col, justify="right")
    table.add_row("parts", str(parts["enqueued"]), *(str(parts[s]) for s in ("pending", "in_flight", "done", "dead")))
    rows = parts["rows"]
    table.add_row(
        "rows", str(parts["rows_enqueued"]), *(str(rows[s]) for s in ("pending", "in_flight", "done", "dead"))
    )
    if not parts["consistent"]:
        table.caption = Text("states do not add up: run `streamcap audit`", style="red")
    elif parts.get("retries_open"):
        table.caption = Text(f"{parts['retries_open']} retry parts queued or running (`streamcap parts retry`)")
    return table


def _downloads(urls: dict[str, Any]) -> Table:
    top = ", ".join(f"{reason} {n}" for reason, n in urls["top_failures_live"]) or "-"
    total_top = sorted(urls["failures_by_reason"].items(), key=lambda kv: -kv[1])[:5]
    return _pairs(
        "Downloads",
        [
            ("live downloaders", urls["downloaders_live"]),
            ("urls/s · images/s", f"{urls['urls_per_s']:.1f} · {urls['images_per_s']:.1f}"),
            ("MB/s", f"{urls['mb_per_s']:.2f}"),
            ("success now", f"{urls['success_pct']} %" if urls["success_pct"] is not None else None),
            ("failures now", top),
            ("committed rows", f"{urls['rows']} ({urls['samples']} samples, {urls['failures']} failures)"),
            ("success overall", f"{urls['success_pct_total']} %" if urls["success_pct_total"] is not None else None),
            ("top failures overall", ", ".join(f"{r} {n}" for r, n in total_top) or "-"),
            ("retried rows", _retried(urls)),
            ("DNS lookups · from cache", f"{urls['dns_lookups']} · {urls['dns_cache_hits']}"),
        ],
    )


def _hosts(hosts: dict[str, Any]) -> Table:
    """Hosts every downloader waits out (429/503), then the ones failing most (`streamcap hosts`)."""
    backoff = ", ".join(f"{h['host']} ({h['seconds_left']:.0f} s left)" for h in hosts["backoff"][:5])
    failing = ", ".join(
        f"{h['host']} {h['failures']} ({', '.join(f'{r} {n}' for r, n in h['reasons'].items())})"
        for h in hosts["failing"]
    )
    return _pairs(
        "Hosts",
        [
            ("in backoff", f"{len(hosts['backoff'])}: {backoff}" if hosts["backoff"] else "0"),
            (f"most failing (of {hosts['hosts_failing']})", failing or "-"),
        ],
    )


def _retried(urls: dict[str, Any]) -> str:
    """Rows fetched again by `streamcap parts retry` and how they ended."""
    n, ok = urls.get("retried_rows", 0), urls.get("retried_samples", 0)
    return f"{n} ({ok} now samples, {n - ok} failed again)" if n else "-"


def _shards(shards: dict[str, Any]) -> Table:
    disk = shards["disk"]
    paused = shards["paused_for_disk"]
    return _pairs(
        "Shards",
        [
            ("shards", shards["count"]),
            ("samples", shards["samples"]),
            ("bytes", human_bytes(shards["bytes"])),
            ("collected (gc)", shards["collected"]),
            _storage(disk),
            ("downloads paused for disk", paused or "no"),
            ("gc watch", _gc(shards["gc"])),
        ],
    )


def _storage(disk: dict[str, Any] | None) -> tuple[str, str | None]:
    """A directory's free space; a bucket has none to show, so what its shards take (what the
    budget counts there)."""
    if disk is None or disk["free"] is not None:
        return "disk free", f"{human_bytes(disk['free'])} of {human_bytes(disk['total'])}" if disk else None
    if "error" in disk:
        return "bucket", f"{disk['path']}: {disk['error']}"
    return "bucket", f"{human_bytes(disk['used'])} in {disk['objects']} shards ({disk['path']})"


def _gc(gc: dict[str, Any] | None) -> str:
    if gc is None:
        return "not running"
    return (
        f"deleted {gc['deleted']} ({human_bytes(gc['freed_bytes'])}); last round {gc['last_round_age_s']} s ago: "
        f"{gc['last_result']}"
    )


def _skipped(trainer: dict[str, Any]) -> str | None:
    if trainer["nonfinite_steps"] is None:
        return None
    return f"{trainer['nonfinite_steps']} / {trainer['oom_steps']}"


def _trainer(trainer: dict[str, Any]) -> Table:
    step = f"{trainer['step']} / {trainer['max_steps']}" if trainer["step"] is not None else None
    runs = ", ".join(f"{run} ({info.get('state')})" for run, info in trainer["runs"].items()) or None
    return _pairs(
        "Trainer",
        [
            ("runs", runs),
            ("live ranks", trainer["ranks"]),
            ("step", step),
            ("samples/s", trainer["samples_per_s"]),
            ("data wait", f"{trainer['data_wait_pct']} %" if trainer["data_wait_pct"] is not None else None),
            ("fresh / replay", f"{trainer['fresh']} / {trainer['replay']}"),
            ("fresh shards not yet read", trainer["fresh_shards_unread"]),
            ("loss", trainer["loss"]),
            ("skipped steps (non-finite / out of memory)", _skipped(trainer)),
            (
                "checkpoints deleted",
                f"{human_bytes(trainer['checkpoints_freed_bytes'])} freed"
                if trainer["checkpoints_freed_bytes"]
                else None,
            ),
            *[("stopped itself", line) for line in trainer["failed"]],
        ],
    )


def _eval(evaluation: dict[str, Any]) -> Table:
    latest, best = evaluation["latest"], evaluation["best"]

    def scores(s: dict[str, Any] | None) -> str | None:
        return ", ".join(f"{k} {v:.3f}" for k, v in s.items() if isinstance(v, (int, float))) if s else None

    return _pairs(
        "Evaluator",
        [
            (
                "latest",
                f"step {latest['step']} ({latest['status']}): {scores(latest.get('scores'))}" if latest else None,
            ),
            (
                "best",
                f"step {best.get('step')}: {best.get('metric')} {float(best.get('value', 0)):.3f}" if best else None,
            ),
            ("evaluators", ", ".join(f"{e['id']} {e['state']}" for e in evaluation["evaluators"]) or None),
        ],
    )


def _workers(workers: list[dict[str, Any]]) -> Table:
    table = Table(title="Workers (heartbeats)", title_justify="left")
    for col in ("role", "id", "state", "age s", ""):
        table.add_column(col)
    for w in workers:
        state = w["state"] + (f": {w['reason']}" if w["reason"] else "")
        table.add_row(
            w["role"],
            w["id"],
            state,
            str(w["age_s"]),
            Text("STALE", style="red") if w["stale"] else Text("live", style="green"),
        )
    return table


def _keys(keys: dict[str, Any]) -> Table:
    table = Table(title="Keys", title_justify="left")
    for col in ("name", "type", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for name, entry in keys.items():
        kind = entry["type"] + (" (WRONG TYPE)" if entry["wrong_type"] else "")
        table.add_row(name, kind, str(entry["size"]))
    return table


def attention_line(report: dict[str, Any]) -> Text:
    """The first line: the one problem to fix first (streamcap.ops.attention), or that there is none."""
    if report["attention"] is None:
        return Text("all healthy", style="bold green")
    return Text(f"attention: {report['attention']}", style="bold red")


def render(report: dict[str, Any]) -> Group:
    parts: list[Any] = [
        attention_line(report),
        _redis(report),
        _queue(report["parts"]),
        _downloads(report["urls"]),
        _hosts(report["hosts"]),
        _shards(report["shards"]),
        _trainer(report["trainer"]),
        _eval(report["eval"]),
    ]
    if report["workers"]:
        parts.append(_workers(report["workers"]))
    parts.append(_keys(report["keys"]))
    if report["hints"]:
        parts.append(Text("\n".join(f"hint: {h}" for h in report["hints"]), style="yellow"))
    return Group(*parts)
