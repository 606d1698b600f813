"""An honest audit: rows of a quarantined or vanished shard are `missing`, never fine, until
`streamcap shards reconcile --requeue-missing` and a download fetch exactly them again.

Issue 15, finding 5: `shards verify --quarantine` (or a shard deleted by hand, then `shards
reconcile`) used to leave `streamcap audit` at lost=0 with the rows never downloaded again.
gc's deliberate deletions stay fine (tests/integration/test_audit.py).
"""

from __future__ import annotations

from streamcap.cli import app
from streamcap.entrypoint import run_app
from streamcap.formats.shards import iter_samples
from streamcap.shardwriter.audit import audit
from tests.support.fleet import download
from tests.support.pipeline import enqueue_rows, final_audit, outcomes, paced_rows, part_stats

ROWS = 24


def streamcap(capsys, redis_url, keys, shard_dir, *args):
    """(exit code, stdout) of an in-process `streamcap ARGS` against this pipeline."""
    capsys.readouterr()
    argv = [*args, "--redis-url", redis_url, "--namespace", keys.namespace, "--shard-dir", str(shard_dir)]
    code = run_app(app, argv)
    return code, capsys.readouterr().out


def downloaded(r, keys, redis_url, image_host, tmp_path):
    """24 rows (every 10th a 404) in parts of 12, shards of 4 samples, all downloaded."""
    shard_dir = tmp_path / "shards"
    enqueue_rows(r, keys, shard_dir, paced_rows(image_host, ROWS), part_size=12)
    ran = download(redis_url, keys, shard_dir, tmp_path / "first.log", "--allow-private", "--shard-max-samples", "4")
    assert ran.returncode == 0, ran.log
    final_audit(r, keys, shard_dir)
    return shard_dir


def rows_of(path) -> set[int]:
    return {s.meta["row"] for s in iter_samples(path)}


def fetch_again_and_check(r, keys, redis_url, shard_dir, tmp_path, capsys, gone_rows: set[int], before: dict) -> None:
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "shards", "reconcile", "--requeue-missing")
    assert code == 0 and f"{len(gone_rows)} missing rows requeued" in out
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "shards", "reconcile", "--requeue-missing")
    assert code == 0 and "0 missing rows requeued" in out  # its retry is still queued: nothing twice
    ran = download(redis_url, keys, shard_dir, tmp_path / "again.log", "--allow-private", "--shard-max-samples", "4")
    assert ran.returncode == 0, ran.log
    report = final_audit(r, keys, shard_dir)
    assert (report.missing, report.samples, report.retried_rows, report.retried_samples) == (
        0,
        sum(1 for o in before.values() if o[0] == "sample"),
        len(gone_rows),
        len(gone_rows),
    )
    assert outcomes(shard_dir) == before  # every row as before, the lost ones downloaded again
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "audit")
    assert code == 0 and "missing=0" in out


def test_quarantined_shard_is_missing_until_fetched_again(r, keys, redis_url, image_host, tmp_path, capsys):
    shard_dir = downloaded(r, keys, redis_url, image_host, tmp_path)
    before = outcomes(shard_dir)
    victim = part_stats(shard_dir)[1].shards[1]
    path = shard_dir / victim.name
    gone_rows = rows_of(path)
    path.write_bytes(path.read_bytes()[:1500])  # truncated
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "shards", "verify", "--quarantine")
    assert code == 1 and victim.name in out

    code, out = streamcap(capsys, redis_url, keys, shard_dir, "audit")
    assert code == 1
    assert f"shard {victim.name} (rows {victim.first_row}-{victim.last_row}) was quarantined" in out
    assert f"missing={len(gone_rows)}" in out
    assert audit(r, keys, shard_dir).missing == len(gone_rows) == victim.samples
    fetch_again_and_check(r, keys, redis_url, shard_dir, tmp_path, capsys, gone_rows, before)


def test_shard_deleted_by_hand_is_missing_after_reconcile(r, keys, redis_url, image_host, tmp_path, capsys):
    shard_dir = downloaded(r, keys, redis_url, image_host, tmp_path)
    before = outcomes(shard_dir)
    victim = part_stats(shard_dir)[0].shards[0]
    gone_rows = rows_of(shard_dir / victim.name)
    (shard_dir / victim.name).unlink()
    code, out = streamcap(capsys, redis_url, keys, shard_dir, "shards", "reconcile")
    assert code == 0 and "1 marked deleted" in out
    report = audit(r, keys, shard_dir)  # no longer lost=0 and fine
    assert not report.ok and report.missing == len(gone_rows)
    assert any(f"shard {victim.name}" in d and "missing" in d for d in report.discrepancies)
    fetch_again_and_check(r, keys, redis_url, shard_dir, tmp_path, capsys, gone_rows, before)
