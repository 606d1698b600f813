"""python -m downloader [OPTIONS] is `streamcap download [OPTIONS]` (the service alone)."""

import sys

import typer

from downloader.cli import download_command
from streamcap.cliutil import run_app


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(download_command)
    sys.exit(run_app(app, prog_name="python -m downloader"))


if __name__ == "__main__":
    main()
