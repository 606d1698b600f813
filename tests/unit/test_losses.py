"""The training loss: cross-entropy with padding ignored, and the EOS-suppression term."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from streamcap.trainer.losses import caption_loss, eos_suppression

PAD, BOS, EOS, V = 0, 2, 3, 10
NEG = -1e9


def logits_for(targets: torch.Tensor, eos_logit: float) -> torch.Tensor:
    """Logits [B, T, V] putting most mass on the target, with a chosen EOS logit."""
    logits = torch.zeros(*targets.shape, V)
    logits.scatter_(2, targets.unsqueeze(-1), 5.0)
    logits[..., EOS] = eos_logit
    return logits


def test_eos_term_is_zero_when_eos_probability_is_zero_before_min_position():
    targets = torch.tensor([[5, 6, 7, 8, 5, 6, 7, EOS]])  # EOS at position 7
    logits = logits_for(targets, eos_logit=NEG)
    logits[0, 7, EOS] = 5.0  # the true end: allowed
    term = eos_suppression(logits, targets, pad_id=PAD, eos_id=EOS, min_eos_position=15)
    assert term.item() == 0.0


def test_eos_term_is_positive_when_eos_is_likely_early():
    targets = torch.tensor([[5, 6, 7, 8, 5, 6, 7, EOS]])
    logits = logits_for(targets, eos_logit=1.0)
    term = eos_suppression(logits, targets, pad_id=PAD, eos_id=EOS, min_eos_position=15)
    assert term.item() > 0.0
    # only positions before min_eos_position count: with the limit at 0 nothing qualifies
    assert eos_suppression(logits, targets, pad_id=PAD, eos_id=EOS, min_eos_position=0).item() == 0.0


def test_a_true_short_caption_is_never_pushed_away_from_ending():
    # "a cat" + EOS, then padding: EOS is the target at position 2, before position 15
    targets = torch.tensor([[5, 6, EOS, PAD, PAD]])
    logits = logits_for(targets, eos_logit=NEG)
    logits[0, 2, EOS] = 20.0  # confident, correct end
    logits[0, 3:, EOS] = 20.0  # padding positions: ignored too
    assert eos_suppression(logits, targets, pad_id=PAD, eos_id=EOS, min_eos_position=15).item() == 0.0
    logits.requires_grad_(True)
    terms = caption_loss(logits, torch.cat([torch.tensor([[BOS]]), targets], 1), pad_id=PAD, eos_id=EOS, eos_weight=1.0)
    terms.total.backward()
    # the EOS logit at the true end only gets the cross-entropy's pull *towards* EOS (negative gradient)
    assert logits.grad[0, 2, EOS].item() <= 0.0


def test_eos_term_is_the_mean_probability_at_qualifying_positions():
    targets = torch.tensor([[5, 6, EOS]])
    logits = torch.zeros(1, 3, V)  # uniform: P(EOS) = 1/V everywhere
    term = eos_suppression(logits, targets, pad_id=PAD, eos_id=EOS, min_eos_position=15)
    assert math.isclose(term.item(), 1 / V, rel_tol=1e-6)


def test_cross_entropy_ignores_padding_and_matches_the_reference():
    tokens = torch.tensor([[BOS, 5, 6, EOS, PAD, PAD], [BOS, 7, 8, 9, 5, EOS]])
    torch.manual_seed(0)
    logits = torch.randn(2, 5, V)
    terms = caption_loss(logits, tokens, pad_id=PAD, eos_id=EOS, eos_weight=0.0)
    targets = tokens[:, 1:]
    keep = targets != PAD
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(terms.ce, expected)
    assert terms.eos.item() == 0.0 and torch.allclose(terms.total, terms.ce)
    # changing logits at padded positions changes nothing
    logits2 = logits.clone()
    logits2[0, 3:] += 100.0
    assert torch.allclose(caption_loss(logits2, tokens, pad_id=PAD, eos_id=EOS, eos_weight=0.0).ce, terms.ce)


def test_total_adds_the_weighted_eos_term_and_label_smoothing_changes_ce():
    tokens = torch.tensor([[BOS, 5, 6, 7, EOS]])
    logits = torch.zeros(1, 4, V)
    plain = caption_loss(logits, tokens, pad_id=PAD, eos_id=EOS, eos_weight=2.0)
    assert torch.allclose(plain.total, plain.ce + 2.0 * plain.eos)
    peaked = logits_for(tokens[:, 1:], eos_logit=0.0)
    smooth = caption_loss(peaked, tokens, pad_id=PAD, eos_id=EOS, eos_weight=0.0, label_smoothing=0.1)
    sharp = caption_loss(peaked, tokens, pad_id=PAD, eos_id=EOS, eos_weight=0.0)
    assert smooth.ce.item() > sharp.ce.item()
