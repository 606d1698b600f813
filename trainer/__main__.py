"""`python -m streamcap.trainer [OPTIONS]` is `streamcap train [OPTIONS]`; it is what torchrun starts:

torchrun --standalone --nproc-per-node 8 -m streamcap.trainer --tokenizer vocab.txt --preset base
"""

import sys

import typer

from streamcap.entrypoint import run_app
from streamcap.trainer.cli import train_command


def main() -> int:
    app = typer.Typer(name="trainer", add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_command)
    return run_app(app, prog_name="python -m streamcap.trainer")


if __name__ == "__main__":
    sys.exit(main())
