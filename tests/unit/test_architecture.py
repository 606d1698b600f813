"""The dependency direction of docs/architecture.md, read from the source with `ast`.

Components are folders: the core (`streamcap/`, minus the services mapped into its namespace)
and the four services (`downloader/`, `shardwriter/`, `trainer/`, `eval/`), which install as
`streamcap.downloader`, `streamcap.shardwriter`, `streamcap.trainer` and `streamcap.eval`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("downloader", "shardwriter", "trainer", "eval")
FOLDERS = ("streamcap", *SERVICES)  # folder -> component: "streamcap" is the core
ALLOWED = {
    "streamcap": set(),
    "downloader": {"streamcap", "shardwriter"},
    "shardwriter": {"streamcap"},
    "trainer": {"streamcap"},
    "eval": {"streamcap"},
}
# The root CLI is the composition root: it alone may reach into the services.
COMPOSITION_ROOT = {"streamcap/cli.py"}
HEAVY = ("torch", "torchvision", "albumentations", "wandb")
# Where torch may be imported: the model room of the core, and the services that train and score.
TORCH_ALLOWED = ("streamcap/model/", "trainer/", "eval/")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def component_of(module: str) -> str | None:
    """'streamcap.trainer.x' -> 'trainer', 'streamcap.bus' -> 'streamcap'; other modules -> None.

    A bare top-level service name ('trainer.x') resolves only from a repository checkout, never
    from an installed wheel: it is reported as its own component, '<top-level trainer>'.
    """
    parts = module.split(".")
    if parts[0] in SERVICES:
        return f"<top-level {parts[0]}>"
    if parts[0] != "streamcap":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in SERVICES else "streamcap"


def python_files(root: Path):
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            yield folder, path, path.relative_to(root).as_posix()


def forbidden_edges(root: Path = ROOT) -> list[str]:
    bad = []
    for component, path, rel in python_files(root):
        if rel in COMPOSITION_ROOT:
            continue
        for lineno, module in imported_modules(path):
            target = component_of(module)
            if target is not None and target != component and target not in ALLOWED[component]:
                bad.append(f"{rel}:{lineno} imports {module} ({component} may import {sorted(ALLOWED[component])})")
    return bad


def torch_outside_its_rooms(root: Path = ROOT) -> list[str]:
    bad = []
    for _, path, rel in python_files(root):
        if rel.startswith(TORCH_ALLOWED):
            continue
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in HEAVY:
                bad.append(f"{rel}:{lineno} imports {module}")
    return bad


def test_no_forbidden_import_edges():
    assert forbidden_edges() == []


def test_checker_sees_a_forbidden_edge(tmp_path):
    # The checker itself must be able to fail: plant a trainer -> downloader import, and a
    # bare top-level import that only works from a checkout.
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "trainer" / "bad.py").write_text("from streamcap.downloader.fetch import x\n")
    (tmp_path / "eval" / "bare.py").write_text("import trainer.stream\n")
    assert forbidden_edges(tmp_path) == [
        "trainer/bad.py:1 imports streamcap.downloader.fetch (trainer may import ['streamcap'])",
        "eval/bare.py:1 imports trainer.stream (eval may import ['streamcap'])",
    ]


def test_torch_only_in_the_model_room_trainer_and_eval(tmp_path):
    assert torch_outside_its_rooms() == []
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "streamcap" / "text").mkdir()
    (tmp_path / "streamcap" / "text" / "heavy.py").write_text("def f():\n    import torch\n")
    assert torch_outside_its_rooms(tmp_path) == ["streamcap/text/heavy.py:2 imports torch"]


def test_benchmarks_never_import_the_tests():
    bad = [
        f"{p.name}:{line} imports {m}"
        for p in sorted((ROOT / "benchmarks").glob("*.py"))
        for line, m in imported_modules(p)
        if m.split(".")[0] == "tests"
    ]
    assert bad == []


def test_every_package_folder_is_installed():
    """pyproject lists packages by hand (the services are mapped into `streamcap.`): a new
    sub-package missing from the list would be absent from the Docker images."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: name for name, folder in pyproject["package-dir"].items()}
    on_disk = set()
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix().split("/")
            head = mapped.get(rel[0], rel[0])
            on_disk.add(".".join([head, *rel[1:]]))
    assert sorted(pyproject["packages"]) == sorted(on_disk)


def test_import_streamcap_and_cli_load_no_torch():
    code = (
        "import sys, streamcap, streamcap.cli, streamcap.bus, streamcap.common.settings, streamcap.text.vocab,"
        " streamcap.model.config, streamcap.ops.status, streamcap.downloader.service, streamcap.shardwriter.tools\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
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
