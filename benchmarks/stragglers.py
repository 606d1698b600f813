"""How long slow rows hold parts: `streamcap download` with and without its straggler deadline.

    .venv/bin/python benchmarks/stragglers.py --cache-dir /tmp/bench               # 3,000 rows, ~4 minutes
    .venv/bin/python benchmarks/stragglers.py --rows 12000 --straggler-seconds 0 5 10

The same server, rows and failure mix as benchmarks/download.py (hangs past every timeout,
hung bodies, a slow drip, slow-but-good rows, ...), but streamcap alone and with its own
default timeouts (connect 10 s, read 15 s, total 30 s, 2 retries), the setting where one
hanging row used to hold its part for the full 30 s. For each `--straggler-seconds` value
(0 = never defer), alternating, best of --rounds by images/s:

    images/s        successful images per second of wall clock, start to exit (retry parts included)
    commit s        seconds from a part's claim to its commit: median, 90th percentile, max
                    (the parts of the source; a retry part's own time is not a part waiting)
    deferred        rows deferred to retry parts, and how many of them the retries stored
    audit           lost / duplicates of `streamcap audit --expect-done` (both must be 0)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.download import (  # noqa: E402
    PART_SIZE,
    huge_image_path,
    make_images,
    run_streamcap,
    write_parquet,
)
from streamcap.bus.embedded import free_port  # noqa: E402

CONCURRENCY = 256
_CLAIMED = re.compile(r"(\S+Z) .*claimed part (\S+) \(")
_COMMITTED = re.compile(r"(\S+Z) .*committed part (\S+): .* in [\d.]+ s(?:; (\d+) slow rows deferred)?")


def commit_times(log: Path) -> tuple[list[float], int]:
    """(claim-to-commit seconds of each of the source's parts, rows deferred) from an INFO log."""
    from datetime import datetime

    def t(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    claimed: dict[str, float] = {}
    durations, deferred = [], 0
    for line in log.read_text(errors="replace").splitlines():
        if m := _CLAIMED.search(line):
            claimed.setdefault(m.group(2), t(m.group(1)))  # the first delivery's claim
        elif m := _COMMITTED.search(line):
            part = m.group(2)
            deferred += int(m.group(3) or 0)
            if "~" not in part and part in claimed:  # a part's own commit, not a retry part's
                durations.append(t(m.group(1)) - claimed[part])
    return durations, deferred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--straggler-seconds", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--distinct", type=int, default=240)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "streamcap-bench")
    args = parser.parse_args()
    images = make_images(args.cache_dir, args.distinct)
    huge_image_path(images[0].parent)
    work = args.cache_dir / "runs-stragglers"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "download.py"), "--serve", str(port), str(images[0].parent)]
    )
    results: dict[float, list[dict]] = {s: [] for s in args.straggler_seconds}
    try:
        time.sleep(2.0)
        parquet = work / "rows.parquet"
        write_parquet(parquet, args.rows, port)
        for _ in range(args.rounds):
            for seconds in args.straggler_seconds:
                extra = f"--straggler-seconds {seconds:g} --log-level INFO"
                run = run_streamcap(parquet, work, CONCURRENCY, "", extra)
                run["commits"], run["deferred"] = commit_times(work / f"streamcap-{CONCURRENCY}" / "download.log")
                run["rate"] = run["successes"] / run["wall"]
                results[seconds].append(run)
                print(
                    f"--straggler-seconds {seconds:<4g} {run['successes']} images in {run['wall']:.1f} s (exit {run['code']})",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(10)
    print(
        f"\nrows {args.rows}, parts of {PART_SIZE}, streamcap's default timeouts, --concurrency {CONCURRENCY}; best of {args.rounds}:"
    )
    print(
        f"{'--straggler-seconds':<20} {'images':>7} {'wall s':>7} {'images/s':>9} {'commit s p50 / p90 / max':>26} {'deferred':>9}  audit"
    )
    failed = False
    for seconds, runs in results.items():
        best = max(runs, key=lambda r: r["rate"])
        c = sorted(best["commits"]) or [float("nan")]
        p90 = c[min(len(c) - 1, int(0.9 * len(c)))]
        audit = best["audit"]
        retried = f"{audit.get('retried_samples', 0)}/{best['deferred']} stored"
        ok = audit.get("lost") == 0 and audit.get("duplicates") == 0 and best["code"] == 0
        failed |= not ok
        print(
            f"{seconds:<20g} {best['successes']:>7} {best['wall']:>7.1f} {best['rate']:>9.1f} "
            f"{statistics.median(c):>10.1f} / {p90:>5.1f} / {c[-1]:>5.1f} {retried:>14}  "
            f"lost {audit.get('lost')} dup {audit.get('duplicates')}{'' if ok else '  FAILED'}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
