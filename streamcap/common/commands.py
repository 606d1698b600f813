"""What every typer command of every service shares: options built from settings fields, the
three common options, JSON output, and the entry point that turns errors into one line.

    @app.command()
    def status(redis_url: RedisUrl = None, namespace: Namespace = None): ...

    def download(concurrency: Annotated[Optional[int], option(DownloaderSettings, "concurrency")] = None):
        cfg = build(DownloaderSettings, concurrency=concurrency, ...)

Options default to None ("not given") so the settings dataclass stays the one place that
knows defaults; `option()` shows that default in --help.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from streamcap.bus import REDIS_DOWN, RedisUnavailable
from streamcap.bus.embedded import RedisServerNotFound
from streamcap.common.logs import first_line
from streamcap.common.secrets import redact
from streamcap.common.settings import CommonSettings, ConfigError


def _click_exception_modules() -> list[Any]:
    """typer >= 0.20 raises exceptions of its vendored click copy, older typer those of click."""
    modules = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    return modules


_CLICK = _click_exception_modules()
_BAD_PARAMETER = tuple(m.BadParameter for m in _CLICK)
_USAGE_ERROR = tuple(m.UsageError for m in _CLICK)
_CLICK_EXCEPTION = tuple(m.ClickException for m in _CLICK)
_ABORT = tuple(m.Abort for m in _CLICK if hasattr(m, "Abort")) + (typer.Abort,)


def option(cls: type, name: str, *extra_flags: str, **kwargs: Any) -> Any:
    """A typer Option for settings field `name` of `cls`: its flag, env var, help, default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = f.metadata
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    shown: Any = False if default is None else (str(default) if not isinstance(default, bool) else default)
    kwargs.setdefault("show_default", shown)
    return typer.Option(meta["flag"], *extra_flags, envvar=meta.get("env"), help=meta["help"], **kwargs)


RedisUrl = Annotated[Optional[str], option(CommonSettings, "redis_url")]
Namespace = Annotated[Optional[str], option(CommonSettings, "namespace")]
ShardDir = Annotated[Optional[Path], option(CommonSettings, "shard_dir")]
LogLevel = Annotated[Optional[str], option(CommonSettings, "log_level")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def print_json(obj: Any) -> None:
    """JSON on stdout, one document, for scripts (`| jq`)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str, sort_keys=True) + "\n")


def error(message: str) -> None:
    sys.stderr.write(f"streamcap: error: {redact(message)}\n")


def run_app(app: typer.Typer, argv: Sequence[str] | None = None, prog_name: str = "streamcap") -> int:
    """Run a typer app; a wrong setting or an unreachable Redis is one line and exit code 1.

    Commands may return an int exit code (the services' `run(cfg) -> int`).
    """
    command = typer.main.get_command(app)
    # SIGTERM as KeyboardInterrupt unless a service installs its own graceful handler.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        rv = command.main(args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False)
    except ConfigError as e:
        error(str(e))
        return 1
    except _BAD_PARAMETER as e:
        error(e.format_message())
        return 1
    except _USAGE_ERROR as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        error(e.format_message() + hint)
        return 2
    except _CLICK_EXCEPTION as e:
        error(e.format_message())
        return e.exit_code
    except (RedisUnavailable, RedisServerNotFound) as e:
        error(str(e))
        return 1
    except REDIS_DOWN as e:
        error(f"Redis is unreachable: {first_line(e)}")
        return 1
    except (KeyboardInterrupt, *_ABORT):
        error("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
