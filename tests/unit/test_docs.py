"""The README's settings table lists every setting of every service, flag and variable."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from streamcap.common.settings import all_settings_classes, all_settings_fields

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONFIGS = ("streamcap.downloader.config", "streamcap.shardwriter.config", "streamcap.trainer.config", "streamcap.eval.config",
                   "streamcap.demo.config")


def settings_classes() -> list[type]:
    for module in SERVICE_CONFIGS:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return all_settings_classes()


def test_readme_settings_table_is_complete():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for cls in settings_classes():
        for f in all_settings_fields(cls):
            row = f"`{f.metadata['flag']}`"
            if f.metadata["env"]:
                row += f" | `{f.metadata['env']}`"
            if row not in readme:
                missing.append(f"{cls.__name__}.{f.name}: {row}")
    assert missing == [], "README settings table lacks: " + "; ".join(missing)


def test_readme_shows_the_test_command():
    assert "make test" in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
