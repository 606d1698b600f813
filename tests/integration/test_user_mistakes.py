"""A user's mistakes cost them neither money nor data (issue 25): each is refused or reported by
name, as one line, before it costs a download or a sample (docs/operations.md, "Mistakes and
what streamcap says").

Each case runs the real `streamcap` command in a subprocess against a real Redis, a real image
host on 127.0.0.1 and real files, and checks what the user sees and what happened to the data.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamcap import bus
from streamcap.bus.embedded import EmbeddedRedis
from streamcap.downloader.config import DownloaderSettings
from streamcap.downloader.failures import EXIT_GAVE_UP
from streamcap.downloader.fetch import Fetcher
from streamcap.formats.heartbeats import DownloaderHeartbeat
from streamcap.formats.records import FailedRow
from streamcap.ops import status
from streamcap.shardwriter.retry import is_transient
from streamcap.text.captions import MAX_CAPTION_CHARS
from tests.integration.test_orphan_ranks import alive
from tests.integration.test_trainer_runs import make_shards, start, train_args, vocab
from tests.integration.test_user_errors import ENV, assert_one_error_line, streamcap
from tests.support import timing
from tests.support.evalsets import karpathy_set, tiny_checkpoint
from tests.support.fleet import DOWNLOAD_ARGS, STREAMCAP, children, download, heartbeat_records
from tests.support.heartbeats import record
from tests.support.pipeline import enqueue_rows, final_audit, paced_rows, samples_by_row, wait_until, write_parquet


def common(redis_url: str, keys, shard_dir: Path) -> list[str]:
    return ["--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]


# --- 1: namespaces in one folder ------------------------------------------------------------------


def test_two_namespaces_with_default_settings_in_one_folder_never_see_each_others_shards(image_host, tmp_path):
    # The default namespace is a literal ("streamcap"), so it gets a Redis server no other test uses.
    work = tmp_path / "work"
    work.mkdir()
    first = write_parquet(tmp_path / "first.parquet", paced_rows(image_host, 6, failures=False))
    second = write_parquet(tmp_path / "second.parquet", paced_rows(image_host, 4, failures=False))
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
        env |= ENV | {"REDIS_URL": server.url}

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*STREAMCAP, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timing.scaled(120)
            )

        def audit(*args: str) -> dict:
            out = run("audit", "--json", *args)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            return json.loads(out.stdout)

        fetch = ("download", "--exit-when-empty", "--allow-private", *DOWNLOAD_ARGS)
        assert run("enqueue", str(first), "--part-size", "3").returncode == 0
        assert (ran := run(*fetch)).returncode == 0, ran.stderr[-3000:]
        added = run("enqueue", str(second), "--part-size", "2", "--namespace", "exp2")
        assert added.returncode == 0 and "4 rows in 2 parts" in added.stdout, added.stderr

        # Before: the default namespace counted exp2's 4 rows as lost, and reconcile queued exp2's parts.
        assert audit()["lost"] == 0 and audit()["rows_enqueued"] == 6
        assert (fixed := run("shards", "reconcile")).returncode == 0, fixed.stdout + fixed.stderr
        r = bus.connect(server.url)
        default, exp2 = bus.Keys("streamcap"), bus.Keys("exp2")
        assert r.xlen(default.parts) == 2 and r.hkeys(default.sources) == ["first"]

        assert (ran := run(*fetch, "--namespace", "exp2")).returncode == 0, ran.stderr[-3000:]
        assert audit("--namespace", "exp2", "--expect-done")["samples"] == 4
        assert audit("--expect-done")["samples"] == 6
        assert r.xlen(exp2.parts) == 2 and r.hkeys(exp2.sources) == ["second"]
        assert {p.name.split("-")[0] for p in (work / "shards").glob("*.tar")} == {"first"}
        assert {p.name.split("-")[0] for p in (work / "shards-exp2").glob("*.tar")} == {"second"}
        assert (work / "shards" / ".streamcap-namespace").read_text() == "streamcap\n"

        # Pointed at the other's shard dir on purpose: refused by name, nothing adopted.
        for args in (("shards", "reconcile"), ("audit",), ("status",), ("download", "--exit-when-empty")):
            refused = run(*args, "--namespace", "exp2", "--shard-dir", "shards")
            assert_one_error_line(refused, "shards belongs to namespace 'streamcap'", "not to --namespace 'exp2'")
        assert r.xlen(exp2.parts) == 2 and r.hkeys(exp2.sources) == ["second"]
        r.close()


# --- 6: a source changed after enqueue --------------------------------------------------------------


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("url,caption\n" + "".join(f"{u},{c}\n" for u, c in rows))
    return path


ROWS = [(f"http://127.0.0.1/{i}.jpg", f"caption {i}") for i in range(6)]


@pytest.mark.parametrize(
    "change",
    ["edited in place", "reordered re-export"],
)
def test_reenqueueing_a_changed_source_is_refused_by_name(change, redis_url, keys, tmp_path):
    source = _csv(tmp_path / "rows.csv", ROWS)
    args = ["enqueue", str(source), *common(redis_url, keys, tmp_path / "shards"), "--part-size", "2"]
    first = streamcap(*args)
    assert first.returncode == 0 and "enqueued source rows: 6 rows in 3 parts" in first.stdout, first.stderr
    os.utime(source)  # touched, not changed: still the same source
    again = streamcap(*args)
    assert again.returncode == 0 and "already enqueued" in again.stdout, again.stderr
    if change == "edited in place":  # same row count, one caption rewritten
        _csv(source, [*ROWS[:3], (ROWS[3][0], "another caption"), *ROWS[4:]])
    else:
        _csv(source, list(reversed(ROWS)))
    line = assert_one_error_line(streamcap(*args), "source rows changed since it was enqueued", str(source))
    assert "--name" in line


def test_a_downloader_refuses_a_source_changed_under_its_parts_and_loses_no_part(
    r, redis_url, keys, image_host, tmp_path
):
    shard_dir = tmp_path / "shards"
    rows = paced_rows(image_host, 8, failures=False)
    source = enqueue_rows(r, keys, shard_dir, rows, part_size=4)
    original = source.read_bytes()
    write_parquet(source, [(u, "a different caption") for u, _ in rows])  # same rows, new content

    ran = download(
        redis_url, keys, shard_dir, tmp_path / "changed.log", "--allow-private", "--environment-patience", "3"
    )
    assert ran.returncode == EXIT_GAVE_UP, ran.log
    assert f"source changed: source src changed since it was enqueued: {source} changed" in ran.log
    # Failures of the environment: nothing consumed, nothing counted against a part.
    assert r.scard(keys.parts_done) == 0 and r.xlen(keys.parts_dead) == 0 and r.hlen(keys.parts_strikes) == 0
    assert not list(shard_dir.glob("*.tar"))

    source.write_bytes(original)  # restored: its parts download as enqueued
    ran = download(redis_url, keys, shard_dir, tmp_path / "restored.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    report = final_audit(r, keys, shard_dir)
    assert report.samples == 8 and report.parts["dead"] == 0


# --- 7: typed caption columns ----------------------------------------------------------------------


def test_a_binary_caption_column_is_text_and_a_list_column_is_refused_alike(r, redis_url, keys, image_host, tmp_path):
    shard_dir = tmp_path / "shards"
    urls = [u for u, _ in paced_rows(image_host, 2, failures=False)]
    binary = tmp_path / "binary.parquet"
    captions = pa.array([b"a red circle", b"a blue square"], pa.binary())
    pq.write_table(pa.table({"url": urls, "caption": captions}), binary)
    listed = tmp_path / "listed.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [["a", "b"], ["c"]]}), listed)

    added = streamcap("enqueue", str(binary), *common(redis_url, keys, shard_dir))
    assert added.returncode == 0, added.stderr
    ran = download(redis_url, keys, shard_dir, tmp_path / "d.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    samples = samples_by_row(shard_dir)
    assert sorted(s.meta["caption_raw"] for s in samples.values()) == ["a blue square", "a red circle"]
    built = streamcap("tokenizer", "build", str(binary), "--out", str(tmp_path / "v.txt"), "--size", "40", "--json")
    assert built.returncode == 0 and json.loads(built.stdout)["captions"] == 2, built.stderr

    for args in (
        ["enqueue", str(listed), *common(redis_url, keys, shard_dir)],
        ["tokenizer", "build", str(listed), "--out", str(tmp_path / "w.txt")],
    ):
        assert_one_error_line(streamcap(*args), str(listed), "column 'caption' holds list<", "not text")


# --- 11: lines that misled -----------------------------------------------------------------------------


@pytest.mark.parametrize("group", [[], ["shards"], ["tokenizer"]])
def test_a_bare_group_shows_its_help_and_no_empty_error(group):
    out = streamcap(*group)
    assert "Usage: streamcap" in out.stdout + out.stderr and "Commands" in out.stdout + out.stderr
    assert "streamcap: error:" not in out.stderr and "Traceback" not in out.stderr


def test_a_redis_url_option_redis_cannot_read_is_one_line(redis_url, keys, tmp_path):
    url = redis_url + "?socket_timeout=abc"
    assert_one_error_line(streamcap("status", *common(url, keys, tmp_path)), "REDIS_URL", "socket_timeout")


def test_rediss_against_a_plain_server_fails_fast_with_a_tls_hint(redis_server, keys, tmp_path):
    url = redis_server.url.replace("redis://", "rediss://", 1)
    for args in (["status"], ["enqueue", str(_csv(tmp_path / "rows.csv", ROWS))]):
        # Bounded by the subprocess timeout, not timed: before, each try waited out its 5 s
        # handshake timeout and retried (16 s for status, 30 s for enqueue), then said "Timeout".
        out = streamcap(*args, *common(url, keys, tmp_path / "shards"), timeout=12)
        assert_one_error_line(out, "without TLS", "rediss://", "redis://")


def test_a_tab_separated_file_named_csv_says_so(redis_url, keys, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("url\tcaption\nhttp://127.0.0.1/a.jpg\ta cat\n")
    for args in (
        ["enqueue", str(rows), *common(redis_url, keys, tmp_path / "shards")],
        ["tokenizer", "build", str(rows), "--out", str(tmp_path / "v.txt")],
    ):
        assert_one_error_line(streamcap(*args), str(rows), "looks tab-separated", ".tsv")


def test_reconcile_exits_1_when_it_reports_a_problem_it_could_not_fix(r, redis_url, keys, image_host, tmp_path):
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, 4, failures=False), part_size=4)
    assert download(redis_url, keys, shard_dir, tmp_path / "d.log", "--allow-private").returncode == 0
    fine = streamcap("shards", "reconcile", *common(redis_url, keys, shard_dir))
    assert fine.returncode == 0 and "0 problems not fixed" in fine.stdout, fine.stdout + fine.stderr
    (shard_dir / "src-000000.stats.json").write_text("{not json")
    broken = streamcap("shards", "reconcile", *common(redis_url, keys, shard_dir))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "PROBLEM stats file src-000000.stats.json is unreadable" in broken.stdout
    assert "1 problems not fixed" in broken.stdout
    as_json = streamcap("shards", "reconcile", *common(redis_url, keys, shard_dir), "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_a_huge_caption_is_cut_at_download_and_counted(r, redis_url, keys, image_host, tmp_path):
    shard_dir = tmp_path / "shards"
    rows = paced_rows(image_host, 2, failures=False)
    huge = "A red car. " + "x" * 1_000_000
    enqueue_rows(r, keys, shard_dir, [rows[0], (rows[1][0], huge)], part_size=2)
    ran = download(redis_url, keys, shard_dir, tmp_path / "d.log", "--allow-private")
    assert ran.returncode == 0, ran.log
    assert f"1 captions cut to {MAX_CAPTION_CHARS} characters" in ran.log
    sample = samples_by_row(shard_dir)[1]
    assert sample.meta["caption_raw"] == huge[:MAX_CAPTION_CHARS]
    assert sample.meta["caption_chars"] == len(huge) and "caption_chars" not in samples_by_row(shard_dir)[0].meta
    assert sum(p.stat().st_size for p in shard_dir.glob("*.tar")) < 100_000
    final_audit(r, keys, shard_dir)


def test_exact_duplicate_rows_are_counted_at_enqueue(redis_url, keys, tmp_path):
    rows = [ROWS[0], ROWS[1], ROWS[0], (ROWS[1][0], "another caption"), ROWS[0]]
    out = streamcap("enqueue", str(_csv(tmp_path / "rows.csv", rows)), *common(redis_url, keys, tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    assert "warning: 2 of 5 rows repeat an earlier row's url and caption exactly" in out.stderr
    clean = streamcap("enqueue", str(_csv(tmp_path / "clean.csv", ROWS)), *common(redis_url, keys, tmp_path / "s"))
    assert clean.returncode == 0 and "warning" not in clean.stderr, clean.stderr


# --- 2: Ctrl-C and SIGTERM end `streamcap eval run` with METEOR ------------------------------------------


def _java_child(pid: int) -> int | None:
    for child in children(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].endswith(b"java"):
                return child
        except OSError:
            continue
    return None


def _interrupt_during_meteor(args: list[str], delay_s: float, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*STREAMCAP, *args], env=os.environ | ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    java = None
    try:
        wait_until(lambda: _java_child(proc.pid) or proc.poll() is not None, 120, "METEOR's JVM")
        java = _java_child(proc.pid)
        time.sleep(delay_s)
        running = proc.poll() is None
        proc.send_signal(sig)
        try:
            timing.wait(proc, 10)  # 10 s on a quiet machine
        except subprocess.TimeoutExpired:
            pytest.fail(f"{sig.name} {delay_s:.1f} s into METEOR did not end `streamcap eval run` within 10 s")
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr, stderr[-3000:]
        if running:  # interrupted, not a success
            assert proc.returncode != 0, stderr[-3000:]
        if java is not None:  # the scorer went with it
            gone = java
            wait_until(lambda: not alive(gone), 10, "the JVM gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if java is not None and alive(java):
            os.kill(java, signal.SIGKILL)


@pytest.mark.timeout(900)  # 20 evaluations, each starting a JVM
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs a Java scorer; this machine has no java")
def test_interrupts_during_meteor_end_eval_run_within_seconds(tmp_path):
    """20 deliveries, SIGINT and SIGTERM in turn, at staggered moments once METEOR's JVM runs:
    pycocoevalcap's scorer held its lock when the interrupt came, and its finaliser waited on it."""
    data = karpathy_set(tmp_path, test=3, val=2, train=1)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt" / "step-100.pt")
    args = ["eval", "run", str(checkpoint), "--data", str(data), "--images", str(tmp_path / "images")]
    args += ["--split", "val", "--beam", "1", "--max-tokens", "4", "--out-dir", str(tmp_path / "evals")]
    for i in range(20):
        # 0 to 2.7 s into METEOR: the JVM loading, then scoring
        _interrupt_during_meteor(args, (i // 2) * 0.3, signal.SIGINT if i % 2 == 0 else signal.SIGTERM)


# --- 10: outcomes in the right class ---------------------------------------------------------------------

# URLs no try can fetch, each with its one reason whatever --allow-private says. Before, the
# address forms were `blocked_address` without it and a transient `connect_error` with it.
NEVER = {
    "http://127.0.0.1:0/a.jpg": "invalid_url",
    "http://224.0.0.1/a.jpg": "blocked_address",
    "http://[ff02::1]/a.jpg": "blocked_address",
    "http://[::ffff:224.0.0.1]/a.jpg": "blocked_address",
    "http://255.255.255.255/a.jpg": "blocked_address",
    "http://240.0.0.1/a.jpg": "blocked_address",
    "http://0.0.0.0/a.jpg": "blocked_address",
    "http://[::]/a.jpg": "blocked_address",
    "ftp://127.0.0.1/a.jpg": "invalid_url",
    "//127.0.0.1/a.jpg": "invalid_url",
    "http://127.0.0.1:99999/a.jpg": "invalid_url",
    "http://[::1/a.jpg": "invalid_url",
    "http://127.0.0.1\\@x/a.jpg": "invalid_url",
}


def _outcomes(urls: list[str], allow_private: bool, tmp_path: Path) -> dict[str, FailedRow]:
    cfg = DownloaderSettings(shard_dir=tmp_path, allow_private=allow_private, retries=0, total_timeout=20)

    async def fetch_all() -> dict[str, FailedRow]:
        async with Fetcher(cfg) as fetcher:
            results = [await fetcher.fetch(url) for url in urls]
        return {u: FailedRow(0, u, res.reason or "", res.detail) for u, res in zip(urls, results)}

    return asyncio.run(fetch_all())


def test_urls_that_can_never_work_are_permanent_with_and_without_allow_private(tmp_path):
    strict = _outcomes(list(NEVER), allow_private=False, tmp_path=tmp_path)
    private = _outcomes(list(NEVER), allow_private=True, tmp_path=tmp_path)
    for url, reason in NEVER.items():
        assert strict[url].reason == private[url].reason == reason, (url, strict[url], private[url])
        assert not is_transient(private[url]) and not is_transient(strict[url]), (url, private[url])
    # TLS refused (https:// to a plain HTTP server, as aiohttp words it) fails the same way again.
    tls = "ClientConnectorSSLError: Cannot connect to host 127.0.0.1:8765 ssl:default [[SSL] record layer failure]"
    assert not is_transient(FailedRow(0, "https://127.0.0.1:8765/a.jpg", "connect_error", tls))
    # What a later try may fetch stays transient.
    assert is_transient(FailedRow(0, "u", "connect_error", "ClientConnectorError: Connection refused"))
    assert is_transient(FailedRow(0, "u", "http_status", "HTTP 503"))


# --- 3: a wrong caption column ------------------------------------------------------------------------


def _stopped_trainer(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    """The trainer's exit code and log, or AssertionError with the log if it runs past `timeout`."""
    try:
        rc = timing.wait(proc, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("the trainer is still running:\n" + log.read_text()[-3000:]) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, log.read_text()


def test_a_wrong_caption_column_stops_the_trainer_with_one_line_and_status_says_why(r, redis_url, keys, tmp_path):
    make_shards(r, keys, tmp_path / "shards", [8, 8, 8])  # fewer than --max-unusable-shards: replays count
    vocab(tmp_path / "vocab.txt")
    log = tmp_path / "train.log"
    args = train_args(redis_url, keys, tmp_path, run_id="nocol", max_steps=50, caption_column="nonexist")
    rc, text = _stopped_trainer(start([*args, "--loader-workers", "1"], log), log, 180)
    assert rc == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    (line,) = [x for x in text.splitlines() if "stopping: no usable sample" in x]
    assert "in the last 8 shards read (3 different)" in line, line
    assert "no caption column 'nonexist' in the sample (it has: caption, caption_raw" in line, line
    assert "pass --caption-column" in line, line
    beat = heartbeat_records(r, keys, bus.ROLE_TRAINER)[0]
    assert beat.state == "failed" and beat.error.startswith("stopping: no usable sample") and beat.step == 0
    hint = status.collect(r, keys)["hints"][0]
    assert hint.startswith("the trainer stopped itself: nocol: stopping: no usable sample"), hint


def test_two_ranks_stop_together_when_one_finds_no_usable_sample_and_the_other_waits(r, redis_url, keys, tmp_path):
    make_shards(r, keys, tmp_path / "shards", [8])  # one shard: one rank reads it, the other waits for one
    vocab(tmp_path / "vocab.txt")
    log = tmp_path / "train.log"
    args = train_args(
        redis_url, keys, tmp_path, run_id="ddpcol", caption_column="nonexist", max_unusable_shards=3, loader_workers=0
    )
    rc, text = _stopped_trainer(start(args, log, torchrun=2), log, 240)  # not left hanging in a collective
    assert rc != 0, text[-3000:]
    lines = [x for x in text.splitlines() if "ERROR" in x and "stopping: no usable sample in the last 3" in x]
    assert len(lines) == 1, text[-3000:]  # rank 0 says it, whichever rank found it
    beats = heartbeat_records(r, keys, bus.ROLE_TRAINER)
    assert sorted(b.rank for b in beats) == [0, 1]
    assert all(b.state == "failed" and "no caption column 'nonexist'" in b.error for b in beats), beats


# --- 4: a trainer pointed at the wrong place ------------------------------------------------------------


def test_a_waiting_trainer_is_told_what_keeps_its_shards_away(r, keys, tmp_path):
    from streamcap.ops.data_wait import why_no_data

    shard_dir, ns = tmp_path / "shards", keys.namespace
    shard_dir.mkdir()
    assert why_no_data(r, keys, shard_dir) == (
        f"nothing is enqueued in namespace '{ns}': run `streamcap enqueue SOURCE`, then `streamcap download`"
    )
    foreign = [shard_dir / f"laion-{i:05d}.tar" for i in range(3)]  # another pipeline's WebDataset tars
    for path in foreign:
        path.write_bytes(b"\0" * 1024)
    assert why_no_data(r, keys, shard_dir).startswith(
        f"3 .tar files in {shard_dir.resolve()} are not registered shards of namespace '{ns}' "
        "(another pipeline's, or another --namespace's?): pass the --namespace that wrote them"
    )
    for path in foreign:
        path.unlink()
    enqueue_rows(r, keys, shard_dir, [f"http://127.0.0.1:9/{i}.jpg" for i in range(4)], part_size=2)
    assert why_no_data(r, keys, shard_dir) == "2 parts wait but no downloader is running: start `streamcap download`"
    bus.write_heartbeat(r, keys, "d1", record(DownloaderHeartbeat, state="working"))
    assert why_no_data(r, keys, shard_dir) == ""  # the first shard is on its way: no mistake
    (source,) = r.hkeys(keys.sources)
    r.sadd(keys.parts_done, f"{source}:0", f"{source}:1")
    assert why_no_data(r, keys, shard_dir).startswith("all 2 parts are finished and no shard was written")
    r.delete(keys.parts)  # done: taken off the queue, so the next part is the only one to claim
    (name,) = make_shards(r, keys, tmp_path / "elsewhere", [4])  # registered, but written to another directory
    assert why_no_data(r, keys, shard_dir) == (
        f"all 1 registered shards of namespace '{ns}' are missing from {shard_dir.resolve()}: wrong --shard-dir? "
        "pass the directory `streamcap download` writes them to"
    )
    shutil.copy(tmp_path / "elsewhere" / name, shard_dir / name)
    assert why_no_data(r, keys, shard_dir) == ""


def test_a_trainer_waiting_at_the_wrong_place_says_what_is_wrong_in_its_log_and_in_status(r, redis_url, keys, tmp_path):
    vocab(tmp_path / "vocab.txt")
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    log = tmp_path / "train.log"
    proc = start([*train_args(redis_url, keys, tmp_path, run_id="lost", max_steps=5), "--loader-workers", "1"], log)

    def reasons() -> list[str]:
        return [b.waiting_reason for b in heartbeat_records(r, keys, bus.ROLE_TRAINER) if b.waiting_reason]

    try:
        nothing = f"nothing is enqueued in namespace '{keys.namespace}': run `streamcap enqueue SOURCE`"
        wait_until(lambda: any(x.startswith(nothing) for x in reasons()), 120, "the reason in the heartbeat", proc, log)
        hints = status.collect(r, keys)["hints"]
        assert any(h.startswith(f"the trainer waits for data: {nothing}") for h in hints), hints
        assert not any("add downloaders" in h for h in hints), hints  # the wait is 100 %, but downloaders are not it
        make_shards(r, keys, tmp_path / "elsewhere", [8])
        missing = f"all 1 registered shards of namespace '{keys.namespace}' are missing from {shard_dir.resolve()}"
        wait_until(lambda: any(x.startswith(missing) for x in reasons()), 120, "the new reason", proc, log)
        hints = status.collect(r, keys)["hints"]
        assert any(h.startswith(f"the trainer waits for data: {missing}: wrong --shard-dir?") for h in hints), hints
        text = log.read_text()
        assert f"waiting for data: {nothing}" in text and f"waiting for data: {missing}" in text, text[-3000:]
        assert proc.poll() is None  # waiting, not failing: a missing shard is no unusable sample
    finally:
        proc.kill()
        proc.wait()
