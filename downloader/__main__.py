"""python -m streamcap.downloader [OPTIONS] is `streamcap download [OPTIONS]` (the service alone)."""

import sys

import typer

from streamcap.common.commands import run_app
from streamcap.downloader.cli import download_command


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(download_command)
    sys.exit(run_app(app, prog_name="python -m streamcap.downloader"))


if __name__ == "__main__":
    main()
