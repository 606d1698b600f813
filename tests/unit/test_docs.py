"""The docs stay true to the repository: the settings reference is generated from the code, every
link and file reference points at a file that exists, and the README shows how to run the tests."""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import pytest

from streamcap import settings_doc
from streamcap.common.settings import all_settings_classes, all_settings_fields

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders whose text may cite a doc: the code, the tests and the benchmarks.
CODE_FOLDERS = ("streamcap", "downloader", "shardwriter", "trainer", "eval", "tests", "benchmarks")
OLD_BRIEF = "ARCHITECTURE" + ".md"  # the design brief that never was in the repository
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def test_settings_reference_is_up_to_date():
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == settings_doc.render(), "docs/settings.md is stale: run `make docs`"


def test_a_changed_help_text_makes_the_settings_reference_stale(monkeypatch):
    from streamcap.trainer.config import TrainerSettings

    committed = (ROOT / "docs" / "settings.md").read_text()
    field = next(f for f in dataclasses.fields(TrainerSettings) if f.name == "lr")
    changed = dict(field.metadata, help="A help text nobody wrote.")
    monkeypatch.setattr(field, "metadata", types.MappingProxyType(changed))
    rendered = settings_doc.render()
    assert rendered != committed
    assert "| `--lr` | `STREAMCAP_LR` | `0.0001` | A help text nobody wrote. |" in rendered


def test_settings_reference_lists_every_setting_of_every_settings_class():
    rendered = settings_doc.render()  # imports every settings module first
    for cls in all_settings_classes():
        assert cls.__module__ in settings_doc.SETTINGS_MODULES, f"add {cls.__module__} to SETTINGS_MODULES"
        for f in all_settings_fields(cls):
            env = f"`{f.metadata['env']}`" if f.metadata["env"] else "—"
            assert f"| `{f.metadata['flag']}` | {env} |" in rendered, f"{cls.__name__}.{f.name}"


def test_defaults_render_without_reprs():
    assert settings_doc._value(None) == "—"
    assert settings_doc._value(True) == "on" and settings_doc._value(False) == "off"
    assert settings_doc._value(Path("a/b")) == "`a/b`"
    assert settings_doc._value(60.0) == "`60`" and settings_doc._value(1e-4) == "`0.0001`"
    assert settings_doc._value({"b", "a"}) == "`a,b`"
    assert settings_doc._value("x|y") == "`x\\|y`"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links {broken}"


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_docs_cited_in_the_code_exist():
    cited = set()
    for folder in CODE_FOLDERS:
        for source in (ROOT / folder).rglob("*.py"):
            text = source.read_text()
            assert OLD_BRIEF not in text, f"{source.relative_to(ROOT)}: cite docs/architecture.md"
            cited |= {(source, name) for name in re.findall(r"\bdocs/([\w.-]+\.md)", text)}
    assert cited, "expected the code to cite docs/ somewhere"
    missing = [f"{s.relative_to(ROOT)}: docs/{n}" for s, n in cited if not (ROOT / "docs" / n).exists()]
    assert missing == []


def test_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
