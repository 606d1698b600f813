"""The command-line surface is frozen: every command, its flags, their environment variables and
defaults, read from the click tree typer builds, must equal `cli_surface.json` beside this test.

Users' scripts, compose files and the docs spell these names, so a change to any of them must be
deliberate: after an intended change, write the file anew and commit it with the change.

    .venv/bin/python -m tests.unit.test_cli_surface > tests/unit/data/cli_surface.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

SURFACE = Path(__file__).parent / "data" / "cli_surface.json"
REWRITE = "python -m tests.unit.test_cli_surface > tests/unit/data/cli_surface.json"


def _parameter(param: Any) -> dict[str, Any]:
    """A click parameter (typer may vendor its own click: hence duck typing)."""
    entry: dict[str, Any] = {"kind": param.param_type_name}
    entry["flags"] = sorted(param.opts) + sorted(getattr(param, "secondary_opts", []))
    envvar = param.envvar
    entry["env"] = sorted(envvar) if isinstance(envvar, (list, tuple)) else envvar
    # Settings options default to None ("not given"): the settings default is what --help shows.
    shown = getattr(param, "show_default", None)
    default = shown if isinstance(shown, (str, bool)) and shown is not False else param.default
    entry["default"] = default if isinstance(default, (str, int, float, bool, type(None))) else str(default)
    entry["multiple"] = bool(getattr(param, "multiple", False))
    return entry


def surface() -> dict[str, Any]:
    """{'streamcap download': {'--processes': {...}, ...}, ...} for every command and group."""
    from streamcap.cli import app

    found: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        params = {}
        for param in command.params:
            key = param.opts[0] if param.opts else param.name
            params[key] = _parameter(param)
        found[path] = params
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "streamcap")
    return found


def test_the_cli_surface_is_what_users_were_promised():
    expected = json.loads(SURFACE.read_text())
    actual = json.loads(json.dumps(surface()))
    removed = sorted(set(expected) - set(actual))
    added = sorted(set(actual) - set(expected))
    assert not removed and not added, f"commands removed {removed}, added {added}: if intended, run `{REWRITE}`"
    for command, params in expected.items():
        assert actual[command] == params, f"`{command}` changed: if intended, run `{REWRITE}`"


def test_the_surface_covers_every_settings_option():
    # A sanity check of the reader itself: known flags, variables and defaults are in it.
    found = surface()
    assert found["streamcap download"]["--processes"]["env"] == "STREAMCAP_PROCESSES"
    assert found["streamcap download"]["--processes"]["default"] == "1"
    assert found["streamcap train"]["--run-id"]["env"] == "STREAMCAP_RUN_ID"
    assert found["streamcap status"]["--redis-url"]["env"] == "REDIS_URL"


if __name__ == "__main__":
    sys.stdout.write(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
