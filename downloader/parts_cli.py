"""`streamcap parts retry`: bring failed work back (dead parts, failed rows).

    streamcap parts retry                                  # dead parts + transient failures
    streamcap parts retry --dead                           # dead parts only
    streamcap parts retry --reason blocked_address --reason connect_error

Then run `streamcap download` (with the setting that was wrong fixed) to fetch them. Only typer
and the settings load here; the work is `streamcap.shardwriter.retry`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from streamcap.common.commands import COMMON_FIELDS, JsonFlag, print_json, settings_command
from streamcap.common.settings import ConfigError
from streamcap.shardwriter.config import ShardWriterSettings

parts_app = typer.Typer(help="Bring failed work back onto the part queue.", no_args_is_help=True)


@parts_app.command("retry")
@settings_command(ShardWriterSettings, only=COMMON_FIELDS)
def retry_command(
    dead: Annotated[bool, typer.Option("--dead", help="Move dead parts (parts:dead) back to the queue.")] = False,
    reasons: Annotated[
        list[str] | None,
        typer.Option(
            "--reason", help="Fetch again the rows that failed with this reason (repeatable), e.g. blocked_address."
        ),
    ] = None,
    *,
    cfg: ShardWriterSettings,
    as_json: JsonFlag = False,
) -> int:
    """Requeue dead parts and failed rows; with no option, dead parts and transient failures
    (timeouts, connection errors, throttling, DNS lookups with no answer, HTTP 5xx and 429)."""
    from streamcap import bus
    from streamcap.shardwriter import retry

    chosen = list(reasons or [])
    try:
        retry.check_reasons(chosen)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    everything = not dead and not chosen
    r = bus.connect(cfg.require_redis(), retries=2)
    bus.ping(r)
    report = retry.retry(
        r, bus.Keys(cfg.namespace), cfg.shard_dir, dead=dead or everything, reasons=chosen, transient=everything
    )
    if as_json:
        print_json(report.to_json())
        return 0
    for pid in report.skipped:
        print(f"note: part {pid} has a retry still queued or running: left to it")
    print(report.summary(), flush=True)
    return 0


def register(app: typer.Typer) -> None:
    app.add_typer(parts_app, name="parts")
