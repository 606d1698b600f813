"""What every typer command of every service shares: options generated from a settings class,
JSON output and the one-line error; `streamcap.entrypoint.run_app` runs them.

    @settings_command(DownloaderSettings, exclude=("min_reads",))
    def download_command(cfg: DownloaderSettings) -> int:
        return service.run(cfg)

    @settings_command(EvalSettings, only=("meteor", "log_level"))
    def score_command(predictions: Annotated[Path, typer.Argument(help="...")], cfg: EvalSettings,
                      as_json: JsonFlag = False) -> int: ...

Each settings field becomes one option with the field's flag, env var and help, so a new setting
is declared once, in its settings class. Options default to None ("not given") so the settings
dataclass stays the one place that knows defaults; `option()` shows that default in --help.
A command that takes --shard-dir is refused, as one line, when the shard dir belongs to another
namespace (streamcap.common.namespaces).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer

from streamcap.common import namespaces
from streamcap.common.secrets import redact
from streamcap.common.settings import CommonSettings, build


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
    owner_check: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of settings class `cls`, and call it with the settings.

    The decorated function has one parameter annotated `cls`; its place in the signature becomes
    the options (the most derived class's fields first, the common ones last), and it receives
    `build(cls, ...)` of their values. Its other parameters (arguments, command-specific flags)
    stay as they are. `only`/`exclude` pick fields; `read_as` overrides the type an option parses,
    for fields the settings convert themselves (byte sizes read as text: "200G"). A command with a
    shard dir refuses one that belongs to another namespace, unless `owner_check=False` (it only
    reads files there, and checks itself when asked to change something).
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
            if "shard_dir" in names and owner_check:
                namespaces.check(cfg.shard_dir, cfg.namespace)
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
