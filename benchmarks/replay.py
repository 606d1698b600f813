"""Replay rules on the demo world: uniform vs balanced, same world, seeds and steps.

    .venv/bin/python benchmarks/replay.py                              # 3,000 rows, 300 steps, 0.3 s/image
    .venv/bin/python benchmarks/replay.py --rows 1500 --steps 200 --latency 0.2
    .venv/bin/python benchmarks/replay.py --report-only                # re-read the two workdirs

Runs `streamcap demo` twice, `--replay uniform` then `--replay balanced`, with the image server
answering each request after `--latency` seconds, so the downloader lags the trainer and most
samples it trains on are replays. For each run it prints the share of replayed samples, the
spread of the per-shard read counts (max/mean and min/mean, from the trainer's
`reads-rank0.jsonl`) and the held-out CIDEr of the final checkpoint (the demo's own
evaluation, at equal steps). The demo is CPU-bound and timing-dependent (when shards land), so
the CIDEr of one pair of runs is noisy; the spread is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ("uniform", "balanced")


def run_demo(workdir: Path, rule: str, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "streamcap", "demo", "--workdir", str(workdir), "--rows", str(args.rows)]
    cmd += ["--steps", str(args.steps), "--checkpoints", "1", "--seed", str(args.seed)]
    cmd += ["--download-latency", str(args.latency), "--replay", rule]
    env = os.environ | {"WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    with (workdir.parent / f"{workdir.name}.log").open("w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def report(workdir: Path) -> dict[str, float]:
    run_dir = workdir / "checkpoints" / "demo"
    events = [json.loads(line) for line in (run_dir / "reads-rank0.jsonl").read_text().splitlines()]
    reads = Counter(e["shard"] for e in events if not e["missing"])
    mean = statistics.mean(reads.values())
    samples = sum(e["samples"] for e in events)
    replayed = sum(e["samples"] for e in events if not e["fresh"])
    scores = sorted((workdir / "evals" / "demo").glob("step-*/scores.json"))[-1]
    return {
        "shards": len(reads),
        "replay_pct": 100.0 * replayed / samples,
        "max_over_mean": max(reads.values()) / mean,
        "min_over_mean": min(reads.values()) / mean,
        "reads": sorted(reads.values()),
        "cider": json.loads(scores.read_text())["corpus"]["CIDEr"],
        "step": int(scores.parent.name.split("-")[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.3, help="image server seconds per answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/streamcap-replay-bench"))
    parser.add_argument("--report-only", action="store_true", help="only read the two runs already there")
    args = parser.parse_args()
    for rule in RULES:
        workdir = args.workdir / f"replay-{rule}"
        if not args.report_only:
            workdir.parent.mkdir(parents=True, exist_ok=True)
            run_demo(workdir, rule, args)
        r = report(workdir)
        print(
            f"{rule:9s} step {r['step']}: {r['replay_pct']:.0f} % replayed samples, {r['shards']} shards, "
            f"reads max/mean {r['max_over_mean']:.2f} min/mean {r['min_over_mean']:.2f} {r['reads']}, "
            f"held-out CIDEr {r['cider']:.3f}"
        )


if __name__ == "__main__":
    main()
