"""One DataLoader worker: streamcap's dataset vs a plain webdataset pipeline doing the same work.

    .venv/bin/python benchmarks/loader.py                                  # base preset sizes: 384 px, batch 64
    .venv/bin/python benchmarks/loader.py --image-size 224 --stored-size 256 --gpu-steps-per-s 5.2

Both read the same shards (demo-world JPEGs at --stored-size, quality 95) in one DataLoader
worker process and do the same work per sample: JPEG decode (`trainer.samples.decode_image`),
augmentation at full strength (`trainer.augment.Augmenter`), tokenization, batching through a
1000-sample shuffle buffer. streamcap's also claims shards from Redis (an embedded
redis-server), replays, snapshots its resumable state into every batch and checks tar members.
Rounds alternate between the two; each figure is the best round, in samples/s of one worker.
Each round also reads the CPU time the worker process spent (Linux: /proc/<pid>/stat), so the
cores figure holds even where a library inside the worker runs more than one thread.

Then: CPU cores (one loader worker each, and by the worker's CPU time) that keep one GPU fed at
--batch-size, given the GPU's training rate in optimizer steps/s: measured (`--gpu-steps-per-s`,
e.g. the "GPU step only" line of `benchmarks/gpu_train.sh`) or, without it, stated: the model's FLOPs per sample
(forward + backward, counted with torch's FlopCounterMode on the meta device) at an assumed
model FLOP utilisation (`--assumed-mfu`, default 10 %: ResNet training is memory-bound, far
from a GPU's matrix peak) of `--peak-tflops` (H200 bf16 dense: 989).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
import webdataset as wds
from torch.utils.data import DataLoader

from streamcap import bus
from streamcap.bus.embedded import EmbeddedRedis
from streamcap.demo.synthetic import add_part, demo_samples, demo_tokenizer
from streamcap.model.config import ModelConfig
from streamcap.trainer.augment import Augmenter, LevelSchedule
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.dataset import ShardStreamDataset, make_loader
from streamcap.trainer.samples import collate, decode_image, encode_caption


class WebdatasetWork:
    """The same per-sample work as streamcap's loader worker, as webdataset map functions."""

    def __init__(self, tokenizer, image_size: int, max_len: int) -> None:
        self.tokenizer, self.image_size, self.max_len = tokenizer, image_size, max_len
        self.augment = Augmenter(image_size)
        self.seed = 0

    def sample(self, s: dict) -> tuple:
        self.seed += 1
        image = decode_image(s["jpg"], "jpg", self.image_size)
        caption = s["txt"].decode("utf-8")
        return self.augment(image, 1.0, self.seed), encode_caption(self.tokenizer, caption, self.max_len)

    def batch(self, items: list) -> tuple:
        images, tokens = zip(*items)
        return collate(list(images), list(tokens), self.tokenizer.pad_id)


def worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_shards(root: Path, r, keys, shards: int, per_shard: int, stored: int) -> tuple[list[str], object]:
    names, captions = [], []
    for part in range(shards):
        samples = demo_samples(seed=7, start=part * per_shard, count=per_shard, image_size=stored, quality=95)
        names.append(add_part(r, keys, root, "bench", part, samples).shards[0].name)
        captions += samples[:50]
    return names, demo_tokenizer(captions, size=300)


def flops_per_sample(preset: str, image_size: int, seq_len: int = 24) -> float:
    """Forward + backward FLOPs of one sample, counted on the meta device (nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from streamcap.model.caption_model import CaptionModel, ModelConfig
    from streamcap.trainer.losses import caption_loss

    cfg = ModelConfig.from_preset(preset, pretrained=False, image_size=image_size)
    with torch.device("meta"):
        model = CaptionModel(cfg)
        images = torch.randn(2, 3, image_size, image_size)
        tokens = torch.randint(5, cfg.vocab_size, (2, seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(images, tokens[:, :-1])
        caption_loss(logits, tokens, pad_id=cfg.pad_id, eos_id=cfg.eos_id).total.backward()
    return counter.get_total_flops() / 2


def worker_cpu_s(batches) -> float | None:
    """CPU seconds (user + system) the DataLoader's worker processes have used so far (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    try:
        for worker in batches._workers:  # the DataLoader iterator's worker processes
            fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    except (AttributeError, OSError, IndexError, ValueError):
        return None
    return total


def rate(batches, warmup: int, measured: int, batch_size: int) -> tuple[float, float | None]:
    """Samples/s of the loader, and the worker CPU ms spent per sample (None where unreadable)."""
    for _ in range(warmup):
        next(batches)
    start, cpu = time.perf_counter(), worker_cpu_s(batches)
    for _ in range(measured):
        next(batches)
    elapsed, cpu_end = time.perf_counter() - start, worker_cpu_s(batches)
    samples = measured * batch_size
    # The prefetched batches are in flight at both ends, so the CPU window matches the timed one.
    cpu_ms = None if cpu is None or cpu_end is None else 1000 * (cpu_end - cpu) / samples
    return samples / elapsed, cpu_ms


def streamcap_round(url: str, keys, root: Path, tok, args, round_no: int) -> tuple[float, float | None]:
    cfg = TrainerSettings(
        namespace=keys.namespace,
        shard_dir=root,
        run=f"bench{round_no}",
        loader_workers=1,
        batch_size=args.batch_size,
        shuffle_buffer=1000,
        fresh_wait_ms=1000,
        seed=round_no,
    )
    model = ModelConfig(image_size=args.image_size, max_len=args.max_len)  # all the loader reads of it
    dataset = ShardStreamDataset(cfg, model, tok, LevelSchedule(max_level=1.0), redis_url=url)
    batches = iter(make_loader(dataset))
    try:
        return rate(batches, args.warmup, args.batches, args.batch_size)
    finally:
        del batches


def webdataset_round(root: Path, names: list[str], tok, args) -> tuple[float, float | None]:
    work = WebdatasetWork(tok, args.image_size, args.max_len)
    pipeline = (
        wds.WebDataset([str(root / n) for n in names], shardshuffle=False, empty_check=False)
        .repeat(10)
        .shuffle(1000)
        .map(work.sample)
        .batched(args.batch_size, collation_fn=work.batch)
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=1, worker_init_fn=worker_init, prefetch_factor=2)
    batches = iter(loader)
    try:
        return rate(batches, args.warmup, args.batches, args.batch_size)
    finally:
        del batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=384, help="training image side (base preset: 384)")
    parser.add_argument("--stored-size", type=int, default=384, help="side of the JPEGs in the shards")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="the trainer's default batch size per GPU")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing (buffer fill, worker start)")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gpu-steps-per-s", type=float, help="measured GPU rate (default: stated from FLOPs)")
    parser.add_argument("--preset", default="base", help="model whose FLOPs state the GPU rate")
    parser.add_argument("--assumed-mfu", type=float, default=0.10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=Path(tmp) / "redis") as server:
        root, keys = Path(tmp) / "shards", bus.Keys("bench")
        r = bus.connect(server.url)
        print(
            f"writing {args.shards} shards x {args.per_shard} samples ({args.stored_size} px JPEG q95) ...", flush=True
        )
        names, tok = make_shards(root, r, keys, args.shards, args.per_shard, args.stored_size)
        ours, theirs, cpu_ms = [], [], []
        for round_no in range(args.rounds):
            speed, cpu = streamcap_round(server.url, keys, root, tok, args, round_no)
            ours.append(speed)
            if cpu is not None:
                cpu_ms.append(cpu)
            theirs.append(webdataset_round(root, names, tok, args)[0])
            print(
                f"round {round_no + 1}: streamcap {ours[-1]:.1f} samples/s"
                + (f" ({cpu:.2f} worker CPU ms/sample)" if cpu is not None else "")
                + f", webdataset {theirs[-1]:.1f} samples/s",
                flush=True,
            )
    best, baseline = max(ours), max(theirs)
    if args.gpu_steps_per_s:
        steps, how = args.gpu_steps_per_s, "measured"
    else:
        flops = flops_per_sample(args.preset, args.image_size)
        steps = args.assumed_mfu * args.peak_tflops * 1e12 / (flops * args.batch_size)
        how = (
            f"stated: {args.preset} {flops / 1e9:.0f} GFLOP/sample fwd+bwd at {100 * args.assumed_mfu:.0f} % "
            f"MFU of {args.peak_tflops:.0f} TFLOPS"
        )
    need = args.batch_size * steps
    print(f"one loader worker ({args.image_size} px, batch {args.batch_size}, decode + augment + tokenize):")
    print(f"  streamcap dataset   {best:8.1f} samples/s")
    print(f"  webdataset pipeline {baseline:8.1f} samples/s")
    print(f"  ratio               {best / baseline:8.2f}  (goal >= 1.0)")
    print(
        f"one GPU at {steps:.2f} steps/s ({how}) x batch {args.batch_size} needs {need:.0f} samples/s "
        f"-> {need / best:.1f} CPU cores of loader workers per GPU"
    )
    if cpu_ms:
        print(
            f"  by worker CPU time ({min(cpu_ms):.2f} ms/sample, best round): "
            f"{need * min(cpu_ms) / 1000:.1f} CPU cores of loader workers per GPU"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
