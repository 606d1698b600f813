"""The `streamcap` command: the composition root of the CLI.

Core commands live here; each service adds its own (sub-)commands through `register(app)` in
its `cli.py`. Those modules import only typer and their settings at import time and load the
service (and torch, for the trainer) inside the command body, so `streamcap --help` and the
downloader image never import torch.

    streamcap --help
    streamcap redis                      # a local redis-server; prints the REDIS_URL to export
    REDIS_URL=redis://127.0.0.1:6379/0 streamcap status --json
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from streamcap import __version__
from streamcap.common.commands import JsonFlag, print_json, settings_command
from streamcap.common.settings import CommonSettings
from streamcap.demo.config import DemoSettings
from streamcap.entrypoint import run_app

app = typer.Typer(
    name="streamcap",
    help="Train image-captioning models on web-scale (url, caption) data while it downloads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# CLI modules, each exposing register(app). Import order is help order.
SERVICE_CLIS: tuple[str, ...] = (
    "streamcap.downloader.cli",
    "streamcap.shardwriter.cli",
    "streamcap.trainer.cli",
    "streamcap.eval.cli",
    "streamcap.model.cli",
    "streamcap.text.cli",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"streamcap {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """streamcap: a decoupled download → shards → train → evaluate pipeline."""


@app.command("redis")
def redis_command(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the server keeps its AOF.")] = Path(
        ".streamcap/redis"
    ),
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
) -> int:
    """Run a local redis-server in the foreground (AOF on) and print the REDIS_URL to export."""
    from streamcap.bus.embedded import EmbeddedRedis

    server = EmbeddedRedis(data_dir=data_dir, port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        typer.echo(f"redis-server {server.binary} listening on 127.0.0.1:{server.port}, data in {data_dir}")
        typer.echo(f"export REDIS_URL={server.url}")
        sys.stdout.flush()
        while not stop.is_set() and server.running:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.release()
    if not stop.is_set() and not server.running and server.process and server.process.returncode not in (0, None):
        typer.echo(f"redis-server exited with code {server.process.returncode}; see {server.log_path}", err=True)
        return 1
    typer.echo("redis-server stopped")
    return 0


@app.command("status")
@settings_command(CommonSettings)
def status_command(
    cfg: CommonSettings,
    as_json: JsonFlag = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 2.0,
) -> int:
    """One view of the pipeline: queue, downloads, workers, shards, trainer, evaluator, hints."""
    from streamcap import bus
    from streamcap.ops import status, status_view

    r = bus.connect(cfg.require_redis(), retries=2)

    def view():
        return status_view.render(status.collect(r, bus.Keys(cfg.namespace), cfg.shard_dir))

    if as_json:
        print_json(status.collect(r, bus.Keys(cfg.namespace), cfg.shard_dir))
        return 0
    console = Console()
    if not watch:
        console.print(view(), soft_wrap=True)  # the attention line stays one line, in a pipe too
        return 0
    with Live(view(), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    live.update(view(), refresh=True)
                except bus.RedisUnavailable as e:  # keep watching through an outage
                    live.update(f"[red]{e}[/red] — retrying every {interval:.0f} s", refresh=True)
        except KeyboardInterrupt:
            return 0


@app.command("demo")
@settings_command(DemoSettings)
def demo_command(cfg: DemoSettings) -> int:
    """The whole pipeline here, no internet: download a generated world, train while it lands, evaluate.

    Generated images are served on 127.0.0.1 and downloaded by a real downloader; the tiny model
    trains on shards while later ones still arrive; every checkpoint is scored on a held-out set
    against an always-the-most-common-caption baseline. The last line reads
    `demo: CIDEr <x> (baseline <y>), BLEU-4 <z>, report <path>`.
    """
    from streamcap.demo.run import run

    return run(cfg)


def _register_services() -> None:
    for module in SERVICE_CLIS:
        importlib.import_module(module).register(app)


_register_services()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, argv))


if __name__ == "__main__":
    main()
