"""The training loss: teacher-forced cross-entropy plus the original model's EOS suppression.

    terms = caption_loss(logits, tokens, pad_id=0, eos_id=3, min_eos_position=15, eos_weight=1.0)
    terms.total.backward(); terms.ce, terms.eos      # both logged separately

`logits[:, t]` predicts `tokens[:, t + 1]` (the model is fed tokens from BOS). Caption position
p is the p-th token after BOS, so the prediction made at input t is for position t.

EOS suppression: web captions make a model end too early. At every non-padding position
before `min_eos_position` whose target is *not* EOS, the probability the model gives EOS is
penalised (mean over those positions). A caption that truly ends before that position has EOS
as its target there, so it is never pushed away from ending.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossTerms:
    total: torch.Tensor  # what is back-propagated
    ce: torch.Tensor  # cross-entropy over non-padding targets
    eos: torch.Tensor  # mean P(EOS) at early non-EOS targets (unweighted)


def eos_suppression(
    logits: torch.Tensor, targets: torch.Tensor, *, pad_id: int, eos_id: int, min_eos_position: int
) -> torch.Tensor:
    """Mean probability of EOS where the target is a real, non-EOS token before `min_eos_position`.

    logits [B, T, V], targets [B, T]; zero when no position qualifies.
    """
    positions = torch.arange(targets.shape[1], device=targets.device)  # [T]
    mask = (targets != pad_id) & (targets != eos_id) & (positions < min_eos_position)[None, :]  # [B, T]
    # P(EOS) = exp(logit_EOS - logsumexp): no softmax over the vocabulary, and no branch or
    # boolean indexing that would make the host wait for the GPU every step.
    eos_prob = torch.exp(logits[..., eos_id].float() - torch.logsumexp(logits.float(), dim=-1))  # [B, T]
    weights = mask.to(eos_prob.dtype)
    return (eos_prob * weights).sum() / weights.sum().clamp(min=1.0)


def caption_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    pad_id: int,
    eos_id: int,
    min_eos_position: int = 15,
    eos_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> LossTerms:
    """Loss of logits [B, T-1, V] computed from inputs tokens[:, :-1] against tokens [B, T]."""
    targets = tokens[:, 1:]  # [B, T-1]
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )
    if eos_weight > 0:
        eos = eos_suppression(logits, targets, pad_id=pad_id, eos_id=eos_id, min_eos_position=min_eos_position)
    else:
        eos = ce.new_zeros(())
    return LossTerms(total=ce + eos_weight * eos, ce=ce, eos=eos)
