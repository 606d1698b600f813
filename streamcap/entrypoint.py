"""The entry point of every command line: a typer app run so that mistakes are one line.

    sys.exit(run_app(app, prog_name="python -m streamcap.downloader"))

A wrong setting, an unreachable or misconfigured Redis, a path that cannot be made: each becomes
`streamcap: error: <one line>` and exit code 1 (2 for a usage error, 130 for Ctrl-C). It sits
above the bus in the core's order because it knows the bus's errors; the typer helpers the
commands are built with live below, in `streamcap.common.commands`.
"""

from __future__ import annotations

import importlib
import signal
from collections.abc import Sequence
from typing import Any

import redis
import typer

from streamcap.bus import REDIS_DOWN, RedisUnavailable
from streamcap.bus.embedded import EmbeddedRedisError
from streamcap.common.commands import error
from streamcap.common.logs import first_line
from streamcap.common.settings import ConfigError
from streamcap.common.store import StoreUnavailable


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
        message = e.format_message()
        if not message:  # a group run bare (`streamcap`, `streamcap shards`): its help is printed already
            return 2
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        error(message + hint)
        return 2
    except _CLICK_EXCEPTION as e:
        error(e.format_message())
        return e.exit_code
    except (RedisUnavailable, EmbeddedRedisError, StoreUnavailable) as e:
        error(str(e))
        return 1
    except REDIS_DOWN as e:
        error(f"Redis is unreachable: {first_line(e)}")
        return 1
    except redis.exceptions.InvalidResponse as e:
        error(f"REDIS_URL does not lead to a Redis server (another service's port?): {first_line(e)}")
        return 1
    except redis.exceptions.ResponseError as e:
        if "DB index" not in str(e):
            raise
        error(f"Redis refused the REDIS_URL's db index: {first_line(e)} (a server has 16 by default, 0-15)")
        return 1
    except OSError as e:  # a path given that cannot be made, read or written
        if e.filename is None:  # no path to name: more likely a bug than a user's mistake, so show it
            raise
        error(os_error_line(e))
        return 1
    except (KeyboardInterrupt, *_ABORT):
        error("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


def os_error_line(e: OSError) -> str:
    """'Permission denied: /x' (or 'File exists: /a -> /b'); the exception's text without errno."""
    if not e.strerror:
        return first_line(e)
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{e.strerror}: {paths}" if paths else e.strerror


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
