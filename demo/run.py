"""`streamcap demo`: the whole pipeline on this machine, with no internet, in a few minutes.

    streamcap demo                 # or: make demo
    streamcap demo --steps 300     # shorter
    streamcap demo --s3            # shards in a bucket of a local SeaweedFS (make demo DEMO_ARGS=--s3)

An embedded Redis; a local HTTP server hosting a generated world of shapes; a RELAION-POP-style
parquet of its URLs and captions; enqueue; a downloader (`--allow-private`, loopback only); the
trainer (tiny preset) consuming shards while they are still being downloaded; the evaluator
scoring every published checkpoint on a held-out Flickr30K-format set; the scores next to a
trivial baseline (always the most common caption). Each service is its own `streamcap`
process, exactly as compose runs them. With --s3 the shards go to `s3://demo/shards` on a
SeaweedFS server of the demo's own (demo.seaweed), as they would to a bucket between machines:
the services share Redis and the bucket, no shard folder. The last line reads:

    demo: CIDEr <x> (baseline <y>), BLEU-4 <z>, report <path>
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamcap import bus
from streamcap.bus.embedded import EmbeddedRedis
from streamcap.common.settings import fail
from streamcap.common.store import is_store_url
from streamcap.demo.config import DemoSettings
from streamcap.demo.data import write_eval_set, write_source_parquet
from streamcap.demo.processes import ServiceFailed, Services, flags
from streamcap.demo.seaweed import SeaweedS3, weed_binary
from streamcap.demo.server import WorldServer
from streamcap.ops import status
from streamcap.text.captions import process_caption

NAMESPACE = "demo"
RUN_ID = "demo"
CAPTION_SENTENCES = 1  # Flickr30K references are one short sentence: train on that style
STORED_IMAGE_SIZE = 96  # the tiny preset trains at 64 px; leave room for random crops
EVAL_SEED_OFFSET = 1000  # held-out scenes come from another seed than the training rows
# Latency per image and connections: about 60 images/s, so the download runs for a while and
# the trainer visibly starts on the first shards while later ones are still arriving.
DOWNLOAD_CONCURRENCY = 6
# Written into every workdir the demo makes; the demo resets only a folder that carries it.
MARKER = ".streamcap-demo"


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    def __getattr__(self, name: str) -> Path:
        layout = {
            "redis": "redis",
            "shards": "shards",
            "source": "source/demo.parquet",
            "vocab": "vocab.txt",
            "checkpoints": "checkpoints",
            "evals": "evals",
            "logs": "logs",
            "eval_set": "eval-set",
            "s3": "s3",  # --s3: the SeaweedFS server's data, the spool and the shard cache
        }
        if name not in layout:
            raise AttributeError(name)
        return self.root / layout[name]

    def reset_run_state(self) -> None:
        """Remove what an earlier run left; the generated eval set is kept when it is complete."""
        for name in ("redis", "shards", "checkpoints", "evals", "logs", "s3"):
            shutil.rmtree(getattr(self, name), ignore_errors=True)
        for path in (self.source, self.vocab, self.root / "baseline"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


def claim_workdir(cfg: DemoSettings, root: Path) -> None:
    """Make `root` the demo's: a new or empty folder gets the marker; a folder holding anything
    without it is refused, since each run deletes the shards and checkpoints it finds there."""
    if root.is_dir() and not (root / MARKER).is_file() and any(root.iterdir()):
        fail(cfg, "workdir", f"a new or empty folder, or one an earlier demo made (it holds {MARKER})", root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `streamcap demo`; each demo run resets this folder's run state\n")


def eval_set_ready(directory: Path, images: int) -> bool:
    try:
        entries = json.loads((directory / "dataset_flickr30k.json").read_text())["images"]
    except (OSError, ValueError, KeyError):
        return False
    return len(entries) == images and all((directory / "images" / e["filename"]).is_file() for e in entries)


def run(cfg: DemoSettings) -> int:
    console = Console()
    paths = DemoPaths(cfg.workdir.resolve())
    if cfg.s3:
        try:
            weed_binary()
        except RuntimeError as e:
            console.print(f"[red]demo: --s3 needs a SeaweedFS server: {e}[/red]")
            return 1
    claim_workdir(cfg, paths.root)
    paths.reset_run_state()
    started = time.monotonic()
    with ExitStack() as stack:
        redis_server = stack.enter_context(EmbeddedRedis(paths.redis))
        web = stack.enter_context(WorldServer(seed=cfg.seed, latency_s=cfg.download_latency))
        shards = start_bucket(stack, paths, console) if cfg.s3 else Shards(str(paths.shards), {})
        env = service_env(redis_server.url, shards)
        with Services(paths.logs, env) as services:
            try:
                prepare_data(cfg, paths, web.base_url, services, console)
                train_while_downloading(cfg, paths, shards, services, redis_server.url, console)
                console.print("[bold]evaluating[/bold] every published checkpoint on the held-out set ...")
                services.run("evaluator", ["eval", "watch", "--exit-when-empty", "--device", "cpu", *eval_args(paths)])
                baseline = score_baseline(paths, services)
            except ServiceFailed as e:
                console.print(f"[red]demo: {e}[/red]")
                return 1
    return summarise(paths, baseline, console, time.monotonic() - started)


@dataclass(frozen=True)
class Shards:
    """Where the services put shards: a folder, or (--s3) a bucket URL and the AWS_* variables that reach it."""

    url: str
    env: dict[str, str]

    @property
    def remote(self) -> bool:
        return is_store_url(self.url)


def start_bucket(stack: ExitStack, paths: DemoPaths, console: Console) -> Shards:
    s3 = stack.enter_context(SeaweedS3(paths.s3 / "seaweed"))
    url = s3.make_bucket("demo") + "/shards"
    console.print(f"[bold]bucket[/bold]: {url} on a SeaweedFS S3 server at {s3.endpoint}")
    return Shards(url, s3.env)


def service_env(redis_url: str, shards: Shards) -> dict[str, str]:
    env = dict(os.environ)
    env.update(shards.env)
    env.update(
        {
            "REDIS_URL": redis_url,
            "STREAMCAP_NAMESPACE": NAMESPACE,
            "STREAMCAP_SHARD_DIR": shards.url,
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "WANDB_MODE": env.get("WANDB_MODE", "disabled"),
            # Two services share two cores: one math thread each keeps them from fighting.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    return env


def eval_args(paths: DemoPaths) -> list[str]:
    return flags(
        {
            "--data": paths.eval_set / "dataset_flickr30k.json",
            "--images": paths.eval_set / "images",
            "--out-dir": paths.evals,
            "--no-meteor": True,
            "--gallery": 24,
        }
    )


def prepare_data(cfg: DemoSettings, paths: DemoPaths, base_url: str, services: Services, console: Console) -> None:
    console.print(
        f"[bold]world[/bold]: {cfg.rows} url+caption rows served at {base_url}, {cfg.eval_images} held-out images"
    )
    write_source_parquet(paths.source, base_url, rows=cfg.rows, seed=cfg.seed)
    if not eval_set_ready(paths.eval_set, cfg.eval_images):
        shutil.rmtree(paths.eval_set, ignore_errors=True)
        write_eval_set(paths.eval_set, images=cfg.eval_images, seed=cfg.seed + EVAL_SEED_OFFSET)
    services.run(
        "tokenizer",
        [
            "tokenizer",
            "build",
            str(paths.source),
            *flags(
                {
                    "--out": paths.vocab,
                    "--size": 300,
                    "--column": "llava_caption",
                    "--sentences": CAPTION_SENTENCES,
                }
            ),
        ],
    )
    services.run(
        "enqueue",
        ["enqueue", str(paths.source), "--name", "demo", "--part-size", "250", "--caption-col", "llava_caption"],
    )


def train_while_downloading(
    cfg: DemoSettings, paths: DemoPaths, shards: Shards, services: Services, redis_url: str, console: Console
) -> None:
    download = flags(
        {
            "--allow-private": True,
            "--exit-when-empty": True,
            "--processes": 1,
            "--image-workers": 1,
            "--concurrency": DOWNLOAD_CONCURRENCY,
            "--per-host": DOWNLOAD_CONCURRENCY,
            "--image-size": STORED_IMAGE_SIZE,
            "--caption-sentences": CAPTION_SENTENCES,
            "--shard-max-samples": 250,
            "--spool-dir": paths.s3 / "spool" if shards.remote else None,
        }
    )
    train = flags(
        {
            "--run-id": RUN_ID,
            "--preset": "tiny",
            "--tokenizer": paths.vocab,
            "--no-pretrained": True,
            "--checkpoint-dir": paths.checkpoints,
            "--max-steps": cfg.steps,
            "--batch-size": cfg.batch_size,
            "--lr": "1e-3",
            "--warmup-steps": 50,
            "--checkpoint-every": cfg.checkpoint_every,
            "--keep-checkpoints": 0,  # the evaluator runs after training and scores every checkpoint
            "--loader-workers": 1,
            "--device": "cpu",
            "--seed": cfg.seed,
            "--aug-max": 0.3,
            "--aug-ramp-steps": cfg.steps,
            "--sample-every": 0,
            "--histogram-every": 0,
            "--log-every": 10,
            "--fresh-wait-ms": 500,
            "--replay": cfg.replay,
            "--shard-cache": paths.s3 / "shard-cache" if shards.remote else None,
        }
    )
    services.start("downloader", ["download", *download])
    services.start("trainer", ["train", *train])
    r = bus.connect(redis_url)
    keys = bus.Keys(NAMESPACE)
    with Live(progress_table(None, cfg), console=console, refresh_per_second=2) as live:
        while services.running("trainer"):
            services.check()
            live.update(progress_table(status.collect(r, keys), cfg))
            time.sleep(1)
        services.check()
        live.update(progress_table(status.collect(r, keys), cfg))
    if services.running("downloader"):  # the trainer is done; the rest of the download is not needed
        services.stop("downloader")


def progress_table(report: dict[str, Any] | None, cfg: DemoSettings) -> Table:
    table = Table(title="streamcap demo", show_header=False, title_justify="left", min_width=60)
    table.add_column(style="bold")
    table.add_column()
    if report is None:
        table.add_row("starting", "downloader and trainer")
        return table
    urls, shards, trainer, parts = report["urls"], report["shards"], report["trainer"], report["parts"]
    table.add_row(
        "download",
        f"{urls['rows']}/{parts['rows_enqueued']} rows committed, "
        f"{urls['images_per_s']:.0f} images/s, {urls['failures']} failures",
    )
    table.add_row("shards", f"{shards['count']} shards, {shards['samples']} samples")
    if trainer["step"] is None:
        table.add_row("trainer", "starting (waits for the first shard)")
    else:
        table.add_row(
            "trainer",
            f"step {trainer['step']}/{cfg.steps}, loss {trainer['loss'] or 0:.3f}, "
            f"{trainer['samples_per_s'] or 0:.0f} samples/s",
        )
        table.add_row(
            "data",
            f"fresh {trainer['fresh']} / replay {trainer['replay']} samples, "
            f"waited {trainer['data_wait_pct'] or 0:.0f} % of the time",
        )
    return table


def score_baseline(paths: DemoPaths, services: Services) -> dict[str, float]:
    """The trivial baseline: every test image gets the most common training caption."""
    captions = pq.read_table(paths.source, columns=["llava_caption"]).column("llava_caption").to_pylist()
    common = Counter(process_caption(c, CAPTION_SENTENCES) for c in captions).most_common(1)[0][0]
    data = json.loads((paths.eval_set / "dataset_flickr30k.json").read_text())
    refs = {im["filename"]: [s["raw"] for s in im["sentences"]] for im in data["images"] if im["split"] == "test"}
    out = paths.root / "baseline"
    out.mkdir(exist_ok=True)
    (out / "predictions.json").write_text(json.dumps({k: common for k in refs}))
    (out / "references.json").write_text(json.dumps(refs))
    scores = json.loads(
        services.output(
            "baseline",
            ["eval", "score", str(out / "predictions.json"), str(out / "references.json"), "--json", "--no-meteor"],
        )
    )
    return {"caption": common, **scores["scores"]}


def summarise(paths: DemoPaths, baseline: dict[str, Any], console: Console, seconds: float) -> int:
    results = [json.loads(line) for line in (paths.evals / "results.jsonl").read_text().splitlines() if line.strip()]
    final = max((r for r in results if r.get("status") == "ok"), key=lambda r: r["step"])
    scores, report = final["scores"], final["report"]
    predictions = json.loads(Path(final["predictions"]).read_text())
    data = json.loads((paths.eval_set / "dataset_flickr30k.json").read_text())
    table = Table(title=f"held-out captions (step {final['step']})", title_justify="left")
    table.add_column("image")
    table.add_column("predicted")
    table.add_column("a reference")
    for image in data["images"][:6]:
        table.add_row(image["filename"], predictions.get(image["filename"], "?"), image["sentences"][0]["raw"])
    console.print(table)
    for result in sorted(results, key=lambda r: r["step"]):
        if result.get("status") == "ok":
            console.print(
                f"  step {result['step']:>5}: CIDEr {result['scores']['CIDEr']:.3f}, "
                f"BLEU-4 {result['scores']['BLEU-4']:.3f}"
            )
    console.print(
        f'  baseline (always "{baseline["caption"]}"): CIDEr {baseline["CIDEr"]:.3f}, BLEU-4 {baseline["BLEU-4"]:.3f}'
    )
    console.print(f"  finished in {seconds / 60:.1f} min; logs in {paths.logs}")
    # Plain print: the last line is an interface (scripts grep it), never wrapped or styled.
    print(
        f"demo: CIDEr {scores['CIDEr']:.3f} (baseline {baseline['CIDEr']:.3f}), "
        f"BLEU-4 {scores['BLEU-4']:.3f}, report {report}",
        flush=True,
    )
    return 0
