"""The dependency direction of docs/architecture.md, read from the source with `ast`.

Components are folders. The core (`streamcap/`) is a stack of sub-packages, each of which may
import only those below it; its top-level modules (`cli.py`, `entrypoint.py`, `settings_doc.py`)
stand on top of the stack. The four services (`downloader/`, `shardwriter/`, `trainer/`, `eval/`)
and the demo application (`demo/`) install under `streamcap.` and import the core.

Every import counts: at module level, inside a function (a lazy import is still a dependency),
and a module named by string to `importlib.import_module` ("streamcap.trainer.config").
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("downloader", "shardwriter", "trainer", "eval")
APPLICATIONS = ("demo",)
FOLDERS = ("streamcap", *SERVICES, *APPLICATIONS)
# The core's order, bottom first: a sub-package may import itself and the ones before it.
CORE_LAYERS = ("common", "formats", "bus", "text", "model", "ops")
CORE = tuple(f"streamcap.{layer}" for layer in CORE_LAYERS) + ("streamcap",)
ALLOWED = {
    **{f"streamcap.{layer}": set(CORE[:i]) for i, layer in enumerate(CORE_LAYERS)},
    "streamcap": set(CORE),  # the top-level modules: entrypoint, __init__, __main__
    "downloader": {*CORE, "shardwriter"},
    "shardwriter": set(CORE),
    "trainer": set(CORE),
    "eval": set(CORE),
    "demo": {*CORE, "shardwriter"},  # synthetic parts go through the real writer and commit
}
# The composition roots may reach into every service and application: they wire them together.
COMPOSITION_ROOTS = {"streamcap/cli.py", "streamcap/settings_doc.py"}
HEAVY = ("torch", "torchvision", "albumentations", "wandb")
# Where torch may be imported: the model room of the core, and the services that train and score.
TORCH_ALLOWED = ("streamcap/model/", "trainer/", "eval/")
_MODULE_NAME = re.compile(r"streamcap(\.[a-z_]+)+")


def is_module(root: Path, name: str) -> bool:
    """Does a string name a module of this tree? ('streamcap.checkpoint' is a file format's name.)"""
    parts = name.split(".")
    folder = root / parts[1] if parts[1] in SERVICES + APPLICATIONS else root / "streamcap" / parts[1]
    path = folder.joinpath(*parts[2:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, including modules named to import_module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from streamcap import bus` imports the sub-package streamcap.bus
            if node.module == "streamcap":
                found += [(node.lineno, f"streamcap.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            if is_module(root, node.value):
                found.append((node.lineno, node.value))
    return found


def component_of(module: str) -> str | None:
    """'streamcap.trainer.x' -> 'trainer', 'streamcap.bus.schema' -> 'streamcap.bus',
    'streamcap.entrypoint' -> 'streamcap'; modules of other packages -> None.

    A bare top-level service name ('trainer.x') resolves only from a repository checkout, never
    from an installed wheel: it is reported as its own component, '<top-level trainer>'.
    """
    parts = module.split(".")
    if parts[0] in SERVICES + APPLICATIONS:
        return f"<top-level {parts[0]}>"
    if parts[0] != "streamcap":
        return None
    if len(parts) == 1:
        return None  # the root package itself: its __init__ holds only the version
    if parts[1] in SERVICES + APPLICATIONS:
        return parts[1]
    return f"streamcap.{parts[1]}" if parts[1] in CORE_LAYERS else "streamcap"


def component_of_file(rel: str) -> str:
    """'streamcap/bus/schema.py' -> 'streamcap.bus'; 'streamcap/cli.py' -> 'streamcap'; 'trainer/x.py' -> 'trainer'."""
    parts = rel.split("/")
    if parts[0] != "streamcap":
        return parts[0]
    if len(parts) > 2:
        if parts[1] not in CORE_LAYERS:
            raise AssertionError(f"{rel}: core sub-package {parts[1]!r} has no place in CORE_LAYERS")
        return f"streamcap.{parts[1]}"
    return "streamcap"


def python_files(root: Path):
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            yield folder, path, path.relative_to(root).as_posix()


def describe(allowed: set[str]) -> str:
    """{'streamcap.common', 'streamcap.formats'} -> 'common, formats'; the whole core -> 'the core'."""
    if not allowed:
        return "nothing of streamcap"
    rest = sorted(allowed - set(CORE)) if set(CORE) <= allowed else sorted(allowed)
    names = [name.removeprefix("streamcap.") for name in rest]
    return ", ".join((["the core"] if set(CORE) <= allowed else []) + names)


def forbidden_edges(root: Path = ROOT) -> list[str]:
    bad = []
    for _, path, rel in python_files(root):
        if rel in COMPOSITION_ROOTS:
            continue
        component = component_of_file(rel)
        for lineno, module in imported_modules(path, root):
            target = component_of(module)
            if target is not None and target != component and target not in ALLOWED[component]:
                bad.append(f"{rel}:{lineno} imports {module} ({component} may import {describe(ALLOWED[component])})")
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


def plant(root: Path, files: dict[str, str]) -> None:
    for folder in FOLDERS:
        (root / folder).mkdir(exist_ok=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_sees_a_back_arrow_inside_the_core(tmp_path):
    # The checker itself must be able to fail: each of these goes against the core's order.
    plant(
        tmp_path,
        {
            "streamcap/bus/__init__.py": "",
            "streamcap/ops/__init__.py": "",
            "streamcap/common/settings.py": "def keys():\n    from streamcap.bus import Keys\n",
            "streamcap/text/vocab.py": "from streamcap.model.config import PRESETS\n",
            "streamcap/bus/status.py": "from streamcap import ops\n",
            "streamcap/formats/names.py": "import importlib\nimportlib.import_module('streamcap.bus')\n",
            "streamcap/entrypoint.py": "from streamcap.demo import run\n",
        },
    )
    assert sorted(forbidden_edges(tmp_path)) == [
        "streamcap/bus/status.py:1 imports streamcap.ops (streamcap.bus may import common, formats)",
        "streamcap/common/settings.py:2 imports streamcap.bus (streamcap.common may import nothing of streamcap)",
        "streamcap/entrypoint.py:1 imports streamcap.demo (streamcap may import the core)",
        "streamcap/formats/names.py:2 imports streamcap.bus (streamcap.formats may import common)",
        "streamcap/text/vocab.py:1 imports streamcap.model.config (streamcap.text may import bus, common, formats)",
    ]


def test_checker_sees_a_forbidden_edge_between_services(tmp_path):
    # A trainer -> downloader import, a service reaching into the demo, and a bare top-level
    # import that only works from a checkout.
    plant(
        tmp_path,
        {
            "trainer/bad.py": "from streamcap.downloader.fetch import x\n",
            "shardwriter/fixtures.py": "from streamcap.demo.world import Scene\n",
            "eval/bare.py": "import trainer.stream\n",
            "streamcap/cli.py": "from streamcap.downloader import cli\n",  # a composition root may
        },
    )
    assert sorted(forbidden_edges(tmp_path)) == [
        "eval/bare.py:1 imports trainer.stream (eval may import the core)",
        "shardwriter/fixtures.py:1 imports streamcap.demo.world (shardwriter may import the core)",
        "trainer/bad.py:1 imports streamcap.downloader.fetch (trainer may import the core)",
    ]


def test_every_core_sub_package_has_a_place_in_the_order():
    found = {p.parent.name for p in (ROOT / "streamcap").glob("*/__init__.py")}
    assert found == set(CORE_LAYERS)


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
