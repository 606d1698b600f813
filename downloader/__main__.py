"""python -m streamcap.downloader [OPTIONS] is `streamcap download [OPTIONS]` (the service alone)."""

import sys

import typer

from streamcap.downloader.cli import download_command
from streamcap.entrypoint import run_app


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(download_command)
    sys.exit(run_app(app, prog_name="python -m streamcap.downloader"))


if __name__ == "__main__":
    main()
