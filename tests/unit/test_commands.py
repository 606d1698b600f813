"""settings_command: a command's options come from its settings class, declared once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer

from streamcap.common.commands import COMMON_FIELDS, JsonFlag, settings_command
from streamcap.common.settings import setting
from streamcap.entrypoint import run_app
from streamcap.eval.config import EvalSettings


# Not a Settings subclass: those are all listed in the README's settings table (test_docs).
@dataclass(frozen=True, kw_only=True)
class ToySettings:
    workers: int = setting(2, flag="--workers", env="TOY_WORKERS", help="Worker count.")
    fast: bool = setting(False, flag="--fast", env="TOY_FAST", help="Go fast.")
    colour: bool = setting(True, flag="--colour/--no-colour", env="TOY_COLOUR", help="Colour output.")
    out: Path | None = setting(None, flag="--out", env="TOY_OUT", help="Output file.")
    tags: list[str] = setting(["a"], flag="--tag", env="TOY_TAGS", help="Tags.")


def toy_app(**picks) -> tuple[typer.Typer, list]:
    """A one-command app whose command records what it was called with."""
    calls = []

    @settings_command(ToySettings, **picks)
    def toy(
        source: Annotated[str, typer.Argument(help="Where from.")],
        cfg: ToySettings,
        as_json: JsonFlag = False,
    ) -> int:
        """Do the toy thing."""
        calls.append((source, cfg, as_json))
        return 7

    app = typer.Typer(add_completion=False)
    app.command()(toy)
    return app, calls


def options_of(app: typer.Typer) -> dict[str, object]:
    command = typer.main.get_command(app)
    return {opt: p for p in command.params for opt in p.opts + p.secondary_opts}


def test_every_setting_is_an_option_with_its_flag_env_var_and_help():
    app, _ = toy_app()
    options = options_of(app)
    for f in dataclasses.fields(ToySettings):
        param = options[f.metadata["flag"].split("/")[0]]
        assert param.envvar == f.metadata["env"]
        assert param.help == f.metadata["help"]
    assert "--no-colour" in options and "--json" in options


def test_given_values_reach_the_settings_and_the_rest_keep_their_defaults():
    app, calls = toy_app()
    rc = run_app(app, ["src", "--workers", "5", "--no-colour", "--tag", "x", "--tag", "y", "--json"])
    assert rc == 7
    source, cfg, as_json = calls[0]
    assert (source, as_json) == ("src", True)
    assert (cfg.workers, cfg.colour, cfg.tags, cfg.fast, cfg.out) == (5, False, ["x", "y"], False, None)


def test_options_not_given_keep_the_settings_defaults():
    app, calls = toy_app()
    assert run_app(app, ["src"]) == 7
    assert calls[0][1] == ToySettings()


def test_env_vars_are_read_and_flags_win(monkeypatch):
    monkeypatch.setenv("TOY_WORKERS", "3")
    monkeypatch.setenv("TOY_OUT", "o.txt")
    app, calls = toy_app()
    run_app(app, ["src", "--workers", "4"])
    assert (calls[0][1].workers, calls[0][1].out) == (4, Path("o.txt"))


def eval_app(**picks) -> typer.Typer:
    @settings_command(EvalSettings, **picks)
    def evaluate(cfg: EvalSettings) -> int:
        return cfg.beam

    app = typer.Typer(add_completion=False)
    app.command()(evaluate)
    return app


def test_a_bad_value_is_the_settings_one_line_error(capsys):
    assert run_app(eval_app(), ["--beam", "0"]) == 1
    assert (
        capsys.readouterr().err
        == "streamcap: error: --beam / STREAMCAP_EVAL_BEAM: expected a number from 1 to 64, got 0\n"
    )


def test_only_and_exclude_pick_fields_in_declaration_order_common_last():
    app = eval_app(only=("beam", "data", *COMMON_FIELDS), exclude=("shard_dir",))
    names = [p.name for p in typer.main.get_command(app).params]
    assert names == ["data", "beam", "redis_url", "namespace", "log_level"]


def test_read_as_changes_the_type_an_option_parses(capsys):
    assert run_app(eval_app(), ["--beam", "many"]) == 1
    assert "Invalid value for '--beam'" in capsys.readouterr().err
    as_text = eval_app(read_as={"beam": str})  # the text reaches the settings' own check
    assert run_app(as_text, ["--beam", "many"]) == 1
    assert capsys.readouterr().err.endswith(
        "--beam / STREAMCAP_EVAL_BEAM: expected a number from 1 to 64, got 'many'\n"
    )


@pytest.mark.parametrize("picks", [{"only": ("nope",)}, {"exclude": ("nope",)}])
def test_an_unknown_field_name_fails_at_import(picks):
    with pytest.raises(TypeError, match="nope"):
        toy_app(**picks)


def test_a_command_without_a_settings_parameter_or_with_a_clashing_one_fails_at_import():
    with pytest.raises(TypeError, match="no parameter annotated ToySettings"):
        settings_command(ToySettings)(lambda workers: 0)

    def clash(workers: int, cfg: ToySettings) -> int:
        return 0

    with pytest.raises(TypeError, match="workers"):
        settings_command(ToySettings)(clash)


def test_service_commands_offer_every_setting_but_the_ones_they_leave_out():
    from streamcap.downloader.cli import download_command
    from streamcap.downloader.config import DownloaderSettings
    from streamcap.trainer.cli import train_command
    from streamcap.trainer.config import TrainerSettings

    for command, cls, left_out in [
        (train_command, TrainerSettings, set()),
        (download_command, DownloaderSettings, {"min_reads", "quarantine_dir", "temp_stale_seconds"}),
    ]:
        app = typer.Typer(add_completion=False)
        app.command()(command)
        names = {p.name for p in typer.main.get_command(app).params}
        assert names == {f.name for f in dataclasses.fields(cls)} - left_out
