"""BASELINE: a faithful re-implementation of the released code's training step (microsoft/LMOps
``tuna/src/custom.py``, ``TunaTrainer.compute_loss`` L24-56; docs/fidelity.md, rows "score", "rank-loss", "mle"),
for benchmarks only.

* the [B, N, T] batch is flattened to one padded [B·N, T] forward;
* ``model(..., labels=labels)`` so transformers also computes its own causal-LM cross-entropy (``output.loss``,
  the MLE term: token mean over every candidate's response tokens);
* ``F.log_softmax`` over the full vocabulary, ``gather`` of the labels, token mean → length-normalised scores;
* ``Σ_d nn.MarginRankingLoss(margin=d·m)(s[:, :-d], s[:, d:], 1)`` as a Python loop over rank distances;
* ``loss = mle_weight · output.loss + rank_loss``.

(The released code runs this in fp16 under DeepSpeed; here both this and our step run in the same precision.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def released_ranking_loss(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """BRIO's ``RankingLoss`` candidate term as the released code uses it (no gold term)."""
    total = scores.new_zeros(())
    n = scores.size(1)
    for i in range(1, n):
        pos, neg = scores[:, :-i], scores[:, i:]
        pos, neg = pos.contiguous().view(-1), neg.contiguous().view(-1)
        ones = torch.ones_like(pos)
        total = total + torch.nn.MarginRankingLoss(margin * i)(pos, neg, ones)
    return total


def released_compute_loss(model, batch: dict[str, torch.Tensor], *, margin: float = 0.1, mle_weight: float = 1.0):
    input_ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b, n, t = input_ids.shape
    input_ids, attn, labels = input_ids.view(b * n, t), attn.view(b * n, t), labels.view(b * n, t)
    output = model(input_ids=input_ids, attention_mask=attn, labels=labels)
    logits = output.logits[:, :-1]
    target = labels[:, 1:].clone()
    mask = target != -100
    target[~mask] = 0
    probs = F.log_softmax(logits, dim=-1)
    scores = torch.gather(probs, -1, target.unsqueeze(-1)).squeeze(-1)
    scores = (scores * mask).sum(-1) / mask.sum(-1)
    scores = scores.view(b, n)
    rank_loss = released_ranking_loss(scores, margin)
    return mle_weight * output.loss + rank_loss
