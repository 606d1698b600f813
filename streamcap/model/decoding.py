"""Caption decoding: greedy and batched beam search over a CaptionModel, with a KV cache.

    ids = greedy_decode(model, images, max_len=30)                      # list of id lists
    ids = beam_search(model, images, beam_size=5, alpha=0.6, max_len=30)   # never an empty caption
    [(ids, score), ...] = beam_search_with_scores(model, images, max_len=30, no_repeat_ngram=3)
    captions = [tok.decode(x) for x in ids]

Returned ids exclude BOS and EOS. The search space is every caption y_1..y_n followed by EOS
with min_len <= n <= max_len (at n = max_len only EOS may follow; PAD and BOS are never
generated). Beam search ranks finished captions by GNMT's length-normalised log-probability

    score(Y) = log P(Y) / lp(Y),   lp(Y) = ((5 + |Y|) / 6) ** alpha

where |Y| = n + 1 counts the EOS and log P(Y) includes it; alpha = 0 is the raw log-probability,
larger alpha favours longer captions. A live beam followed by EOS becomes a finished caption only
when that candidate ranks among the image's top `beam_size` of all live beams' continuations
(ties included), as in fairseq and Hugging Face; at max_len EOS is the only continuation, so every
live beam finishes. With beam_size 1 and alpha 0 the search is greedy decoding. It is exhaustive only
when the beam holds every candidate of every step. An image stops early once its best live beam can no
longer beat its beam_size-th finished caption (with log P <= 0 and alpha >= 0, a live beam's
best future score is its score / lp(max_len + 1)), so stopping changes no result.

`beam_search` never returns an empty caption (unless `allow_empty`): the empty caption's score is
log P(EOS | image) / lp(1), which a young model's likely-ish first EOS makes beat every long
caption's even where greedy decoding runs on, and an evaluation of nothing but empty captions
would score (and could be kept as best) while saying nothing. Images whose best caption is empty
are searched again with a minimum length of one token (fairseq's `min_len`, Hugging Face's
`min_new_tokens`): the best non-empty caption under the same score; the others are unchanged.
`beam_search_with_scores` is the plain search, empty captions included.

With the cache (default) each step feeds only the newest token: self-attention K/V of earlier
positions are kept per layer and the image's cross-attention K/V are computed once.
`use_cache=False` recomputes the whole prefix each step (the benchmark's baseline).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from streamcap.model.caption_model import CaptionModel

NEG_INF = float("-inf")


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(Y) = ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def greedy_decode(
    model: CaptionModel, images: torch.Tensor, *, max_len: int, min_len: int = 0, use_cache: bool = True
) -> list[list[int]]:
    """The most likely next token at each step, for a batch of normalised images [B,3,H,W]."""
    with _eval_mode(model):
        cfg = model.cfg
        max_len, min_len = _check_lengths(model, max_len, min_len)
        memory = model.encode(images)  # [B,S,D]
        b = memory.shape[0]
        step = _Stepper(model, memory, repeat=1, capacity=max_len + 1, use_cache=use_cache)
        tokens = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        for t in range(max_len + 1):
            logp = _allowed(step(tokens), model, t, min_len, max_len)  # [B,V]
            nxt = logp.argmax(dim=-1).masked_fill(done, cfg.pad_id)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == cfg.eos_id
            if bool(done.all()):
                break
        return [_caption_ids(row, cfg.eos_id) for row in tokens[:, 1:].tolist()]


def beam_search(
    model: CaptionModel,
    images: torch.Tensor,
    *,
    beam_size: int = 5,
    alpha: float = 0.6,
    max_len: int,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
    use_cache: bool = True,
    allow_empty: bool = False,
) -> list[list[int]]:
    """The best caption per image (ids without BOS/EOS); see the module docstring for the score
    and for why an empty caption is searched again with at least one token."""
    options = dict(beam_size=beam_size, alpha=alpha, max_len=max_len, no_repeat_ngram=no_repeat_ngram)
    found = [ids for ids, _ in beam_search_with_scores(model, images, min_len=min_len, use_cache=use_cache, **options)]
    empty = [i for i, ids in enumerate(found) if not ids]
    if empty and not allow_empty:
        again = beam_search_with_scores(model, images[empty], min_len=max(min_len, 1), use_cache=use_cache, **options)
        for i, (ids, _) in zip(empty, again):
            found[i] = ids
    return found


@torch.no_grad()
def beam_search_with_scores(
    model: CaptionModel,
    images: torch.Tensor,
    *,
    beam_size: int = 5,
    alpha: float = 0.6,
    max_len: int,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
    use_cache: bool = True,
) -> list[tuple[list[int], float]]:
    """(ids, length-normalised log-probability) of the best caption per image."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (the early-stopping bound relies on it), got {alpha}")
    with _eval_mode(model):
        cfg, k = model.cfg, beam_size
        max_len, min_len = _check_lengths(model, max_len, min_len)
        memory = model.encode(images)
        b, device = memory.shape[0], memory.device
        step = _Stepper(model, memory, repeat=k, capacity=max_len + 1, use_cache=use_cache)
        tokens = torch.full((b * k, 1), cfg.bos_id, dtype=torch.long, device=device)  # row = image * k + beam
        scores = torch.full((b, k), NEG_INF, device=device)
        scores[:, 0] = 0.0  # all beams start equal: keep one, or the first step fills the beam with copies
        finished = _Finished(b, k, alpha)
        best_possible = length_penalty(max_len + 1, alpha)
        for t in range(max_len + 1):
            logp = _allowed(step(tokens), model, t, min_len, max_len)  # [B*K,V]
            if no_repeat_ngram:
                _ban_repeated_ngrams(logp, tokens, no_repeat_ngram)
            cand = scores[:, :, None] + logp.view(b, k, -1)  # [B,K,V]
            # EOS finishes a beam only where it ranks among the image's top k candidates (the
            # rule of fairseq and Hugging Face): admitting every live beam's EOS let a likely-ish
            # EOS at step 0 end a young model's captions empty where greedy decoding runs on.
            kth = cand.view(b, -1).topk(k, dim=1).values[:, -1:]  # [B,1]
            eos = cand[:, :, cfg.eos_id]
            finished.add(eos.masked_fill(eos < kth, NEG_INF), tokens, t + 1)
            if t == max_len:
                break
            cand[:, :, cfg.eos_id] = NEG_INF
            scores, flat = cand.view(b, -1).topk(k, dim=1)  # [B,K]
            vocab = cand.shape[2]
            rows = (torch.arange(b, device=device)[:, None] * k + flat // vocab).view(-1)
            tokens = torch.cat([tokens[rows], (flat % vocab).view(-1, 1)], dim=1)
            step.reorder(rows)
            finished.close_hopeless(scores[:, 0].tolist(), best_possible)
            if finished.all_done():
                break
            scores[finished.done_mask(device)] = NEG_INF
        return finished.best()


class _Finished:
    """Per image, the best `k` finished captions as (normalised score, ids), best first."""

    def __init__(self, images: int, k: int, alpha: float) -> None:
        self.k, self.alpha = k, alpha
        self.hyps: list[list[tuple[float, list[int]]]] = [[] for _ in range(images)]
        self.done = [False] * images

    def add(self, eos_scores: torch.Tensor, tokens: torch.Tensor, length: int) -> None:
        """Each live beam followed by EOS: eos_scores [B,K] raw log-probs, captions of `length`-1 tokens."""
        lp = length_penalty(length, self.alpha)
        rows = None
        for b, beam_scores in enumerate(eos_scores.tolist()):
            if self.done[b]:
                continue
            for beam, raw in enumerate(beam_scores):
                if raw == NEG_INF:
                    continue
                score, hyps = raw / lp, self.hyps[b]
                if len(hyps) >= self.k and score <= hyps[-1][0]:
                    continue
                rows = tokens.tolist() if rows is None else rows
                # Keep best first; bisect on negated scores keeps earlier equal scores first.
                keys = [-s for s, _ in hyps]
                hyps.insert(bisect.bisect_right(keys, -score), (score, rows[b * self.k + beam][1:]))
                del hyps[self.k :]

    def close_hopeless(self, best_live: list[float], best_possible_lp: float) -> None:
        for b, live in enumerate(best_live):
            hyps = self.hyps[b]
            if live == NEG_INF or (len(hyps) >= self.k and live / best_possible_lp <= hyps[-1][0]):
                self.done[b] = True

    def all_done(self) -> bool:
        return all(self.done)

    def done_mask(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.done, dtype=torch.bool, device=device)

    def best(self) -> list[tuple[list[int], float]]:
        return [(hyps[0][1], hyps[0][0]) if hyps else ([], NEG_INF) for hyps in self.hyps]


class _Stepper:
    """Next-token log-probs [N,V] of token prefixes [N,t], with or without the KV cache."""

    def __init__(
        self, model: CaptionModel, memory: torch.Tensor, *, repeat: int, capacity: int, use_cache: bool
    ) -> None:
        self.decoder = model.decoder
        if use_cache:
            self.cache = self.decoder.init_cache(memory, repeat=repeat, capacity=capacity)
        else:
            self.cache, self.memory = None, memory.repeat_interleave(repeat, dim=0)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache is None:  # every position again, but the vocabulary projection only for the last
            logits = self.decoder.logits(self.decoder.hidden(tokens, self.memory)[:, -1])
        else:
            logits = self.decoder.step(tokens[:, self.cache.length :], self.cache)[:, -1]
        return F.log_softmax(logits.float(), dim=-1)

    def reorder(self, rows: torch.Tensor) -> None:
        if self.cache is not None:  # without a cache the memory rows of one image are all equal
            self.cache.reorder(rows)


def _allowed(logp: torch.Tensor, model: CaptionModel, t: int, min_len: int, max_len: int) -> torch.Tensor:
    """Ban what may not come after t caption tokens: PAD, BOS, EOS before min_len, all but EOS at max_len."""
    cfg = model.cfg
    if t >= max_len:
        eos = logp[:, cfg.eos_id].clone()
        logp.fill_(NEG_INF)
        logp[:, cfg.eos_id] = eos
        return logp
    logp[:, cfg.pad_id] = NEG_INF
    logp[:, cfg.bos_id] = NEG_INF
    if t < min_len:
        logp[:, cfg.eos_id] = NEG_INF
    return logp


def _ban_repeated_ngrams(logp: torch.Tensor, tokens: torch.Tensor, n: int) -> None:
    """Forbid any token that would complete an n-gram the caption already contains."""
    if tokens.shape[1] - 1 < n - 1:
        return
    for row, seq in enumerate(tokens[:, 1:].tolist()):
        prefix = seq[len(seq) - n + 1 :] if n > 1 else []
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i : i + n - 1] == prefix}
        if banned:
            logp[row, list(banned)] = NEG_INF


def _check_lengths(model: CaptionModel, max_len: int, min_len: int) -> tuple[int, int]:
    """(max_len, min_len) as asked, capped to what the model's positions allow (BOS + max_len
    tokens are fed)."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if not 0 <= min_len <= max_len:
        raise ValueError(f"min_len must be between 0 and max_len ({max_len}), got {min_len}")
    max_len = min(max_len, model.cfg.max_len - 1)
    return max_len, min(min_len, max_len)


def _caption_ids(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id)] if eos_id in row else row


@contextlib.contextmanager
def _eval_mode(model: CaptionModel) -> Iterator[None]:
    """Decode without dropout and with BatchNorm's running statistics; restore the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
