"""The Tuna objective as pure tensor functions (no model, no data loading).

Candidates of one instruction arrive best-first in slots ``[B, S]``. The student's score of candidate k is its
length-normalised log-likelihood ``s_k = (1/|y_k|^β) Σ_t log p(y_k,t | x, y_k,<t)`` over response tokens
(including the final EOS). The ranking term is the hinge ``max(0, s_j − s_i + (j − i)·m)`` for every pair
i < j, and the MLE term is a token-mean negative log-likelihood.

Two reductions of the pairs (PAPER.md §4.3-§4.4, §12):

* ``per_distance_mean`` (released code, default): the pairs at each rank distance d are averaged over the
  batch (``nn.MarginRankingLoss(margin=d·m)``), then summed over d.
* ``all_pairs_sum`` (the paper, per secondary sources): every pair of a record is summed, then records are
  averaged over the batch.

MLE targets: ``all`` (released code: token mean over every candidate's response tokens), ``best`` (the
top-ranked candidate), ``gold`` (the reference response, carried in an extra slot that does not rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuna.config import LossConfig, MarginScaling, MleTarget, PairReduction  # noqa: F401  (re-exported)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """``log_softmax(logits).gather(-1, index)`` without a second vocabulary-sized tensor.

    Computed as ``logit[index] − logsumexp(logits)`` in fp32, ``chunk_rows`` positions at a time, so the
    extra memory is one chunk's worth instead of a full ``[*, T, V]`` copy."""
    flat = logits.reshape(-1, logits.shape[-1])
    idx = index.reshape(-1)
    out = []
    for start in range(0, flat.shape[0], chunk_rows):
        rows = flat[start : start + chunk_rows]
        picked = rows.gather(-1, idx[start : start + chunk_rows, None]).squeeze(-1).float()
        out.append(picked - torch.logsumexp(rows.float(), dim=-1))
    return torch.cat(out).reshape(index.shape) if out else flat.new_zeros(index.shape, dtype=torch.float32)


def shifted_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal shift: logits at t−1 predict token t. Returns ``(logps [.., T-1], mask [.., T-1])`` where masked
    label positions (``-100``) get log-prob 0."""
    logits = logits[..., :-1, :]
    target = labels[..., 1:]
    mask = target != -100
    logps = selective_log_softmax(logits, target.clamp_min(0))
    return logps * mask, mask


def sequence_scores(token_logps: torch.Tensor, mask: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Length-normalised sequence log-likelihood ``Σ logp / len**beta`` over the last dim; empty rows score 0."""
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)
    length = mask.sum(-1)
    return total / length.clamp_min(1.0).pow(beta)


def ranking_loss(
    scores: torch.Tensor,
    margin: float = 0.1,
    pair_reduction: PairReduction = "per_distance_mean",
    candidate_mask: torch.Tensor | None = None,
    margin_scaling: MarginScaling = "rank_distance",
) -> torch.Tensor:
    """The Tuna margin ranking loss on ``scores [B, N]`` ordered best-first.

    ``candidate_mask [B, N]`` marks real candidates (records with fewer than N are padded); pairs with a
    padded member are ignored. With all candidates real and ``per_distance_mean`` this equals the released
    code's ``Σ_d MarginRankingLoss(margin=d·m)(s[:, :-d], s[:, d:], 1)``."""
    b, n = scores.shape
    if candidate_mask is None:
        candidate_mask = torch.ones_like(scores, dtype=torch.bool)
    total = scores.new_zeros(())
    if n < 2:
        return total
    if pair_reduction == "per_distance_mean":
        for d in range(1, n):
            better, worse = scores[:, :-d], scores[:, d:]
            valid = (candidate_mask[:, :-d] & candidate_mask[:, d:]).to(scores.dtype)
            m = margin * d if margin_scaling == "rank_distance" else margin
            hinge = torch.clamp_min(worse - better + m, 0.0) * valid
            count = valid.sum()
            if count > 0:
                total = total + hinge.sum() / count
        return total
    if pair_reduction == "all_pairs_sum":
        i, j = torch.triu_indices(n, n, offset=1, device=scores.device)
        dist = (j - i).to(scores.dtype)
        m = margin * dist if margin_scaling == "rank_distance" else torch.full_like(dist, margin)
        hinge = torch.clamp_min(scores[:, j] - scores[:, i] + m, 0.0)
        valid = (candidate_mask[:, i] & candidate_mask[:, j]).to(scores.dtype)
        return (hinge * valid).sum(-1).mean()
    raise ValueError(f"unknown pair_reduction {pair_reduction!r}")


def mle_loss(token_logps: torch.Tensor, token_mask: torch.Tensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean negative log-likelihood over ``token_mask [B, S, T]`` restricted to slots in ``slot_mask [B, S]``."""
    mask = token_mask if slot_mask is None else token_mask & slot_mask[..., None]
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp_min(1.0)


def pair_accuracy(scores: torch.Tensor, candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of pairs i < j (both real) that the student orders like the ranking (s_i > s_j)."""
    n = scores.shape[-1]
    if n < 2:
        return scores.new_tensor(float("nan"))
    if candidate_mask is None:
        candidate_mask = torch.ones_like(scores, dtype=torch.bool)
    i, j = torch.triu_indices(n, n, offset=1, device=scores.device)
    valid = candidate_mask[:, i] & candidate_mask[:, j]
    right = (scores[:, i] > scores[:, j]) & valid
    return right.sum().float() / valid.sum().clamp_min(1).float()


@dataclass
class LossOutput:
    loss: torch.Tensor
    rank: torch.Tensor
    mle: torch.Tensor
    scores: torch.Tensor
    """[B, N] student scores of the ranked slots (detached copies are logged)."""
    rank_mask: torch.Tensor


def tuna_loss(
    token_logps: torch.Tensor,
    token_mask: torch.Tensor,
    rank_mask: torch.Tensor,
    gold_mask: torch.Tensor | None,
    cfg: LossConfig,
) -> LossOutput:
    """L = mle_weight · L_MLE + rank_weight · L_rank.

    ``token_logps, token_mask [B, S, T]``: per-token log-probs of each slot's response tokens.
    ``rank_mask [B, S]``: slots that are ranked candidates (best-first, left-aligned).
    ``gold_mask [B, S]``: the slot holding the gold response (only for ``mle_target='gold'``)."""
    scores_all = sequence_scores(token_logps, token_mask, cfg.beta)
    n_rank = int(rank_mask.sum(-1).max().item()) if rank_mask.numel() else 0
    scores = scores_all[:, :n_rank]
    cmask = rank_mask[:, :n_rank]
    rank = ranking_loss(scores, cfg.margin, cfg.pair_reduction, cmask, cfg.margin_scaling) if cfg.rank_weight else scores.new_zeros(())
    if cfg.mle_target == "all":
        slots = rank_mask
    elif cfg.mle_target == "best":
        slots = torch.zeros_like(rank_mask)
        slots[:, 0] = rank_mask[:, 0]
    else:
        if gold_mask is None or not bool(gold_mask.any()):
            raise ValueError("mle_target='gold' needs records with a gold response")
        slots = gold_mask
    mle = mle_loss(token_logps, token_mask, slots) if cfg.mle_weight else scores.new_zeros(())
    loss = cfg.mle_weight * mle + cfg.rank_weight * rank
    return LossOutput(loss=loss, rank=rank, mle=mle, scores=scores, rank_mask=cmask)


def reference_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain full-vocabulary path (what the released code does); kept for equality tests and benchmarks."""
    logp = F.log_softmax(logits[..., :-1, :].float(), dim=-1)
    target = labels[..., 1:]
    mask = target != -100
    return logp.gather(-1, target.clamp_min(0)[..., None]).squeeze(-1) * mask
