"""`streamcap hosts`: the hosts every downloader is waiting out, and the ones failing most.

    streamcap hosts                 # hosts in backoff (429/503), then the top 20 failing hosts
    streamcap hosts --top 50 --json

Only typer and the settings load here; the state is `streamcap.downloader.hosts` in Redis.
"""

from __future__ import annotations

from typing import Annotated

import typer

from streamcap.common.commands import COMMON_FIELDS, JsonFlag, print_json, settings_command
from streamcap.shardwriter.config import ShardWriterSettings


@settings_command(ShardWriterSettings, only=COMMON_FIELDS)
def hosts_command(
    top: Annotated[int, typer.Option("--top", min=1, help="How many of the most failing hosts to list.")] = 20,
    *,
    cfg: ShardWriterSettings,
    as_json: JsonFlag = False,
) -> int:
    """Hosts in backoff (their 429/503 pause every downloader) and the hosts with the most failures."""
    from streamcap import bus
    from streamcap.ops.hosts import host_report

    r = bus.connect(cfg.require_redis(), retries=2)
    bus.ping(r)
    report = host_report(r, bus.Keys(cfg.namespace), top)
    if as_json:
        print_json(report)
        return 0
    print(f"hosts in backoff: {len(report['backoff'])}")
    for h in report["backoff"]:
        print(f"  {h['host']:<40} {h['seconds_left']:>7.1f} s left  {h['strikes']} throttled in a row  ({h['why']})")
    print(f"most failing hosts (of {report['hosts_failing']} counted):")
    for h in report["failing"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(h["reasons"].items(), key=lambda kv: -kv[1]))
        print(f"  {h['host']:<40} {h['failures']:>7}  {reasons}  last: {h['last']}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("hosts")(hosts_command)
