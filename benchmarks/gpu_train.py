"""The GPU check: real training of the `base` preset on shards made on the spot, under torchrun.

    benchmarks/gpu_train.sh                 # on a GPU machine: base preset, bf16, ~400 steps
    benchmarks/gpu_train.sh --smoke         # anywhere: tiny preset, a few CPU steps

Needs no network: it renders demo-world images into WebDataset shards (all CPU cores), starts
the embedded redis-server, registers the shards, builds a vocabulary from their captions and
runs `torchrun --standalone --nproc-per-node N -m streamcap.trainer` with bf16 autocast on the GPU. Then
it times the training step alone on a fixed batch already on the GPU (the GPU's own rate, what
`benchmarks/loader.py --gpu-steps-per-s` takes) and counts the model's FLOPs per sample with
torch's FlopCounterMode, for the model FLOP utilisation (MFU) against --peak-tflops (H200 bf16
dense: 989). Prints samples/s, data-wait %, fresh/replay, peak GPU memory and MFU, and writes
them (with metrics.jsonl and loss.png) to $OUT or --out when given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from streamcap import bus  # noqa: E402
from streamcap.bus.embedded import EmbeddedRedis  # noqa: E402
from streamcap.demo.synthetic import commit_written, demo_samples, demo_tokenizer, write_part  # noqa: E402
from streamcap.formats.records import PartStats  # noqa: E402
from streamcap.trainer.metrics_sink import read_metrics  # noqa: E402


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny preset, a few steps, on CPU")
    p.add_argument("--steps", type=int, help="optimizer steps (default 400; smoke 6)")
    p.add_argument("--batch-size", type=int, help="per GPU (default 64; smoke 4)")
    p.add_argument("--workers", type=int, help="loader workers per rank (default: cores - 2, at most 14; smoke 1)")
    p.add_argument("--nproc", type=int, default=1, help="ranks (GPUs) under torchrun")
    p.add_argument("--shards", type=int, help="shards to write (default 48; smoke 3)")
    p.add_argument("--per-shard", type=int, help="samples per shard (default 100; smoke 12)")
    p.add_argument("--stored-size", type=int, help="stored JPEG side (default 384; smoke 64)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of one GPU (H200: 989)")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    a = p.parse_args()
    smoke = a.smoke
    a.preset = "tiny" if smoke else "base"
    a.steps = a.steps or (6 if smoke else 400)
    a.batch_size = a.batch_size or (4 if smoke else 64)
    a.workers = a.workers if a.workers is not None else (1 if smoke else max(1, min(14, (os.cpu_count() or 4) - 2)))
    a.shards = a.shards or (3 if smoke else 48)
    a.per_shard = a.per_shard or (12 if smoke else 100)
    a.stored_size = a.stored_size or (64 if smoke else 384)
    a.device = "cpu" if smoke else "cuda"
    return a


def _write_part(job: tuple) -> PartStats:
    root, part, count, size = job
    samples = demo_samples(seed=11, start=part * count, count=count, image_size=size, quality=95)
    return write_part(Path(root), "gpu", part, samples)


def build_data(root: Path, r, keys, a: argparse.Namespace) -> Path:
    started = time.perf_counter()
    jobs = [(str(root / "shards"), part, a.per_shard, a.stored_size) for part in range(a.shards)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for stats in pool.map(_write_part, jobs):
            commit_written(r, keys, stats)
    vocab = root / "vocab.txt"
    demo_tokenizer(demo_samples(seed=11, start=0, count=300, image_size=8), size=400).save(vocab)
    print(
        f"gpu_train: {a.shards} shards x {a.per_shard} samples ({a.stored_size} px) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return vocab


def train(root: Path, url: str, vocab: Path, a: argparse.Namespace) -> float:
    args = {
        "--redis-url": url,
        "--namespace": "gpu",
        "--shard-dir": root / "shards",
        "--checkpoint-dir": root / "ck",
        "--run-id": "gpu",
        "--tokenizer": vocab,
        "--preset": a.preset,
        "--max-steps": a.steps,
        "--batch-size": a.batch_size,
        "--loader-workers": a.workers,
        "--device": a.device,
        "--log-every": 10,
        "--checkpoint-every": a.steps,
        "--sample-every": a.steps,
        "--histogram-every": 0,
        "--warmup-steps": 100,
        "--aug-ramp-steps": a.steps // 2,
        "--fresh-wait-ms": 500,
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={a.nproc}",
        "-m",
        "streamcap.trainer",
        "--no-pretrained",
        *[str(x) for kv in args.items() for x in kv],
    ]
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4"}
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def model_rates(vocab: Path, a: argparse.Namespace, seq_len: int) -> dict[str, float]:
    """FLOPs per sample (forward + backward) and the training step's own rate on one device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from streamcap.model.caption_model import CaptionModel, ModelConfig
    from streamcap.text.tokenizer import WordPieceTokenizer
    from streamcap.trainer.losses import caption_loss

    device = torch.device(a.device)
    tok = WordPieceTokenizer.from_file(vocab)
    model = CaptionModel(ModelConfig.from_preset(a.preset, tokenizer=tok, pretrained=False)).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=cuda)
    size = model.cfg.image_size
    images = torch.randn(a.batch_size, 3, size, size, device=device)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    tokens = torch.randint(5, tok.vocab_size, (a.batch_size, seq_len), device=device)
    tokens[:, 0] = tok.bos_id

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(images, tokens[:, :-1])
        caption_loss(logits, tokens, pad_id=tok.pad_id, eos_id=tok.eos_id).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    n, started = (20 if cuda else 2), time.perf_counter()
    for _ in range(n):
        step()
    if cuda:
        torch.cuda.synchronize()
    return {
        "flops_per_sample": counter.get_total_flops() / a.batch_size,
        "steps_per_s": n / (time.perf_counter() - started),
    }


def summarise(root: Path, a: argparse.Namespace, wall_s: float, rates: dict[str, float]) -> dict:
    records = read_metrics(root / "ck" / "gpu" / "metrics.jsonl")
    steady = [rec for rec in records if rec["step"] > max(20, a.steps // 5)] or records
    mean = lambda key: sum(rec.get(key, 0.0) for rec in steady) / len(steady)  # noqa: E731
    samples_per_s = mean("samples_per_s")
    peak = max((rec.get("gpu/max_memory_allocated_gb", 0.0) for rec in records), default=0.0)
    flops = rates["flops_per_sample"]
    report = {
        "preset": a.preset,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "ranks": a.nproc,
        "loader_workers": a.workers,
        "wall_s": round(wall_s, 1),
        "samples_per_s": round(samples_per_s, 1),
        "data_wait_pct": round(mean("data_wait_pct"), 1),
        "fresh_ratio": round(mean("fresh_ratio"), 3),
        "peak_memory_gb": round(peak, 2),
        "final_loss": records[-1]["loss"] if records else None,
        "gflops_per_sample": round(flops / 1e9, 1),
        "mfu_pct": round(100 * flops * samples_per_s / (a.peak_tflops * 1e12 * a.nproc), 1),
        "gpu_only_steps_per_s": round(rates["steps_per_s"], 2),
        "gpu_only_samples_per_s": round(rates["steps_per_s"] * a.batch_size, 1),
        "gpu_only_mfu_pct": round(100 * flops * rates["steps_per_s"] * a.batch_size / (a.peak_tflops * 1e12), 1),
    }
    return report


def main() -> int:
    a = options()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=Path(tmp) / "redis") as server:
        root = Path(tmp)
        vocab = build_data(root, bus.connect(server.url), bus.Keys("gpu"), a)
        wall = train(root, server.url, vocab, a)
        rates = model_rates(vocab, a, seq_len=16)  # demo captions: ~14 tokens with BOS/EOS
        report = summarise(root, a, wall, rates)
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "gpu_train.json").write_text(json.dumps(report, indent=2) + "\n")
            for name in ("metrics.jsonl", "loss.png"):
                if (root / "ck" / "gpu" / name).exists():
                    shutil.copy(root / "ck" / "gpu" / name, a.out / name)
    print(
        f"gpu_train: {report['preset']} preset, {report['steps']} steps x batch {report['batch_size']} on "
        f"{report['ranks']} rank(s), {report['loader_workers']} loader workers each, {report['wall_s']} s in all"
    )
    print(
        f"gpu_train: training      {report['samples_per_s']} samples/s, data wait {report['data_wait_pct']} %, "
        f"fresh {100 * report['fresh_ratio']:.0f} %, peak GPU memory {report['peak_memory_gb']} GB, "
        f"MFU {report['mfu_pct']} % ({report['gflops_per_sample']} GFLOP per sample, fwd+bwd)"
    )
    print(
        f"gpu_train: GPU step only {report['gpu_only_steps_per_s']} steps/s = {report['gpu_only_samples_per_s']} "
        f"samples/s, MFU {report['gpu_only_mfu_pct']} % of {a.peak_tflops:.0f} TFLOPS"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
