"""The settings reference, `docs/settings.md`, rendered from the settings classes.

Every setting is declared once, with `setting()`, in a settings dataclass; this module turns
those declarations into one markdown table per settings class (flag, environment variable,
default, help), so the reference cannot drift from the code. A test compares the committed
file with `render()`.

    make docs                                                  # rewrites docs/settings.md
    python -m streamcap.settings_doc > docs/settings.md  # the same by hand
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from enum import Enum
from pathlib import PurePath
from typing import Any

from streamcap.common.settings import all_settings_classes, all_settings_fields

# Modules that declare settings classes, in the order the pipeline runs. They are imported by
# name inside render(): the core must not import the services at module level (see
# tests/unit/test_architecture.py), and a class is only found once its module is imported.
SETTINGS_MODULES = (
    "streamcap.common.settings",
    "streamcap.downloader.config",
    "streamcap.shardwriter.config",
    "streamcap.trainer.config",
    "streamcap.eval.config",
    "streamcap.demo.config",
)

COMMAND = "make docs"
MODULE_COMMAND = "python -m streamcap.settings_doc > docs/settings.md"

INTRO = """\
Every setting has a CLI flag and an environment variable (compose sets the variables). The flag
wins over the variable, the variable over the default. A wrong value stops the command with one
line naming the setting and what was expected, and exit code 1. `--help` on any command lists
its settings too.

Each section below is one settings class and lists the settings it declares itself; the ones it
inherits are in the section of the class it names. A default of "—" means unset: the help says
what happens then."""


def render() -> str:
    """The whole of docs/settings.md, deterministic for a given source tree."""
    for module in SETTINGS_MODULES:
        importlib.import_module(module)
    lines = [
        "# Settings reference",
        "",
        f"*Generated from the settings classes by `{COMMAND}` (`{MODULE_COMMAND}`). Do not edit"
        " by hand: change a setting's declaration in the code and run the command again.*",
        "",
        INTRO,
    ]
    for cls in _ordered(all_settings_classes()):
        own = _own_fields(cls)
        if own:
            lines += ["", *_section(cls, own)]
    return "\n".join(lines) + "\n"


def _ordered(classes: list[type]) -> list[type]:
    """Classes in SETTINGS_MODULES order, then in the order each module defines them.

    Subclass discovery order depends on which module happened to be imported first, so it is
    not used; a module's namespace keeps definition order. Classes from other modules follow,
    by module and name, so a new settings module still shows up (and the test then asks for
    it to be listed here).
    """
    rank = {name: i for i, name in enumerate(SETTINGS_MODULES)}

    def key(cls: type) -> tuple:
        module = sys.modules[cls.__module__]
        position = list(vars(module)).index(cls.__name__) if cls.__name__ in vars(module) else 0
        return (rank.get(cls.__module__, len(rank)), cls.__module__, position, cls.__qualname__)

    return sorted(classes, key=key)


def _own_fields(cls: type) -> list[dataclasses.Field]:
    """Fields `cls` declares or redeclares, not those it inherits unchanged."""
    inherited: dict[str, dataclasses.Field] = {}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            for f in dataclasses.fields(base):
                inherited.setdefault(f.name, f)
    return [f for f in all_settings_fields(cls) if inherited.get(f.name) is not f]


def _section(cls: type, fields: list[dataclasses.Field]) -> list[str]:
    about = f"{_summary(cls)} Declared in `{cls.__module__}`".lstrip()
    # Each direct base with settings of its own (ProgressSettings besides CommonSettings, say).
    bases = [next((b for b in base.__mro__ if _has_settings(b)), None) for base in cls.__bases__]
    links = [f"[{b.__name__}](#{b.__name__.lower()})" for b in dict.fromkeys(b for b in bases if b is not None)]
    if links:
        about += f"; also takes every setting of {' and '.join(links)}"
    lines = [f"## {cls.__name__}", "", about + "."]
    lines += ["", "| flag | variable | default | help |", "| --- | --- | --- | --- |"]
    for f in fields:
        meta = f.metadata
        env = f"`{meta['env']}`" if meta["env"] else "—"
        lines.append(f"| `{meta['flag']}` | {env} | {_default(f)} | {_cell(meta['help'])} |")
    return lines


def _has_settings(cls: type) -> bool:
    """Whether `cls` is a settings class with at least one setting, own or inherited."""
    return dataclasses.is_dataclass(cls) and bool(all_settings_fields(cls))


def _summary(cls: type) -> str:
    """The first line of the class docstring; dataclass's generated signature does not count."""
    doc = cls.__dict__.get("__doc__") or ""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    return "" if first.startswith(cls.__name__ + "(") else " ".join(first.split())


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return _value(value)


def _value(value: Any) -> str:
    """A default as users type it: no reprs, so the output is the same on every platform."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, PurePath):
        value = value.as_posix()
    elif isinstance(value, float):
        value = format(value, "g")
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        value = ",".join(str(v) for v in items)
    return f"`{_cell(str(value))}`"


def _cell(text: str) -> str:
    """One markdown table cell: on one line, with its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    sys.stdout.write(render())
