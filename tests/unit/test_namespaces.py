"""A shard dir belongs to one namespace (streamcap.common.namespaces), and a namespace other than
the default one never defaults to the default one's shard dir (issue 25, item 1); log levels in
any case (item 11)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import typer

from streamcap.cli import app as streamcap_app
from streamcap.common import namespaces
from streamcap.common.commands import settings_command
from streamcap.common.logs import setup_logging
from streamcap.common.settings import CommonSettings, ConfigError
from streamcap.entrypoint import run_app


def recording_app() -> tuple[typer.Typer, list[CommonSettings]]:
    seen: list[CommonSettings] = []

    @settings_command(CommonSettings)
    def probe(cfg: CommonSettings) -> int:
        """Record the settings."""
        seen.append(cfg)
        return 0

    app = typer.Typer(add_completion=False)
    app.command()(probe)
    return app, seen


def test_only_the_default_namespace_defaults_to_shards(monkeypatch):
    monkeypatch.delenv("STREAMCAP_SHARD_DIR", raising=False)
    assert CommonSettings().shard_dir == Path("shards")
    assert CommonSettings(namespace="streamcap").shard_dir == Path("shards")
    assert CommonSettings(namespace="exp2").shard_dir == Path("shards-exp2")
    # Names that would be a folder the shard tools use, or the parent, as a sub-folder: a sibling is neither.
    assert CommonSettings(namespace="..").shard_dir == Path("shards-..")
    assert CommonSettings(namespace="exp2", shard_dir=Path("mine")).shard_dir == Path("mine")

    app, seen = recording_app()
    monkeypatch.setenv("STREAMCAP_NAMESPACE", "exp2")
    assert run_app(app, []) == 0 and seen[-1].shard_dir == Path("shards-exp2")
    assert run_app(app, ["--shard-dir", "shards"]) == 0 and seen[-1].shard_dir == Path("shards")


def test_the_first_writer_owns_a_shard_dir_and_others_are_refused_by_name(tmp_path):
    shards = tmp_path / "shards"
    namespaces.check(shards, "exp2")  # no dir, no marker: nobody owns it yet
    namespaces.claim(shards, "streamcap")
    assert (shards / namespaces.MARKER).read_text() == "streamcap\n"
    namespaces.claim(shards, "streamcap")  # its own: again and again
    namespaces.check(shards, "streamcap")
    for refuse in (namespaces.check, namespaces.claim):
        with pytest.raises(ConfigError) as e:
            refuse(shards, "exp2")
        message = str(e.value)
        assert "\n" not in message
        assert f"{shards} belongs to namespace 'streamcap'" in message and "not to --namespace 'exp2'" in message
        assert "pass --namespace streamcap" in message
    assert namespaces.owner(shards) == "streamcap"
    assert [p.name for p in shards.iterdir()] == [namespaces.MARKER]  # no temporary file left


def test_the_marker_is_in_no_listing_of_the_shard_dir(tmp_path):
    from streamcap.common.store import open_store
    from streamcap.shardwriter import registry

    namespaces.claim(tmp_path, "exp2")
    assert open_store(tmp_path).list() == [] and registry.load_part_stats(tmp_path) == {}


def test_every_command_with_a_shard_dir_refuses_another_namespaces(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STREAMCAP_SHARD_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    namespaces.claim(Path("shards"), "streamcap")
    app, seen = recording_app()
    assert run_app(app, ["--namespace", "exp2", "--shard-dir", "shards"]) == 1 and not seen
    line = capsys.readouterr().err.strip()
    assert line == (
        "streamcap: error: --shard-dir / STREAMCAP_SHARD_DIR: shards belongs to namespace 'streamcap' (its "
        ".streamcap-namespace says so), not to --namespace 'exp2'; each namespace needs its own shard dir: "
        "leave --shard-dir out to use shards-exp2, or pass --namespace streamcap to work on that one"
    )
    assert run_app(app, ["--namespace", "exp2"]) == 0 and seen[-1].shard_dir == Path("shards-exp2")
    assert run_app(app, []) == 0 and seen[-1].shard_dir == Path("shards")


def test_verify_reads_another_namespaces_shard_dir_but_quarantines_only_its_own(tmp_path, capsys):
    # `make demo` writes namespace 'demo': checking its files needs no --namespace, but moving
    # (and unregistering) them does.
    shards = tmp_path / "shards"
    namespaces.claim(shards, "demo")
    assert run_app(streamcap_app, ["shards", "verify", "--shard-dir", str(shards)]) == 0
    capsys.readouterr()
    args = ["shards", "verify", "--quarantine", "--shard-dir", str(shards), "--redis-url", "redis://127.0.0.1:1/0"]
    assert run_app(streamcap_app, args) == 1
    assert "belongs to namespace 'demo'" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["debug", "Debug", "DEBUG", "warning"])
def test_a_log_level_in_any_case_is_that_level(given, monkeypatch):
    app, seen = recording_app()
    monkeypatch.setenv("STREAMCAP_LOG_LEVEL", given)
    assert run_app(app, []) == 0
    assert seen[-1].log_level == given.upper()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # pytest's own capture handlers
    try:
        setup_logging("probe", seen[-1].log_level)
        assert root.level == getattr(logging, given.upper())
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_wrong_log_level_is_one_line_listing_the_levels(monkeypatch, capsys):
    monkeypatch.setenv("STREAMCAP_LOG_LEVEL", "verbose")
    assert run_app(streamcap_app, ["status"]) == 1
    assert capsys.readouterr().err.strip() == (
        "streamcap: error: --log-level / STREAMCAP_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR "
        "(in any case), got 'verbose'"
    )
