"""What every typer command of every service shares: options generated from a settings class,
JSON output, and the entry point that turns errors into one line.

    @settings_command(DownloaderSettings, exclude=("min_reads",))
    def download_command(cfg: DownloaderSettings) -> int:
        return service.run(cfg)

    @settings_command(EvalSettings, only=("meteor", "log_level"))
    def score_command(predictions: Annotated[Path, typer.Argument(help="...")], cfg: EvalSettings,
                      as_json: JsonFlag = False) -> int: ...

Each settings field becomes one option with the field's flag, env var and help, so a new setting
is declared once, in its settings class. Options default to None ("not given") so the settings
dataclass stays the one place that knows defaults; `option()` shows that default in --help.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

import redis
import typer

from streamcap.bus import REDIS_DOWN, RedisUnavailable
from streamcap.bus.embedded import EmbeddedRedisError
from streamcap.common.logs import first_line
from streamcap.common.secrets import redact
from streamcap.common.settings import CommonSettings, ConfigError, build


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


# The options every command that talks to Redis or the shard dir takes (`only=COMMON_FIELDS`).
COMMON_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CommonSettings))


def settings_command(
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    read_as: Mapping[str, type] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of settings class `cls`, and call it with the settings.

    The decorated function has one parameter annotated `cls`; its place in the signature becomes
    the options (the most derived class's fields first, the common ones last), and it receives
    `build(cls, ...)` of their values. Its other parameters (arguments, command-specific flags)
    stay as they are. `only`/`exclude` pick fields; `read_as` overrides the type an option parses,
    for fields the settings convert themselves (byte sizes read as text: "200G").
    """
    names = _option_fields(cls, only, exclude)
    hints = typing.get_type_hints(cls)
    option_params = [
        _option_parameter(cls, name, (read_as or {}).get(name) or _without_none(hints[name])) for name in names
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())
        settings_param = next((p for p in own if p.annotation is cls), None)
        if settings_param is None:
            raise TypeError(f"{func.__name__} has no parameter annotated {cls.__name__}")
        clashes = {p.name for p in own} & set(names)
        if clashes:
            raise TypeError(f"{func.__name__}: parameters {sorted(clashes)} are also settings of {cls.__name__}")
        at = own.index(settings_param)

        def command(**given: Any) -> Any:
            cfg = build(cls, **{name: given.pop(name) for name in names})
            return func(**given, **{settings_param.name: cfg})

        functools.update_wrapper(command, func, updated=())
        # typer reads the parameters through inspect.signature, which takes __signature__ as is.
        # Keyword-only, so that options with defaults may precede arguments without.
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + option_params + own[at + 1 :]]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return command

    return decorate


def _option_fields(cls: type, only: Iterable[str] | None, exclude: Iterable[str]) -> list[str]:
    """Setting names of `cls` in help order: each class's own fields, the most derived class first."""
    settings = {f.name for f in dataclasses.fields(cls) if "flag" in f.metadata}
    declared = [name for klass in cls.__mro__ for name in inspect.get_annotations(klass) if name in settings]
    ordered = list(dict.fromkeys(declared))
    unknown = (set(only or ()) | set(exclude)) - set(ordered)
    if unknown:
        raise TypeError(f"{cls.__name__} has no settings {sorted(unknown)}")
    wanted = set(ordered if only is None else only) - set(exclude)
    return [name for name in ordered if name in wanted]


def _option_parameter(cls: type, name: str, value_type: Any) -> inspect.Parameter:
    """`name: Annotated[Optional[value_type], option(cls, name)] = None`: None means "not given"."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[value_type | None, option(cls, name)]
    )


def _without_none(hint: Any) -> Any:
    """int | None -> int; other types as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


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
    except (RedisUnavailable, EmbeddedRedisError) as e:
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
