"""Decoding: KV cache == recomputation, beam search == exhaustive search, batch == one at a time."""

from __future__ import annotations

import itertools

import pytest
import torch

from streamcap.model.caption_model import CaptionModel, ModelConfig
from streamcap.model.decoding import beam_search, beam_search_with_scores, greedy_decode, length_penalty

# [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 and two words: three tokens may be generated (UNK, 4, 5).
VOCAB = 6
FREE_TOKENS = (1, 4, 5)


def sharp_model(vocab: int = VOCAB, seed: int = 0, max_len: int = 12) -> CaptionModel:
    """A tiny model with large random weights, so that next-token distributions are far from flat."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        backbone="resnet10",
        image_size=32,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=32,
        max_len=max_len,
        vocab_size=vocab,
        dropout=0.0,
        pretrained=False,
    )
    model = CaptionModel(cfg).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.7)
    return model


def sequence_scores(model, image, seqs, alpha):
    """Exact length-normalised log-probabilities of captions (each followed by EOS), by full passes."""
    cfg = model.cfg
    width = max(len(s) for s in seqs) + 1
    tokens = torch.full((len(seqs), width), cfg.pad_id)
    targets = torch.full((len(seqs), width), -1)
    for i, s in enumerate(seqs):
        tokens[i, : len(s) + 1] = torch.tensor([cfg.bos_id, *s])
        targets[i, : len(s) + 1] = torch.tensor([*s, cfg.eos_id])
    with torch.no_grad():
        logp = torch.log_softmax(model(image.expand(len(seqs), -1, -1, -1), tokens).float(), dim=-1)
    picked = logp.gather(2, targets.clamp(min=0)[..., None])[..., 0] * (targets >= 0)
    return [float(picked[i].sum()) / length_penalty(len(s) + 1, alpha) for i, s in enumerate(seqs)]


def has_repeat(seq, n):
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("alpha,min_len,no_repeat", [(0.6, 0, 0), (0.0, 0, 0), (1.5, 2, 0), (0.6, 1, 2)])
def test_beam_search_matches_exhaustive_search(alpha, min_len, no_repeat):
    max_len = 4
    model = sharp_model(seed=int(alpha * 10) + min_len)
    image = torch.randn(1, 3, 32, 32)
    seqs = [list(s) for n in range(min_len, max_len + 1) for s in itertools.product(FREE_TOKENS, repeat=n)]
    if no_repeat:
        seqs = [s for s in seqs if not has_repeat(s, no_repeat)]
    scores = sequence_scores(model, image, seqs, alpha)
    best = max(range(len(seqs)), key=scores.__getitem__)
    # A beam as wide as the candidates of the widest step (every prefix of max_len - 1 tokens,
    # each followed by a free token or EOS) keeps every prefix alive and ranks every EOS among
    # its top beam_size: the search is exact.
    [(ids, score)] = beam_search_with_scores(
        model,
        image,
        beam_size=(len(FREE_TOKENS) + 1) * len(FREE_TOKENS) ** (max_len - 1),
        alpha=alpha,
        max_len=max_len,
        min_len=min_len,
        no_repeat_ngram=no_repeat,
    )
    assert ids == seqs[best]
    assert score == pytest.approx(scores[best], abs=1e-5)


def test_default_beam_is_exact_when_it_covers_every_candidate():
    model = sharp_model(vocab=5, seed=3)  # free tokens UNK and 4: at most 2 prefixes x (UNK, 4, EOS) < 5 + 1
    image = torch.randn(1, 3, 32, 32)
    seqs = [list(s) for n in range(3) for s in itertools.product((1, 4), repeat=n)]
    scores = sequence_scores(model, image, seqs, 0.6)
    [(ids, score)] = beam_search_with_scores(model, image, max_len=2)
    assert (ids, score) == (seqs[max(range(len(seqs)), key=scores.__getitem__)], pytest.approx(max(scores), abs=1e-5))


def constant_model(logits: list[float]) -> CaptionModel:
    """A real CaptionModel whose next-token logits are `logits` after any prefix and image."""
    model = sharp_model(vocab=len(logits), max_len=40)
    with torch.no_grad():
        # ln_f outputs its bias e_0 whatever the input, so the tied projection yields column 0.
        model.decoder.ln_f.weight.zero_()
        model.decoder.ln_f.bias.zero_()
        model.decoder.ln_f.bias[0] = 1.0
        model.decoder.tok_emb.weight[:, 0] = torch.tensor(logits)
    return model


def test_eos_finishes_a_beam_only_among_the_top_candidates():
    # EOS is likely (p ~ 0.08 at every step) but never among the top 5: greedy runs to max_len, and
    # a search that admitted every beam's EOS returned the empty caption (log 0.08 beats any
    # long caption's normalised score) for beam 1 and beam 5 alike.
    logits = [0.0] * 20
    logits[4] = 3.0
    for word in range(5, 11):
        logits[word] = 1.5
    logits[3] = 1.0  # EOS ([SEP])
    model = constant_model(logits)
    images = torch.randn(2, 3, 32, 32)
    greedy = greedy_decode(model, images, max_len=30)
    assert greedy == [[4] * 30] * 2
    assert beam_search(model, images, beam_size=1, max_len=30) == greedy
    for ids in beam_search(model, images, beam_size=5, max_len=30):
        assert len(ids) == 30
    # Where EOS is the top candidate the plain search still ends the caption at once.
    logits[3] = 4.0
    assert beam_search(constant_model(logits), images, beam_size=5, max_len=30, allow_empty=True) == [[], []]


def test_beam_search_never_returns_an_empty_caption_where_greedy_returns_one():
    # EOS is second at the first step (p ~ 0.35) and the word first: greedy says "4 4 4 ...", but
    # the empty caption's score, log 0.35 / lp(1) = -1.0, beats every long caption's (about -0.9
    # per token, normalised by lp <= 3.4). Beam 5, alpha 0.6: the plain search returns it empty.
    logits = [0.0] * 20
    logits[4], logits[3] = 3.0, 2.6
    model = constant_model(logits)
    images = torch.randn(3, 3, 32, 32)
    greedy = greedy_decode(model, images, max_len=20)
    assert all(greedy)
    assert beam_search(model, images, beam_size=5, alpha=0.6, max_len=20, allow_empty=True) == [[], [], []]
    fixed = beam_search(model, images, beam_size=5, alpha=0.6, max_len=20)
    assert all(fixed) and fixed == beam_search(model, images, beam_size=5, alpha=0.6, max_len=20, min_len=1)
    # Images with a non-empty best caption are left exactly as the plain search had them.
    other = sharp_model(vocab=30, max_len=16, seed=11)
    pics = torch.randn(4, 3, 32, 32)
    plain = beam_search(other, pics, beam_size=5, max_len=12, allow_empty=True)
    assert all(plain) and beam_search(other, pics, beam_size=5, max_len=12) == plain


def test_beam_of_one_is_greedy():
    model = sharp_model(vocab=30, max_len=16, seed=11)
    images = torch.randn(6, 3, 32, 32)
    for min_len in (0, 3):
        greedy = greedy_decode(model, images, max_len=12, min_len=min_len)
        assert beam_search(model, images, beam_size=1, alpha=0.0, max_len=12, min_len=min_len) == greedy


def test_cached_step_logits_equal_full_recomputation():
    model = sharp_model(vocab=30, max_len=16)
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(1, 30, (3, 12))
    with torch.no_grad():
        memory = model.encode(images)
        full = model.decoder(tokens, memory)
        cache = model.decoder.init_cache(memory)
        chunks = [model.decoder.step(tokens[:, a:b], cache) for a, b in ((0, 1), (1, 2), (2, 5), (5, 6), (6, 12))]
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)


def test_beam_search_with_and_without_cache_agree():
    model = sharp_model(vocab=30, max_len=16)
    images = torch.randn(2, 3, 32, 32)
    a = beam_search_with_scores(model, images, max_len=10, no_repeat_ngram=2)
    b = beam_search_with_scores(model, images, max_len=10, no_repeat_ngram=2, use_cache=False)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert [x[1] for x in a] == pytest.approx([x[1] for x in b], abs=1e-5)
    assert greedy_decode(model, images, max_len=10) == greedy_decode(model, images, max_len=10, use_cache=False)


def test_batch_equals_one_at_a_time():
    model = sharp_model(vocab=30, max_len=16, seed=5)
    images = torch.randn(4, 3, 32, 32)
    batched = beam_search_with_scores(model, images, beam_size=4, max_len=12, min_len=1)
    single = [
        beam_search_with_scores(model, images[i : i + 1], beam_size=4, max_len=12, min_len=1)[0] for i in range(4)
    ]
    assert [b[0] for b in batched] == [s[0] for s in single]
    assert [b[1] for b in batched] == pytest.approx([s[1] for s in single], abs=1e-5)
    greedy = greedy_decode(model, images, max_len=12)
    assert greedy == [greedy_decode(model, images[i : i + 1], max_len=12)[0] for i in range(4)]


def test_length_limits_and_banned_tokens():
    model = sharp_model(vocab=30, max_len=16, seed=7)
    images = torch.randn(3, 3, 32, 32)
    for ids in beam_search(model, images, max_len=5, min_len=4) + greedy_decode(model, images, max_len=5, min_len=4):
        assert 4 <= len(ids) <= 5
        assert not {0, 2, 3} & set(ids)  # PAD, BOS, EOS never inside a caption
    for ids in beam_search(model, images, max_len=12, no_repeat_ngram=1):
        assert len(ids) == len(set(ids))
    long = beam_search(model, images, max_len=100, min_len=15)  # capped at max_len - 1 = 15 tokens
    assert all(len(ids) == 15 for ids in long)


def test_decoding_restores_training_mode_and_checks_arguments():
    model = sharp_model()
    model.train()
    greedy_decode(model, torch.randn(1, 3, 32, 32), max_len=3)
    assert model.training
    with pytest.raises(ValueError, match="min_len must be between 0 and max_len"):
        beam_search(model, torch.randn(1, 3, 32, 32), max_len=3, min_len=4)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        beam_search(model, torch.randn(1, 3, 32, 32), max_len=3, alpha=-1)


def test_length_penalty_is_gnmt():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 1.0) == 2.0
    assert length_penalty(10, 0.0) == 1.0
