"""`streamcap status` leads with the one thing that needs attention, and its fix (streamcap.ops.attention)."""

from __future__ import annotations

from streamcap import bus
from streamcap.formats.heartbeats import DownloaderHeartbeat, TrainerHeartbeat
from streamcap.ops import status
from tests.support.heartbeats import record
from tests.support.parts import enqueue_source


def first_line(capsys, redis_url, keys, shard_dir) -> str:
    """The first line `streamcap status` prints (run in this process, output as in a pipe)."""
    from streamcap.cli import app
    from streamcap.entrypoint import run_app

    capsys.readouterr()
    rc = run_app(
        app, ["status", "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out.splitlines()[0]


def downloader(**fields) -> DownloaderHeartbeat:
    return record(DownloaderHeartbeat, **({"state": "working", "urls_per_s": 5.0} | fields))


def test_blocked_addresses_dominating_lead_with_allow_private(r, keys, tmp_path, capsys, redis_url):
    enqueue_source(r, keys, tmp_path, "src", rows=300, part_size=100)
    bus.write_heartbeat(r, keys, "d1", downloader(urls=120, images=0, failures={"blocked_address": 120}))
    # A starving trainer is a hint too, but the cause ranks first.
    trainer = record(TrainerHeartbeat, state="waiting_for_data", run="run1", step=3, max_steps=100, data_wait_pct=95.0)
    bus.write_heartbeat(r, keys, "run1-rank0", trainer)
    assert first_line(capsys, redis_url, keys, tmp_path) == (
        "attention: 100 % blocked_address: the URLs are private addresses; use --allow-private if that is intended"
    )


def test_a_paused_downloader_leads_with_its_reason_and_the_fix(r, keys, tmp_path, capsys, redis_url):
    enqueue_source(r, keys, tmp_path, "src", rows=300, part_size=100)
    reason = f"shard dir not writable: Read-only file system ({tmp_path}/x.tar)"
    bus.write_heartbeat(r, keys, "d1", downloader(state="paused", reason=reason))
    # Committed rows that mostly failed rank below a worker that cannot work at all.
    r.hset(keys.stats, mapping={bus.STAT_ROWS: 100, bus.STAT_FAIL_PREFIX + "http_status": 90})
    line = first_line(capsys, redis_url, keys, tmp_path)
    assert line.startswith(f"attention: 1 downloader(s) paused: {reason}: make the shard dir writable"), line


def test_a_healthy_pipeline_says_so(r, keys, tmp_path, capsys, redis_url):
    enqueue_source(r, keys, tmp_path, "src", rows=300, part_size=100)
    bus.write_heartbeat(r, keys, "d1", downloader(urls=100, images=93, failures={"http_status": 7}))
    assert first_line(capsys, redis_url, keys, tmp_path) == "all healthy"
    assert status.collect(r, keys, tmp_path)["attention"] is None


def test_nothing_enqueued_and_no_downloader_each_lead_when_they_are_the_problem(r, keys, tmp_path, capsys, redis_url):
    assert first_line(capsys, redis_url, keys, tmp_path) == (
        f"attention: nothing is enqueued in namespace '{keys.namespace}': "
        "run `streamcap enqueue SOURCE` (or --namespace)"
    )
    enqueue_source(r, keys, tmp_path, "src", rows=300, part_size=100)
    assert first_line(capsys, redis_url, keys, tmp_path) == (
        "attention: 3 parts wait but no downloader is running: start `streamcap download`"
    )


def test_any_hint_status_gives_reaches_the_attention_line(r, keys, tmp_path, monkeypatch):
    """A hint added to `status.hints` (the trainer's waiting states, say) needs no change in
    attention: when no ranked problem holds, the first hint is the line."""
    enqueue_source(r, keys, tmp_path, "src", rows=300, part_size=100)
    bus.write_heartbeat(r, keys, "d1", downloader(urls=10, images=10))
    new_hint = "the trainer waits: 3 unregistered .tar files in shards/ (another tool's?)"
    real_hints = status.hints
    monkeypatch.setattr(status, "hints", lambda report: [*real_hints(report), new_hint])
    assert status.collect(r, keys, tmp_path)["attention"] == new_hint
