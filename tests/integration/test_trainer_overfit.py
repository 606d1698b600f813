"""The tiny preset memorises 16 samples (16 different captions): the loss goes near zero and greedy
decoding of the saved checkpoint, fed as at inference (`image_transform`), gives back their
captions. (16 samples in 90 steps of 16 prove what 32 in 150 steps of 32 did, in half the time:
the loss ends at 0.05 and every caption comes back; 14 of 16 already do at step 75.)"""

from __future__ import annotations

import io

import torch
from PIL import Image

from streamcap.demo.synthetic import add_part, demo_samples, demo_tokenizer
from streamcap.model.caption_model import image_transform
from streamcap.model.checkpoint import load_checkpoint
from streamcap.model.decoding import greedy_decode
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.metrics_sink import read_metrics

STEPS, SAMPLES = 90, 16


def test_tiny_model_overfits_16_samples_and_greedy_reproduces_their_captions(redis_url, keys, r, tmp_path):
    from streamcap.trainer.train import run

    samples = demo_samples(seed=3, start=0, count=SAMPLES, image_size=64)
    # One shard of all 16: every batch, fresh or replayed, is the whole set, so what the model
    # sees does not depend on when the loader switches to replays (a busy machine's timing).
    add_part(r, keys, tmp_path / "shards", "demo", 0, samples)
    demo_tokenizer(samples).save(tmp_path / "vocab.txt")
    cfg = TrainerSettings(
        redis_url=redis_url,
        namespace=keys.namespace,
        shard_dir=tmp_path / "shards",
        checkpoint_dir=tmp_path / "ck",
        run="overfit",
        tokenizer=tmp_path / "vocab.txt",
        preset="tiny",
        image_size=32,
        max_steps=STEPS,
        batch_size=SAMPLES,
        loader_workers=0,
        shuffle_buffer=SAMPLES,
        fresh_wait_ms=100,
        lr=3e-3,
        warmup_steps=10,
        aug_max=0.0,
        checkpoint_every=10_000,
        log_every=10,
        sample_every=0,
        histogram_every=0,
    )
    assert run(cfg) == 0  # on one OpenMP thread (tests/conftest.py)
    losses = [rec["loss/ce"] for rec in read_metrics(tmp_path / "ck" / "overfit" / "metrics.jsonl")]
    assert losses[0] > 3.0 and losses[-1] < 0.1

    ckpt = load_checkpoint(tmp_path / "ck" / "overfit" / f"step-{STEPS:08d}.pt")
    transform = image_transform(ckpt.config)
    images = torch.stack([transform(Image.open(io.BytesIO(s.jpeg))) for s in samples])  # [16,3,32,32]
    predicted = [ckpt.tokenizer.decode(ids) for ids in greedy_decode(ckpt.model, images, max_len=30)]
    expected = [ckpt.tokenizer.decode(ckpt.tokenizer.encode(s.caption)) for s in samples]
    matches = sum(p == e for p, e in zip(predicted, expected))
    assert matches >= SAMPLES - 1, list(zip(predicted, expected))
