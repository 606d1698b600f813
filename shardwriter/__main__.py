"""`python -m streamcap.shardwriter ls|verify|gc|reconcile|audit`: the shard tools without the root CLI."""

import sys

import typer

from streamcap.entrypoint import run_app
from streamcap.shardwriter.cli import audit_command, shards_app


def main() -> int:
    app = typer.Typer(name="shardwriter", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.registered_groups.extend(shards_app.registered_groups)
    app.registered_commands.extend(shards_app.registered_commands)
    app.command("audit")(audit_command)
    return run_app(app, prog_name="python -m streamcap.shardwriter")


if __name__ == "__main__":
    sys.exit(main())
