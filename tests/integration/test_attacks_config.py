"""Bad configuration and bad sources (docs/testing.md, attack 21): one readable line and exit code 1, or
a service that waits for Redis and carries on.

- Every setting of every command, given a wrong value as a flag and as its environment
  variable, stops the command with one line naming that setting (the wrong values are found
  by asking each setting's own check, so a setting added later is covered by itself).
- A source missing a column says which columns it has; an unreadable source says so in one
  line; a source that breaks after it was enqueued costs its parts (dead-lettered with the
  reason), not the service.
- Every service started before its Redis server waits, says why, and carries on when the
  server comes up; the pipeline run ends with the accounting check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer

from streamcap import bus
from streamcap.bus.embedded import EmbeddedRedis, free_port
from streamcap.cli import app
from streamcap.common.settings import CommonSettings, ConfigError
from streamcap.demo.config import DemoSettings
from streamcap.downloader.config import DownloaderSettings, EnqueueSettings
from streamcap.downloader.enqueue import describe_source, enqueue
from streamcap.entrypoint import run_app
from streamcap.eval.config import EvalSettings
from streamcap.shardwriter.audit import audit
from streamcap.shardwriter.config import ShardWriterSettings
from streamcap.text.tokenizer import WordPieceTokenizer
from streamcap.text.vocab import count_words, train_vocab
from streamcap.trainer.config import TrainerSettings
from tests.support import timing
from tests.support.evalsets import karpathy_set
from tests.support.fleet import STREAMCAP, download
from tests.support.http import ImageServer
from tests.support.images import jpeg_bytes
from tests.support.pipeline import CAPTION, enqueue_rows, final_audit, outcomes, unpin_source, wait_until

# Every command of the CLI that builds settings: its settings class and positional arguments.
COMMANDS: dict[tuple[str, ...], tuple[type, list[str]]] = {
    ("enqueue",): (EnqueueSettings, ["urls.parquet"]),
    ("download",): (DownloaderSettings, []),
    ("shards", "ls"): (ShardWriterSettings, []),
    ("shards", "verify"): (ShardWriterSettings, []),
    ("shards", "gc"): (ShardWriterSettings, []),
    ("shards", "reconcile"): (ShardWriterSettings, []),
    ("parts", "retry"): (ShardWriterSettings, []),
    ("audit",): (ShardWriterSettings, []),
    ("train",): (TrainerSettings, []),
    ("eval", "run"): (EvalSettings, ["step-000100.pt"]),
    ("eval", "watch"): (EvalSettings, []),
    ("eval", "score"): (EvalSettings, ["predictions.json", "references.json"]),
    ("status",): (CommonSettings, []),
    ("hosts",): (ShardWriterSettings, []),
    ("demo",): (DemoSettings, []),
}
# Commands whose options are their own (checked by typer), not settings.
WITHOUT_SETTINGS = {("redis",), ("caption",), ("tokenizer", "build"), ("tokenizer", "encode")}
# Wrong values tried in turn; the first one a setting's own check refuses is used.
CANDIDATES = (
    "0",
    "-1",
    "-0.5",
    "0.5",
    "101",
    "1000000",
    "lots",
    "has space",
    "",
    "/no/such/vocab.txt",
    __file__,
)  # an existing file where a directory belongs


def leaf_commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


ROOT = typer.main.get_command(app)
LEAVES = dict(leaf_commands(ROOT))


@pytest.fixture(autouse=True)
def built_once(monkeypatch):
    """run_app builds the click command tree from the typer app on every call (~40 ms); here
    the same tree serves every call, so hundreds of runs take seconds."""
    monkeypatch.setattr(typer.main, "get_command", lambda _app: ROOT)


def parsed(field: dataclasses.Field, text: str):
    """`text` as the field's type, as the CLI hands it over; ValueError when it is not one."""
    kind = str(field.type)
    return int(text) if "int" in kind else float(text) if "float" in kind else Path(text) if "Path" in kind else text


def numeric(field: dataclasses.Field) -> bool:
    return "int" in str(field.type) or "float" in str(field.type)


def wrong_value(cls: type, field: dataclasses.Field) -> str | None:
    """The first candidate that the setting's check (or the class's cross-field check) refuses."""
    for text in CANDIDATES:
        try:
            value = parsed(field, text)
        except ValueError:  # not even of the right type: tested on its own below
            continue
        try:
            cls(**{field.name: value})
        except ConfigError as e:
            if str(e).startswith(field.metadata["flag"] + " "):
                return text
    return None


def settings_options(path: tuple[str, ...]) -> list[dataclasses.Field]:
    """The settings fields a command has an option for (on/off switches left out)."""
    cls, _ = COMMANDS[path]
    by_flag = {f.metadata["flag"]: f for f in dataclasses.fields(cls) if "flag" in f.metadata}
    return [
        by_flag[p.opts[0]]
        for p in LEAVES[path].params
        if getattr(p, "opts", None) and p.opts[0] in by_flag and not getattr(p, "is_flag", False)
    ]


def one_line_naming(capsys, argv: list[str], flag: str) -> str | None:
    """None when `streamcap ARGV` failed with exit code 1 and one line naming `flag`; else what it did."""
    capsys.readouterr()
    rc = run_app(app, argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    if (
        rc == 1
        and len(lines) == 1
        and lines[0].startswith("streamcap: error: ")
        and flag in lines[0]
        and not out.out
        and "Traceback" not in out.err
    ):
        return None
    return f"{' '.join(argv)!r}: exit {rc}, stdout {out.out!r}, stderr {out.err!r}"


def test_every_command_that_builds_settings_is_covered():
    assert set(LEAVES) == set(COMMANDS) | WITHOUT_SETTINGS


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_each_wrong_setting_is_one_line_naming_it_and_exit_code_1(path, capsys, monkeypatch):
    cls, positional = COMMANDS[path]
    failures, tried = [], 0
    for field in settings_options(path):
        flag, env = field.metadata["flag"], field.metadata.get("env")
        text = wrong_value(cls, field)
        if text is None:
            if field.metadata.get("check"):
                failures.append(f"{flag}: no wrong value among {CANDIDATES} (extend them)")
            continue
        tried += 1
        failures.append(one_line_naming(capsys, [*path, *positional, f"{flag}={text}"], flag))
        if env and text:
            monkeypatch.setenv(env, text)
            failures.append(one_line_naming(capsys, [*path, *positional], flag))
            monkeypatch.delenv(env)
        if numeric(field):
            failures.append(one_line_naming(capsys, [*path, *positional, f"{flag}=twelve"], flag))
    assert tried >= 1 and [f for f in failures if f] == []


def test_settings_checked_against_each_other_name_the_one_at_fault(capsys):
    cases = [
        (
            ["download", "--concurrency", "4", "--per-host", "8"],
            "--per-host / STREAMCAP_PER_HOST: expected at most --concurrency (4), got 8",
        ),
        (["eval", "watch", "--max-tokens", "5", "--min-tokens", "9"], "--min-tokens / STREAMCAP_EVAL_MIN_TOKENS"),
        (["train", "--resume"], "--run-id / STREAMCAP_RUN_ID: expected the id of the run to resume"),
        (["demo", "--steps", "10", "--checkpoints", "20"], "--checkpoints"),
    ]
    for argv, expected in cases:
        assert one_line_naming(capsys, argv, expected) is None


# --- bad sources -----------------------------------------------------------------------------------

NOWHERE = "redis://127.0.0.1:1/0"  # never reached: a bad source is refused before Redis is asked


def test_a_missing_column_lists_the_columns_the_source_has(capsys, tmp_path):
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "title": ["t"]}), tmp_path / "titles.parquet")
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "caption": ["c"]}), tmp_path / "plain.parquet")
    (tmp_path / "links.csv").write_text("link,caption\nhttp://a/1.jpg,a cat\n")
    (tmp_path / "links.jsonl").write_text('{"href": "http://a/1.jpg", "text": "a cat"}\n')
    cases = [
        (
            "titles.parquet",
            [],
            "no caption column: none of llava_caption, cogvlm_caption, alt_txt, caption, text "
            "exists (pass --caption-col); its columns: url, title",
        ),
        (
            "plain.parquet",
            ["--caption-col", "llava_caption"],
            "has no column 'llava_caption' (--caption-col); its columns: url, caption",
        ),
        ("links.csv", [], "has no column 'url' (--url-col); its columns: link, caption"),
        ("links.jsonl", [], "has no column 'url' (--url-col); its columns: href, text"),
    ]
    for name, args, expected in cases:
        assert (
            one_line_naming(capsys, ["enqueue", str(tmp_path / name), *args, "--redis-url", NOWHERE], expected) is None
        )


def test_an_unreadable_source_is_one_line_saying_why(capsys, tmp_path):
    table = pa.table({"url": [f"http://a/{i}.jpg" for i in range(500)], "caption": ["a cat"] * 500})
    pq.write_table(table, tmp_path / "good.parquet")
    whole = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "half.parquet").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "mixed").mkdir()
    pq.write_table(table, tmp_path / "mixed" / "a.parquet")
    (tmp_path / "mixed" / "b.parquet").write_bytes(b"PAR1 garbage PAR1")
    (tmp_path / "nothing").mkdir()
    # Binary from its first byte (a value that is not UTF-8 below a readable header costs its row only).
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x01,\x80\x81\nurl,caption\n")
    pq.write_table(table.slice(0, 0), tmp_path / "no-rows.parquet")
    cases = {
        "half.parquet": "half.parquet: not a readable parquet file (",
        "empty.parquet": "empty.parquet: not a readable parquet file (",
        "mixed": "b.parquet: not a readable parquet file (",
        "nothing": "nothing: directory has no .csv, .jsonl, .ndjson, .parquet, .tsv files",
        "binary.csv": "binary.csv: not a readable csv file (",
        "no-rows.parquet": "no-rows.parquet: the source has no rows",
        "missing.parquet": "missing.parquet: no such file or directory",
    }
    for name, expected in cases.items():
        assert one_line_naming(capsys, ["enqueue", str(tmp_path / name), "--redis-url", NOWHERE], expected) is None


def test_a_source_that_breaks_after_enqueue_costs_its_parts_not_the_service(r, keys, redis_url, tmp_path):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, [f"http://127.0.0.1:1/{i}.jpg" for i in range(6)], part_size=3)
    unpin_source(r, keys, "src")  # read as it is once cut, not waited for (test_user_mistakes)
    source = tmp_path / "src.parquet"
    source.write_bytes(source.read_bytes()[:200])  # cut after it was enqueued
    ran = download(
        redis_url,
        keys,
        shard_dir,
        tmp_path / "download.log",
        "--allow-private",
        "--max-deliveries",
        "1",
        "--lease-seconds",
        "1",
    )
    assert ran.returncode == 0, ran.log
    dead = [bus.decode(fields) for _, fields in r.xrange(keys.parts_dead)]
    assert sorted(d["part"] for d in dead) == [0, 1]
    assert all("not a readable parquet file" in d["error"] and "\n" not in d["error"] for d in dead)
    report = audit(r, keys, shard_dir, expect_done=True)
    assert report.ok and (report.lost, report.duplicates, report.dead_rows, report.parts["dead"]) == (0, 0, 6, 2)


def test_malformed_rows_of_a_source_are_row_failures_not_part_failures(r, keys, redis_url, tmp_path):
    with ImageServer() as server:
        server.images["a.jpg"] = jpeg_bytes()
        good = json.dumps({"url": server.url("/img/a.jpg"), "caption": CAPTION})
        lines = [
            good,
            "{not json",
            "[1, 2, 3]",
            '{"caption": "no url"}',
            json.dumps({"url": 12345, "caption": "x"}),
            json.dumps({"url": server.url("/img/a.jpg"), "caption": None}),
            good,
        ]
        shard_dir = tmp_path / "shards"
        (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
        record, _ = describe_source(EnqueueSettings(part_size=4), str(tmp_path / "rows.jsonl"))
        assert enqueue(r, keys, shard_dir, record).added
        ran = download(redis_url, keys, shard_dir, tmp_path / "download.log", "--allow-private")
        assert ran.returncode == 0, ran.log
    assert [outcomes(shard_dir)[i][0] for i in range(len(lines))] == [
        "sample",
        "invalid_url",
        "invalid_url",
        "invalid_url",
        "invalid_url",
        "empty_caption",
        "sample",
    ]
    assert final_audit(r, keys, shard_dir).parts["done"] == 2


# --- Redis unreachable at start --------------------------------------------------------------------


@contextlib.contextmanager
def started(tmp_path: Path):
    """Start processes (`start(name, argv)`), each logging to <name>.log; all killed at the end."""
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        with open(tmp_path / f"{name}.log", "wb") as log:
            procs[name] = subprocess.Popen([*STREAMCAP, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
        return procs[name]

    try:
        yield start
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            timing.wait(proc, 10)


def log_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text(errors="replace")


def test_services_started_before_redis_wait_for_it_then_carry_on(keys, tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    shard_dir = tmp_path / "shards"
    tokenizer = WordPieceTokenizer.from_vocab(train_vocab(count_words([CAPTION]), 60, min_frequency=1))
    tokenizer.save(tmp_path / "vocab.txt")
    common = ["--redis-url", url, "--namespace", keys.namespace]
    with ImageServer() as server, started(tmp_path) as start:
        server.images["a.jpg"] = jpeg_bytes(96, 96)
        pq.write_table(
            pa.table({"url": [server.url(f"/img/a.jpg?i={i}") for i in range(8)], "caption": [CAPTION] * 8}),
            tmp_path / "late.parquet",
        )
        procs = {
            "enqueue": start(
                "enqueue",
                ["enqueue", str(tmp_path / "late.parquet"), "--part-size", "4", *common, "--shard-dir", str(shard_dir)],
            ),
            "download": start(
                "download",
                [
                    "download",
                    "--allow-private",
                    "--image-workers",
                    "1",
                    *common,
                    "--shard-dir",
                    str(shard_dir),
                    "--grace-seconds",
                    "5",
                ],
            ),
            "train": start(
                "train",
                [
                    "train",
                    *common,
                    "--shard-dir",
                    str(shard_dir),
                    "--run-id",
                    "late",
                    "--checkpoint-dir",
                    str(tmp_path / "ck"),
                    "--tokenizer",
                    str(tmp_path / "vocab.txt"),
                    "--preset",
                    "tiny",
                    "--image-size",
                    "32",
                    "--max-steps",
                    "2",
                    "--batch-size",
                    "2",
                    "--loader-workers",
                    "0",
                    "--device",
                    "cpu",
                    "--shuffle-buffer",
                    "4",
                    "--fresh-wait-ms",
                    "200",
                    "--sample-every",
                    "0",
                    "--histogram-every",
                    "0",
                    "--warmup-steps",
                    "1",
                ],
            ),
            "eval": start(
                "eval",
                [
                    "eval",
                    "watch",
                    "--exit-when-empty",
                    "--redis-url",
                    url,
                    "--namespace",
                    keys.namespace + "-eval",
                    "--data",
                    str(karpathy_set(tmp_path / "flickr")),
                    "--images",
                    str(tmp_path / "flickr" / "images"),
                    "--device",
                    "cpu",
                    "--out-dir",
                    str(tmp_path / "evals"),
                ],
            ),
        }
        waiting = f"cannot reach Redis at 127.0.0.1:{port}"
        # Each says why it waits (after its client's own ~10 s of retries) and keeps waiting.
        for name in procs:
            wait_until(
                lambda name=name: waiting in log_of(tmp_path, name) and "retrying" in log_of(tmp_path, name),
                60,
                f"{name} to report the unreachable Redis",
            )
        assert all(proc.poll() is None for proc in procs.values()), {n: log_of(tmp_path, n) for n in procs}
        with EmbeddedRedis(data_dir=tmp_path / "redis", port=port) as late:
            r = bus.connect(late.url)
            assert timing.wait(procs["enqueue"], 60) == 0, log_of(tmp_path, 60, "enqueue")
            assert "enqueued source late: 8 rows in 2 parts" in log_of(tmp_path, "enqueue")
            wait_until(lambda: r.scard(keys.parts_done) == 2, 60, "the downloader to commit both parts")
            procs["download"].send_signal(signal.SIGTERM)  # a service: stopped once its work is done
            assert timing.wait(procs["download"], 30) == 0, log_of(tmp_path, "download")
            assert timing.wait(procs["train"], 120) == 0, log_of(tmp_path, "train")
            assert timing.wait(procs["eval"], 60) == 0, log_of(tmp_path, "eval")
            assert "step-00000002" in " ".join(p.name for p in (tmp_path / "ck" / "late").iterdir())
            report = final_audit(r, keys, shard_dir)
            assert report.samples == 8
            r.close()
