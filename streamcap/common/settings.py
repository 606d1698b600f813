"""Typed settings: defaults < environment variable < CLI flag.

Every service declares one frozen dataclass deriving from `Settings` (most from `CommonSettings`).
A setting is a field declared with `setting(default, check=...)` and the docstring below it,
its help. The field's name gives the rest: field `part_size` is the flag `--part-size` and the
environment variable `STREAMCAP_PART_SIZE`, whose prefix belongs to the class: a class keyword,
inherited by subclasses, `STREAMCAP_` unless a class names another.

    @dataclass(frozen=True, kw_only=True)
    class EvalSettings(CommonSettings, env_prefix="STREAMCAP_EVAL_"):
        beam: int = setting(5, check=between(1, 64))  # --beam, STREAMCAP_EVAL_BEAM
        "Beam size (1: greedy-like beam search)."
        out_dir: Path = setting(Path("evals"), env="STREAMCAP_EVAL_DIR")  # an exception
        "Predictions, HTML reports and `best` go here."

`flag=` and `env=` name the exceptions (`env=None`: the setting has no variable). The names and
the help are filled in as the class is created, so each field's metadata holds its final "flag",
"env", "help" and "check". The typer commands build their options from the same declaration
(`streamcap.common.commands.settings_command`), so a flag, its variable and its error message
cannot drift apart, and docs/settings.md is generated from it (`make docs`; a test checks it).

    >>> cfg = CommonSettings(redis_url="redis://localhost:6379/0")
    >>> CommonSettings(namespace="has space")
    Traceback (most recent call last):
    ...
    streamcap.common.settings.ConfigError: --namespace / STREAMCAP_NAMESPACE: expected letters, digits, '_', '-', '.' or ':', got 'has space'
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import re
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional
from urllib.parse import parse_qsl, urlparse

from streamcap.common.secrets import PASSWORD_ENV, redact, with_password
from streamcap.common.store import canonical_url, is_store_url, store_url_problem

# A check returns None when the value is fine, else what was expected ("an integer >= 1").
Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
    """A setting has a wrong value. The message is one line naming the setting."""


class _FromName:
    """The variable a `setting()` leaves to its field's name (see the module docstring)."""

    def __repr__(self) -> str:
        return "<from the field's name>"


_FROM_NAME: Any = _FromName()


def setting(
    default: Any,
    *,
    check: Check | None = None,
    flag: str | None = None,
    env: str | None = _FROM_NAME,
    help: str | None = None,
) -> Any:
    """Declare a settings field: its default and an optional check.

    In a `Settings` class, the flag and the environment variable follow from the field's name and
    the class's prefix unless given (`env=None`: no variable), and the help is the docstring right
    below the field unless given. Elsewhere, give all three.
    """
    meta = {"flag": flag, "env": env, "help": help, "check": check}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_setting(value: Any) -> bool:
    return isinstance(value, dataclasses.Field) and "flag" in value.metadata


def _attribute_docs(cls: type) -> dict[str, str] | None:
    """The docstring of each field `cls` declares (the string right below it), on one line;
    None where there is no source to read (a build that ships bytecode only).

    Read from the source, as tyro and simple-parsing read theirs.
    """
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return None
    body = ast.parse(textwrap.dedent(source)).body[0].body
    docs = {}
    for field, below in zip(body, body[1:]):
        if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and _is_text(below):
            docs[field.target.id] = " ".join(below.value.value.split())
    return docs


def _is_text(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def describe(cls_or_obj: Any, name: str) -> str:
    """'--flag / ENV_VAR' for one field, as users spell it."""
    meta = _field(cls_or_obj, name).metadata
    return f"{meta['flag']} / {meta['env']}" if meta.get("env") else meta["flag"]


def fail(cls_or_obj: Any, name: str, expected: str, got: Any) -> None:
    """Raise the one-line ConfigError for field `name`."""
    if isinstance(got, Path):
        got = str(got)
    raise ConfigError(f"{describe(cls_or_obj, name)}: expected {expected}, got {got!r}")


def build(cls: type, **given: Any) -> Any:
    """Construct settings from CLI values; None means 'not given' and keeps the default."""
    return cls(**{k: v for k, v in given.items() if v is not None})


def to_json_text(cfg: Any) -> str:
    """The resolved settings as JSON, for logs and for saving beside outputs; passwords redacted."""
    return redact(json.dumps(dataclasses.asdict(cfg), default=str, sort_keys=True))


def _field(cls_or_obj: Any, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f
    raise KeyError(name)


# --- reusable checks ---------------------------------------------------------------------------


def at_least(minimum: float) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, (int, float)) and v >= minimum else f"a number >= {minimum}"

    return check


def between(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, (int, float)) and lo <= v <= hi else f"a number from {lo} to {hi}"

    return check


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else "one of " + ", ".join(choices)

    return check


def optional(inner: Check) -> Check:
    def check(v: Any) -> str | None:
        return None if v is None else inner(v)

    return check


def redis_url(v: Any) -> str | None:
    expected = "a URL like redis://host:6379/0 (or rediss://, unix:///path/redis.sock?db=0)"
    if v is None:
        return None
    if not re.match(r"^(redis|rediss|unix)://\S+$", str(v)):
        return expected
    try:
        url = urlparse(str(v))
    except ValueError:  # an unclosed IPv6 bracket, 'redis://[::1/0'
        return expected + ", whose host is well-formed (IPv6 in brackets: redis://[::1]:6379/0)"
    # redis-py reads a db index it cannot parse as db 0, silently: refuse it here instead.
    db_in_path = url.path if url.scheme != "unix" else ""
    query_db = [value for key, value in parse_qsl(url.query) if key == "db"]
    if not re.fullmatch(r"/?(\d+)?", db_in_path) or not all(value.isdigit() for value in query_db):
        return expected + ", whose db index is a number"
    try:
        url.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return expected + ", whose port is a number"
    if url.scheme == "unix" and not url.path:
        return expected + ", with the socket's path"
    return tls_query_problem(url.scheme, parse_qsl(url.query))


# redis-py reads these from a rediss:// URL's query (SSLConnection's arguments): certificate files.
TLS_FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def tls_query_problem(scheme: str, query: list[tuple[str, str]]) -> str | None:
    """Say so here, in one line, rather than as redis-py's TypeError or an OpenSSL error on connect."""
    for key, value in query:
        if key.startswith("ssl_") and scheme != "rediss":
            return f"a rediss:// URL for the TLS option {key}= (redis:// is plain text)"
        if key in TLS_FILE_OPTIONS and not Path(value).is_file():
            return f"a URL whose {key}= names a readable file ({value} is not one)"
    return None


def namespace(v: Any) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_.:-]+", str(v)) else "letters, digits, '_', '-', '.' or ':'"


def directory_path(v: Any) -> str | None:
    """A directory, or a path where one can be made: not a file, not below a file."""
    path = Path(v)
    if path.exists():
        return None if path.is_dir() else "a directory (this path is a file)"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return None if parent.is_dir() else f"a directory path ({parent} is a file)"


def shard_location(v: Any) -> str | None:
    """A directory (see `directory_path`) or an s3://bucket/prefix URL (streamcap.common.store);
    None is "not given" (CommonSettings derives the location from the namespace)."""
    if v is None:
        return None
    return store_url_problem(v) if is_store_url(v) else directory_path(v)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(v: Any) -> str | None:
    """One of LOG_LEVELS in any case (`debug` is `DEBUG`: the settings store it upper-cased)."""
    return None if str(v).upper() in LOG_LEVELS else "one of " + ", ".join(LOG_LEVELS) + " (in any case)"


DEFAULT_NAMESPACE = "streamcap"
DEFAULT_SHARD_DIR = Path("shards")


def default_shard_dir(namespace: str) -> Path:
    """The shard dir of `namespace` when --shard-dir is left out: `shards` for the default
    namespace, `shards-<namespace>` for any other, so namespaces never share one by default
    (why a sibling and not a folder inside: streamcap.common.namespaces)."""
    return DEFAULT_SHARD_DIR if namespace == DEFAULT_NAMESPACE else Path(f"{DEFAULT_SHARD_DIR}-{namespace}")


DEVICES = ("auto", "cpu", "cuda")


_PATH_TYPES = (Path, "Path", "Path | None", Optional[Path], "Optional[Path]")  # noqa: UP045 (matches old spellings)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every settings class: names its settings, runs each field's check, then `validate()`."""

    env_prefix: ClassVar[str] = "STREAMCAP_"

    def __init_subclass__(cls, *, env_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if env_prefix is not None:
            cls.env_prefix = env_prefix
        # This runs before @dataclass reads the class: each `setting()` the class declares is
        # still a Field among its attributes, and gets its names here. Inherited ones keep theirs.
        own = {name: value for name, value in vars(cls).items() if _is_setting(value)}
        docs = _attribute_docs(cls) if any(f.metadata["help"] is None for f in own.values()) else {}
        for name, f in own.items():
            meta = dict(f.metadata)
            meta["flag"] = meta["flag"] or "--" + name.replace("_", "-")
            meta["env"] = cls.env_prefix + name.upper() if meta["env"] is _FROM_NAME else meta["env"]
            if meta["help"] is None:
                # Without source to read (docs None), the settings still work: without help texts.
                meta["help"] = "" if docs is None else docs.get(name)
                if meta["help"] is None:
                    raise TypeError(f"{cls.__qualname__}.{name}: a setting needs its help, as the docstring below it")
            f.metadata = types.MappingProxyType(meta)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            expected = check(value) if check else None
            if expected:
                fail(self, f.name, expected, value)
        for f in dataclasses.fields(self):  # CLI values and env vars may arrive as str
            value = getattr(self, f.name)
            if f.metadata.get("check") is shard_location and is_store_url(value):
                # A bucket stays a URL (typer's Path made "s3:/b/p" of it): streamcap.common.store
                object.__setattr__(self, f.name, canonical_url(value))
            elif f.type in _PATH_TYPES and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses extend this and raise through `fail`."""


# --- the settings every command shares ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CommonSettings(Settings):
    """Settings shared by every command. Services derive their own settings from this."""

    redis_url: str | None = setting(None, check=redis_url, env="REDIS_URL")
    """Redis server URL, e.g. redis://localhost:6379/0 (`streamcap redis` prints one)."""
    namespace: str = setting(DEFAULT_NAMESPACE, check=namespace)
    """Prefix of every Redis key, so several pipelines can share one server (each with its own shard dir)."""
    # None ("not given") until __post_init__ derives it from the namespace: always a location after.
    shard_dir: Path = setting(None, check=shard_location)
    """Directory of the WebDataset tar shards (a shared volume in compose), or s3://bucket/prefix. Unset: `shards`, or `shards-<namespace>` with another --namespace than streamcap. A shard dir belongs to the namespace that first wrote into it; other namespaces are refused."""
    log_level: str = setting("INFO", check=log_level)
    """Log verbosity: DEBUG, INFO, WARNING or ERROR (any case)."""

    def __post_init__(self) -> None:
        if self.shard_dir is None:
            object.__setattr__(self, "shard_dir", default_shard_dir(str(self.namespace)))
        super().__post_init__()
        object.__setattr__(self, "log_level", self.log_level.upper())

    def require_redis(self) -> str:
        """The Redis URL, or a ConfigError telling the user how to get one."""
        if not self.redis_url:
            raise ConfigError(
                "REDIS_URL is not set: run `streamcap redis` in another shell and export the "
                "REDIS_URL it prints, or pass --redis-url"
            )
        # A password given on its own (any character) is encoded into the URL here, not by people.
        return with_password(self.redis_url, os.environ.get(PASSWORD_ENV))


@dataclass(frozen=True, kw_only=True)
class ProgressSettings(Settings):
    """What the long commands (enqueue, download, train, eval run) share about showing progress."""

    progress_every: float = setting(30.0, check=at_least(0.1))
    """Seconds between progress lines when stderr is not a terminal (docker compose logs, CI, a pipe); on a terminal a live bar shows instead."""


def all_settings_classes() -> list[type]:
    """Every settings class imported so far (base classes included)."""
    found, todo = [], [Settings]
    while todo:
        cls = todo.pop()
        if cls in found:  # a class with two settings bases (ProgressSettings too) is met twice
            continue
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def all_settings_fields(cls: type) -> list[dataclasses.Field]:
    """Fields of a settings class in declaration order, for docs and tests."""
    return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]
