"""Beam-search decoding with and without the KV cache (streamcap.model.decoding), on CPU by default.

    .venv/bin/python benchmarks/decode.py                          # base preset, 8 images, beam 5, 20 tokens
    .venv/bin/python benchmarks/decode.py --preset tiny --images 32
    .venv/bin/python benchmarks/decode.py --device cuda --images 64

Every caption is forced to exactly --tokens tokens (min = max length), so both runs do the
same number of steps whatever the (random) weights say. The image encoder runs once per
image in both and is timed apart: "decode" figures exclude it, "end to end" include it.
Without the cache each step recomputes every earlier position (self-attention K/V of the
prefix and the image's cross-attention K/V), projecting only the last one onto the vocabulary.
Prints caption tokens/s for both, the ratio (goal >= 3x) and whether the captions agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from streamcap.model.caption_model import CaptionModel, ModelConfig, format_parameter_counts
from streamcap.model.decoding import beam_search_with_scores


def timed(fn, device: torch.device, repeats: int):
    """Best wall time of `repeats` calls after one warm-up call (and the last result)."""
    best, result = float("inf"), fn()
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(args.preset, pretrained=False, dropout=0.0)
    model = CaptionModel(cfg).to(device).eval()
    images = torch.randn(args.images, 3, cfg.image_size, cfg.image_size, device=device)
    print(f"preset {args.preset}: {format_parameter_counts(model.parameter_counts())}")
    print(
        f"{args.images} images of {cfg.image_size}px on {device} ({torch.get_num_threads()} threads), "
        f"beam {args.beam}, {args.tokens} tokens per caption, vocab {cfg.vocab_size}"
    )

    def decode(use_cache: bool):
        return beam_search_with_scores(
            model, images, beam_size=args.beam, max_len=args.tokens, min_len=args.tokens, use_cache=use_cache
        )

    with torch.no_grad():
        encode_s, _ = timed(lambda: model.encode(images), device, args.repeats)
        cached_s, cached = timed(lambda: decode(True), device, args.repeats)
        full_s, full = timed(lambda: decode(False), device, args.repeats)
    tokens = args.images * args.tokens
    agree = [c[0] for c in cached] == [f[0] for f in full]
    diff = max(abs(c[1] - f[1]) for c, f in zip(cached, full))
    print(f"encoder alone                 {encode_s:8.3f} s")
    for name, total in (("with KV cache", cached_s), ("without KV cache", full_s)):
        print(
            f"{name:17s} end to end {total:8.3f} s {tokens / total:9.1f} tokens/s | decode only "
            f"{total - encode_s:8.3f} s {tokens / max(total - encode_s, 1e-9):9.1f} tokens/s"
        )
    print(
        f"speed-up with the cache: {full_s / cached_s:.2f}x end to end, "
        f"{(full_s - encode_s) / max(cached_s - encode_s, 1e-9):.2f}x decoding (goal >= 3x)"
    )
    print(f"captions identical: {agree}; largest score difference {diff:.2e}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
