"""The dependency direction of ARCHITECTURE.md, read from the source with `ast`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streamcap", "downloader", "shardwriter", "trainer", "eval")
ALLOWED = {
    "streamcap": set(),
    "downloader": {"streamcap", "shardwriter"},
    "shardwriter": {"streamcap"},
    "trainer": {"streamcap"},
    "eval": {"streamcap"},
}
# The root CLI is the composition root: it alone may reach into the services.
COMPOSITION_ROOT = {"streamcap/cli.py"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def forbidden_edges() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in COMPOSITION_ROOT:
                continue
            for lineno, module in imported_modules(path):
                target = module.split(".")[0]
                if target in PACKAGES and target != package and target not in ALLOWED[package]:
                    bad.append(f"{rel}:{lineno} imports {module} ({package} may import {sorted(ALLOWED[package])})")
    return bad


def test_no_forbidden_import_edges():
    assert forbidden_edges() == []


def test_checker_sees_a_forbidden_edge(tmp_path, monkeypatch):
    # The checker itself must be able to fail: plant a trainer -> downloader import.
    fake_root = tmp_path
    for package in PACKAGES:
        (fake_root / package).mkdir()
    (fake_root / "trainer" / "bad.py").write_text("from downloader.fetch import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert forbidden_edges() == ["trainer/bad.py:1 imports downloader.fetch (trainer may import ['streamcap'])"]


def test_import_streamcap_and_cli_load_no_torch():
    code = (
        "import sys, streamcap, streamcap.cli, streamcap.bus, streamcap.settings\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'albumentations', 'wandb') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_help_loads_no_torch():
    code = (
        "import sys\nfrom streamcap.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('TORCH' if 'torch' in sys.modules else 'CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stderr.strip().endswith("CLEAN"), out.stderr[-2000:]
