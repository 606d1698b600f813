"""benchmarks/download.py's own logic: the row mix it serves and its report, without a network."""

from __future__ import annotations

import collections
import math

import pytest

from benchmarks import download

ROWS = 100_000


@pytest.fixture(scope="module")
def kinds() -> collections.Counter:
    return collections.Counter(download.row_kind(r) for r in range(ROWS))


def test_every_kind_of_the_mix_has_its_share(kinds):
    expected = {kind: share for kind, share, _ in download.MIX}
    expected["image"] = 1 - sum(expected.values())
    assert set(kinds) == set(expected)
    for kind, share in expected.items():
        # Binomial noise: 4 standard deviations, so the check is about the mix, not the luck.
        sigma = math.sqrt(share * (1 - share) / ROWS)
        assert abs(kinds[kind] / ROWS - share) < 4 * sigma, kind


def test_the_stored_rows_are_88_percent(kinds):
    stored = sum(n for kind, n in kinds.items() if kind in download.STORED_KINDS)
    assert stored / ROWS == pytest.approx(0.88, abs=0.005)
    assert download.STORED_KINDS == {"image", "slow", "redirect", "huge"}


def test_a_row_is_always_the_same_kind():
    assert [download.row_kind(r) for r in range(500)] == [download.row_kind(r) for r in range(500)]


def test_the_image_workers_are_told_from_the_rest():
    forkserver = "python -c from multiprocessing.forkserver import main; main(8, 9, ['__main__'])"
    spawned = "python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5) --multiprocessing-fork"
    cli = "python -m streamcap download --processes 2"
    assert download.streamcap_role(forkserver, forkserver) == "image workers"
    assert download.streamcap_role(forkserver, cli) == "rest"  # the forkserver itself
    assert download.streamcap_role(cli, cli) == "rest"  # a downloader process
    assert download.streamcap_role(spawned, cli) == "image workers"
    tracker = "python -c from multiprocessing.resource_tracker import main;main(7)"
    assert download.streamcap_role(tracker, cli) == "rest"


def test_streamcap_flags_can_be_overridden_and_extended():
    cmd = download.streamcap_command(256, download.STREAMCAP_TIMEOUTS, "--retries 2 --parts-in-flight 16")
    assert cmd[-4:] == ["--retries", "2", "--parts-in-flight", "16"]  # last wins in the CLI
    assert "--total-timeout" in cmd
    assert "--total-timeout" not in download.streamcap_command(256, "", "")


def _streamcap(samples: int, *, code: int = 0, lost: int = 0) -> dict:
    audit = {
        "ok": lost == 0,
        "complete": True,
        "lost": lost,
        "missing": 0,
        "duplicates": 0,
        "discrepancies": [],
        "parts": {"pending": 0, "in_flight": 0, "done": 4, "dead": 0},
        "redelivered_parts": 0,
        "retried_rows": 0,
        "retried_samples": 0,
        "failures_by_reason": {"http_status": 50, "timeout": 20},
    }
    return {
        "tool": "streamcap",
        "setting": "--concurrency 256",
        "wall": 10.0,
        "cpu": 8.0,
        "roles": {"image workers": (6.0, 4), "rest": (2.0, 6)},
        "image_cpu": 6.0,
        "image_procs": 4,
        "code": code,
        "successes": samples,
        "audit": audit,
        "reasons": audit["failures_by_reason"],
    }


def _img2dataset(samples: int) -> dict:
    return {
        "tool": "img2dataset",
        "setting": "--thread_count 64",
        "wall": 20.0,
        "cpu": 16.0,
        "roles": {"all": (16.0, 3)},
        "code": 0,
        "successes": samples,
        "reasons": {"HTTP Error 404: Not Found": 30, "timed out": 12},
    }


FLOOR = {"ms": 5.0, "images": 880, "ok": 880, "pool_rate": 300.0, "pool_ok": 880, "cores": 2}


def test_the_report_prints_every_line(capsys):
    failed = download.report([_streamcap(880), _img2dataset(878)], dict(FLOOR), 1000)
    out = capsys.readouterr().out
    assert failed == []
    for needle in (
        "image workers 6.8 ms (4 processes, 75 %), rest 2.3 ms",
        "agree within ±1 %",
        "2.00x img2dataset's images/s (goal >= 1.3 (3,000 rows))",
        "streamcap 1.82x it (goal <= 2x)",
        "audit        lost 0, missing 0, duplicates 0",
        "http_status 50, timeout 20",
        "checks: ok",
    ):
        assert needle in out


def test_the_report_flags_a_bad_streamcap_run(capsys):
    failed = download.report([_streamcap(700, code=1, lost=3), _img2dataset(880)], dict(FLOOR), 12_000)
    out = capsys.readouterr().out
    assert any("exit code 1" in f for f in failed) and any("lost 3" in f for f in failed)
    assert "DIFFER" in out and "goal >= 2 (>= 12,000 rows)" in out and "checks: FAILED" in out


def test_the_report_survives_an_audit_that_did_not_run_and_a_run_with_nothing_stored(capsys):
    broken = _streamcap(0)
    broken["audit"], broken["reasons"] = {"error": ["boom"]}, {}
    failed = download.report([broken, _img2dataset(0)], dict(FLOOR), 600)
    assert failed and "audit failed" in failed[0]
    assert "FAILED to run" in capsys.readouterr().out
