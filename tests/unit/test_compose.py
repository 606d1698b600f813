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

from tests.support import timing

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_BOX = ROOT / "docker-compose.download-box.yml"
SHARED_SCHEMA = ROOT.parent / "shared" / "compose-spec.json"
BIN = Path(sys.executable).parent


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags: `!reset` drops a value, `!override` replaces it."""


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_mapping(node, deep=True))


class Reset:
    pass


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return yaml.load(COMPOSE_CPU.read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose_box() -> dict:
    return yaml.safe_load(COMPOSE_BOX.read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_BOX], ids=lambda p: p.name)
def test_compose_validates_against_the_compose_specification(path):
    # check-jsonschema's built-in copy works offline; ../shared/ holds the project's own copy
    # beside a checkout (not in every clone), and the file must satisfy both.
    schemas = [["--builtin-schema", "vendor.compose-spec"]]
    if SHARED_SCHEMA.exists():
        schemas.append(["--schemafile", str(SHARED_SCHEMA)])
    for schema in schemas:
        out = subprocess.run(
            [str(BIN / "check-jsonschema"), *schema, str(path)],
            capture_output=True,
            text=True,
            timeout=timing.scaled(60),
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_redis_publishes_no_port_and_keeps_an_aof(compose):
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    assert "--appendonly yes" in " ".join(redis["command"])
    assert "requirepass" in " ".join(redis["command"])
    assert redis["healthcheck"]["test"]
    # redis-server first: the image's entrypoint then drops root (`sh -c ...` would bypass it).
    assert redis["command"][0] == "redis-server"


def test_the_redis_password_travels_on_its_own_never_in_a_url(compose):
    env = compose["x-redis-env"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD")


def test_every_streamcap_service_reads_the_env_file(compose):
    for name, service in compose["services"].items():
        if name != "redis":
            assert service.get("env_file") == [{"path": "${STREAMCAP_ENV_FILE:-.env}", "required": False}], name


def test_the_trainer_stays_down_once_done_and_wandb_defaults_to_auto(compose):
    trainer = compose["services"]["trainer"]
    assert trainer["restart"] == "on-failure:5"  # bounded: a run that stopped itself is not retried forever
    assert trainer["environment"]["STREAMCAP_CHECKPOINT_DIR"] == "/data/checkpoints"  # the trainer adds <run>/
    for name in ("trainer", "evaluator"):
        assert compose["services"][name]["environment"]["STREAMCAP_WANDB_MODE"] == "${WANDB_MODE:-auto}"


def test_downloaders_can_read_the_source(compose):
    assert "${SOURCE_DIR:-./data}:/data/source:ro" in compose["services"]["downloader"]["volumes"]


def test_the_cpu_variant_reserves_no_gpu_and_runs_on_cpu(compose, compose_cpu):
    gpu_services = {
        name for name, s in compose["services"].items() if "nvidia" in str(s.get("deploy", {}).get("resources", {}))
    }
    assert gpu_services == {"trainer", "evaluator"}
    for name in gpu_services:
        assert isinstance(compose_cpu["services"][name]["deploy"], Reset), name
    assert compose_cpu["services"]["trainer"]["environment"]["STREAMCAP_TRAIN_DEVICE"] == "cpu"
    assert compose_cpu["services"]["evaluator"]["environment"]["STREAMCAP_EVAL_DEVICE"] == "cpu"
    assert set(compose_cpu["services"]) <= set(compose["services"])


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
    assert trainer["command"][:6] == [
        "python",
        "-m",
        "streamcap.trainer.launch",
        "--standalone",
        "--nproc-per-node",
        "${GPUS:-4}",
    ]


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
    text = COMPOSE.read_text() + COMPOSE_CPU.read_text() + COMPOSE_BOX.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert used, "no variables found: the pattern is wrong"
    assert sorted(used - documented) == []


# --- every command a service runs exists, with its flags and environment variables ---------


def command_tree():
    from streamcap.cli import app as streamcap_app
    from streamcap.eval.cli import eval_app
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
        return [("-m streamcap.trainer", words[words.index("-m") + 2 :])]
    if words[:3] == ["python", "-m", "streamcap.trainer.launch"]:
        from streamcap.trainer.launch import split_args

        return [("-m streamcap.trainer", split_args(words[3:])[1])]
    return []


def resolve(root, args: list[str]):
    command, rest = root, list(args)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_every_service_command_exists_with_its_flags_and_env_vars(compose, compose_box):
    tree = command_tree()
    checked = 0
    services = {**compose["services"], **{f"download-box {n}": s for n, s in compose_box["services"].items()}}
    for name, service in services.items():
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
    assert checked >= 7


def test_a_download_box_reaches_the_rigs_redis_over_tls_and_writes_to_the_bucket(compose_box):
    services = compose_box["services"]
    assert set(services) == {"downloader", "gc"} and "redis" not in services  # Redis is the rig's
    env = compose_box["x-box-env"]
    url = env["REDIS_URL"]
    assert url.startswith("rediss://${REDIS_HOST:?") and "@" not in url  # TLS; the password on its own
    for option in ("ssl_ca_certs=/certs/", "ssl_certfile=/certs/", "ssl_keyfile=/certs/"):
        assert option in url
    assert env["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert env["STREAMCAP_SHARD_DIR"].startswith("${SHARD_BUCKET:?")
    for name, service in services.items():
        volumes = service["volumes"]
        assert any(v.endswith(":/certs:ro") for v in volumes), (name, volumes)
        assert not any("/data/shards" in v for v in volumes), name  # the bucket is the meeting point
    assert services["downloader"]["environment"]["STREAMCAP_SPOOL_DIR"] == "/data/spool"
    assert services["gc"]["profiles"] == ["gc"]  # one box runs it (COMPOSE_PROFILES=gc)


def test_dockerfiles_pass_hadolint():
    out = subprocess.run(
        [str(BIN / "hadolint"), "-t", "warning", "Dockerfile.downloader", "Dockerfile.trainer"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timing.scaled(60),
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_downloader_image_installs_no_torch():
    dockerfile = (ROOT / "Dockerfile.downloader").read_text()
    install_lines = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert install_lines and not any("[train]" in line or "torch" in line for line in install_lines)
    assert "USER 1000" in dockerfile and "USER 1000" in (ROOT / "Dockerfile.trainer").read_text()
