"""The deployment files, checked without a Docker engine.

The Compose Specification schema checks the shape; these tests check what the schema cannot:
no published Redis port, shared shard volume, GPUs reserved, every variable documented, every
dependency and every command (with its flags and environment variables) real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SHARED_SCHEMA = ROOT.parent / "shared" / "compose-spec.json"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_validates_against_the_compose_specification():
    # check-jsonschema's built-in copy works offline; ../shared/ holds the project's own copy
    # beside a checkout (not in every clone), and the file must satisfy both.
    schemas = [["--builtin-schema", "vendor.compose-spec"]]
    if SHARED_SCHEMA.exists():
        schemas.append(["--schemafile", str(SHARED_SCHEMA)])
    for schema in schemas:
        out = subprocess.run([str(BIN / "check-jsonschema"), *schema, str(COMPOSE)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_redis_publishes_no_port_and_keeps_an_aof(compose):
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    assert "--appendonly yes" in " ".join(redis["command"])
    assert "requirepass" in " ".join(redis["command"])
    assert redis["healthcheck"]["test"]


def volume_mounts(service: dict) -> dict[str, str]:
    """named volume or host path -> 'target[:mode]'"""
    mounts = {}
    for spec in service.get("volumes", []):
        source, _, rest = spec.partition(":")
        mounts[source] = rest
    return mounts


def test_downloader_and_trainer_share_the_shard_volume_trainer_read_only(compose):
    services = compose["services"]
    downloader, trainer = volume_mounts(services["downloader"]), volume_mounts(services["trainer"])
    assert downloader["shards"] == "/data/shards"
    assert trainer["shards"] == "/data/shards:ro"
    assert {"shards", "checkpoints", "redis-data"} <= set(compose["volumes"])


def test_trainer_reserves_all_gpus_and_shared_memory(compose):
    trainer = compose["services"]["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == "all" and "gpu" in d["capabilities"] for d in devices)
    assert trainer["shm_size"]
    assert trainer["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node", "${GPUS:-4}"]


def test_services_wait_for_a_healthy_redis(compose):
    for name, service in compose["services"].items():
        if name == "redis" or "REDIS_URL" not in service.get("environment", {}):
            continue
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_every_depends_on_target_exists(compose):
    services = compose["services"]
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"


def test_every_variable_is_documented_in_env_example():
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert used, "no variables found: the pattern is wrong"
    assert sorted(used - documented) == []


# --- every command a service runs exists, with its flags and environment variables ---------


def command_tree():
    from streamcap.eval.cli import eval_app
    from streamcap.cli import app as streamcap_app
    from streamcap.trainer.__main__ import main as _trainer_main  # noqa: F401  (the module torchrun runs)
    from streamcap.trainer.cli import train_command

    trainer_app = typer.Typer()
    trainer_app.command()(train_command)
    return {
        "streamcap": typer.main.get_command(streamcap_app),
        "python -m streamcap.eval": typer.main.get_command(eval_app),
        "-m streamcap.trainer": typer.main.get_command(trainer_app),
    }


def invocations(command: list[str] | str) -> list[tuple[str, list[str]]]:
    """(entry point, argument words) of every program run by a service command."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["sh", "-c"]:
        return [inv for part in re.split(r"\|\||&&|;", words[2]) for inv in invocations(part.strip())]
    words = [w for w in words if w != "exec"]
    if not words:
        return []
    if words[0] == "streamcap":
        return [("streamcap", words[1:])]
    if words[:3] == ["python", "-m", "streamcap.eval"]:
        return [("python -m streamcap.eval", words[3:])]
    if words[0] == "torchrun":
        return [("-m streamcap.trainer", words[words.index("-m") + 2:])]
    return []


def resolve(root, args: list[str]):
    command, rest = root, list(args)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_every_service_command_exists_with_its_flags_and_env_vars(compose):
    tree = command_tree()
    checked = 0
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        for entry, args in invocations(service["command"]):
            command, rest = resolve(tree[entry], args)
            assert not hasattr(command, "commands"), f"{name}: `{entry} {' '.join(args)}` names a group, not a command"
            flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
            for word in rest:
                if word.startswith("--"):
                    assert word in flags, f"{name}: `{entry}` has no option {word}"
            envvars = {p.envvar for p in command.params if getattr(p, "envvar", None)}
            for var in service.get("environment", {}):
                if var.startswith("STREAMCAP_") or var == "REDIS_URL":
                    assert var in envvars, f"{name}: `{entry} {' '.join(args)}` reads no {var}"
            checked += 1
    assert checked >= 5


def test_dockerfiles_pass_hadolint():
    out = subprocess.run([str(BIN / "hadolint"), "-t", "warning", "Dockerfile.downloader", "Dockerfile.trainer"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_downloader_image_installs_no_torch():
    dockerfile = (ROOT / "Dockerfile.downloader").read_text()
    install_lines = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert install_lines and not any("[train]" in line or "torch" in line for line in install_lines)
    assert "USER 1000" in dockerfile and "USER 1000" in (ROOT / "Dockerfile.trainer").read_text()
