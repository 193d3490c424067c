"""The Tuna objective as pure tensor functions (no model, no data loading).

Candidates of one instruction arrive best-first in slots ``[B, S]``. The student's score of candidate k is its
length-normalised log-likelihood ``s_k = (1/|y_k|^β) Σ_t log p(y_k,t | x, y_k,<t)`` over response tokens
(including the final EOS). The ranking term is the hinge ``max(0, s_j − s_i + (j − i)·m)`` for every pair
i < j, and the MLE term is a token-mean negative log-likelihood.

Two reductions of the pairs (docs/fidelity.md, row "rank-loss"):

* ``per_distance_mean`` (released code, default; ``tuna/src/custom.py`` ``compute_loss`` L44-52): the pairs at
  each rank distance d are averaged over the batch (``nn.MarginRankingLoss(margin=d·m)``), then summed over d.
* ``all_pairs_sum`` (the paper, per secondary sources): every pair of a record is summed, then records are
  averaged over the batch.

MLE targets: ``all`` (released code: token mean over every candidate's response tokens), ``best`` (the
top-ranked candidate), ``gold`` (the reference response, carried in an extra slot that does not rank).

Other ways to learn from the same ranked sets sit beside it, selected by ``loss.objective``: each is a pure
function over ``[B, N]`` score tensors and masks (``*_objective`` below, over :class:`ObjectiveInputs`) with one
entry in the registry :data:`tuna.objectives.OBJECTIVES` (docs/objectives.md has the table). Ties between candidates with equal ranker scores are either
ordered by position (``loss.ties: ordered``, the released code's behaviour) or never compared (``skip``): see
:func:`tie_groups` and :func:`preference_pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuna.config import (  # noqa: F401  (re-exported)
    LossConfig,
    MarginScaling,
    MleTarget,
    Objective,
    PairReduction,
    PairSelection,
    Ties,
)
from tuna.objectives import OBJECTIVES, ObjectiveSpec  # noqa: F401  (re-exported)


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
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Tuna margin ranking loss on ``scores [B, N]`` ordered best-first.

    ``candidate_mask [B, N]`` marks real candidates (records with fewer than N are padded); pairs with a
    padded member are ignored. With all candidates real and ``per_distance_mean`` this equals the released
    code's ``Σ_d MarginRankingLoss(margin=d·m)(s[:, :-d], s[:, d:], 1)``.

    ``groups [B, N]`` (from :func:`tie_groups`, for ``ties: skip``): pairs within one tie group get no hinge, and
    the rank distance of a pair is measured between the mean positions of the two groups (scores 3, 2, 2, 1 sit at
    0, 1.5, 1.5, 3), so the loss does not depend on the file order of tied candidates; ``per_distance_mean``
    then averages the pairs of each such distance. Without ties this is the plain loss."""
    b, n = scores.shape
    if candidate_mask is None:
        candidate_mask = torch.ones_like(scores, dtype=torch.bool)
    total = scores.new_zeros(())
    if n < 2:
        return total
    if groups is not None:
        return _tied_ranking_loss(scores, margin, pair_reduction, candidate_mask, margin_scaling, groups)
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


def _tied_ranking_loss(scores: torch.Tensor, margin: float, pair_reduction: PairReduction, candidate_mask: torch.Tensor,
                       margin_scaling: MarginScaling, groups: torch.Tensor) -> torch.Tensor:
    pairs = preference_pairs(candidate_mask, groups)  # [B, i, j]: i ranks above j
    pos = group_positions(groups)
    dist = pos[:, None, :] - pos[:, :, None]
    m = margin * dist if margin_scaling == "rank_distance" else torch.full_like(dist, margin)
    hinge = torch.clamp_min(scores[:, None, :] - scores[:, :, None] + m, 0.0)  # s_j − s_i + m
    if pair_reduction == "per_distance_mean":
        total = scores.new_zeros(())
        for d in torch.unique(dist[pairs]).tolist():  # multiples of 0.5: exact in floating point
            sel = pairs & (dist == d)
            total = total + (hinge * sel).sum() / sel.sum()
        return total
    if pair_reduction == "all_pairs_sum":
        return (hinge * pairs).sum((1, 2)).mean()
    raise ValueError(f"unknown pair_reduction {pair_reduction!r}")


def mle_loss(token_logps: torch.Tensor, token_mask: torch.Tensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean negative log-likelihood over ``token_mask [B, S, T]`` restricted to slots in ``slot_mask [B, S]``."""
    mask = token_mask if slot_mask is None else token_mask & slot_mask[..., None]
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp_min(1.0)


def pair_accuracy(scores: torch.Tensor, candidate_mask: torch.Tensor | None = None,
                  pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Share of pairs i < j (both real) that the student orders like the ranking (s_i > s_j).

    ``pairs [B, N, N]`` (from :func:`preference_pairs`): count these pairs instead (e.g. without tied ones)."""
    n = scores.shape[-1]
    if n < 2:
        return scores.new_tensor(float("nan"))
    if pairs is not None:
        right = (scores[:, :, None] > scores[:, None, :]) & pairs
        return right.sum().float() / pairs.sum().clamp_min(1).float()
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
    """[B, N] student scores of the ranked slots, sum/len**beta (detached copies are logged)."""
    rank_mask: torch.Tensor
    pairs: torch.Tensor | None = None
    """[B, N, N] the pairs (i ranked above j) the objective compares; pair accuracy counts these."""
    rewards: torch.Tensor | None = None
    """[B, N] the objective's own per-candidate reward when it is not ``scores`` (DPO/IPO implicit rewards)."""


def mle_settings(cfg: LossConfig) -> tuple[float, MleTarget]:
    """``(mle_weight, mle_target)`` with the objective's own values where the config leaves them None."""
    spec = OBJECTIVES[cfg.objective]
    weight = spec.mle_weight if cfg.mle_weight is None else cfg.mle_weight
    return weight, (spec.mle_target if cfg.mle_target is None else cfg.mle_target)


def mle_slots(rank_mask: torch.Tensor, gold_mask: torch.Tensor | None, target: MleTarget) -> torch.Tensor:
    """[B, S] the slots whose responses the MLE term trains on."""
    if target == "all":
        return rank_mask
    if target == "best":
        slots = torch.zeros_like(rank_mask)
        slots[:, 0] = rank_mask[:, 0]
        return slots
    if gold_mask is None or not bool(gold_mask.any()):
        raise ValueError("mle_target='gold' needs records with a gold response")
    return gold_mask


def tuna_loss(
    token_logps: torch.Tensor,
    token_mask: torch.Tensor,
    rank_mask: torch.Tensor,
    gold_mask: torch.Tensor | None,
    cfg: LossConfig,
    rank_scores: torch.Tensor | None = None,
) -> LossOutput:
    """L = mle_weight · L_MLE + rank_weight · L_rank.

    ``token_logps, token_mask [B, S, T]``: per-token log-probs of each slot's response tokens.
    ``rank_mask [B, S]``: slots that are ranked candidates (best-first, left-aligned).
    ``gold_mask [B, S]``: the slot holding the gold response (only for ``mle_target='gold'``).
    ``rank_scores [B, S]``: the ranker's scores (NaN: unknown), used by ``ties: skip``."""
    scores_all = sequence_scores(token_logps, token_mask, cfg.beta)
    n_rank = int(rank_mask.sum(-1).max().item()) if rank_mask.numel() else 0
    scores = scores_all[:, :n_rank]
    cmask = rank_mask[:, :n_rank]
    groups = tie_groups(rank_scores[:, :n_rank], cmask, cfg.ties) if cfg.ties == "skip" and rank_scores is not None else None
    rank = (ranking_loss(scores, cfg.margin, cfg.pair_reduction, cmask, cfg.margin_scaling, groups=groups)
            if cfg.rank_weight else scores.new_zeros(()))
    mle_weight, mle_target = mle_settings(cfg)
    slots = mle_slots(rank_mask, gold_mask, mle_target)
    mle = mle_loss(token_logps, token_mask, slots) if mle_weight else scores.new_zeros(())
    loss = mle_weight * mle + cfg.rank_weight * rank
    pairs = preference_pairs(cmask, groups if groups is not None else tie_groups(None, cmask, "ordered"))
    return LossOutput(loss=loss, rank=rank, mle=mle, scores=scores, rank_mask=cmask, pairs=pairs)


def reference_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain full-vocabulary path (what the released code does); kept for equality tests and benchmarks."""
    logp = F.log_softmax(logits[..., :-1, :].float(), dim=-1)
    target = labels[..., 1:]
    mask = target != -100
    return logp.gather(-1, target.clamp_min(0)[..., None]).squeeze(-1) * mask


# ----------------------------------------------------------------------------------------------- ties and pairs


def tie_groups(rank_scores: torch.Tensor | None, candidate_mask: torch.Tensor, ties: Ties) -> torch.Tensor:
    """[B, N] the tie group of each best-first candidate: 0, 1, 1, 2 for ranker scores 3, 2, 2, 1.

    A group is a run of neighbouring real candidates with equal, known scores (ranked sets are sorted, so equal
    scores are neighbours; NaN, an unknown score, ties with nothing). ``ties='ordered'`` or no scores: each
    candidate is its own group, i.e. ties are ordered by position as the released code's stable sort leaves them."""
    b, n = candidate_mask.shape
    pos = torch.arange(n, device=candidate_mask.device).expand(b, n)
    if ties == "ordered" or rank_scores is None or n < 2:
        return pos.clone()
    same = (rank_scores[:, 1:] == rank_scores[:, :-1]) & candidate_mask[:, 1:] & candidate_mask[:, :-1]
    new_group = torch.cat([torch.zeros_like(same[:, :1]), ~same], dim=1).long()
    return new_group.cumsum(1)


def group_positions(groups: torch.Tensor) -> torch.Tensor:
    """[B, N] the mean position of each candidate's tie group (its own position when it is not tied)."""
    n = groups.shape[1]
    pos = torch.arange(n, device=groups.device, dtype=torch.float32)
    same = (groups[:, :, None] == groups[:, None, :]).float()
    return (same * pos).sum(-1) / same.sum(-1)


def preference_pairs(candidate_mask: torch.Tensor, groups: torch.Tensor, pairs: PairSelection = "all") -> torch.Tensor:
    """[B, N, N] True where real candidate i is ranked above real candidate j (its tie group comes first).

    ``adjacent``: only pairs from neighbouring groups (positions k, k+1 when nothing is tied)."""
    real = candidate_mask[:, :, None] & candidate_mask[:, None, :]
    gi, gj = groups[:, :, None], groups[:, None, :]
    above = (gj == gi + 1) if pairs == "adjacent" else (gi < gj)
    return above & real


def _pair_mean(losses: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean of ``losses [B, N, N]`` over the selected pairs of the whole batch (0 when there are none)."""
    count = pairs.sum()
    if count == 0:
        return losses.new_zeros(())
    return torch.where(pairs, losses, torch.zeros_like(losses)).sum() / count


# ----------------------------------------------------------------------------------------------- objectives


def rrhf_loss(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """RRHF's ranking term (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback
    without tears"): ``L_rank = Σ_{r_i > r_j} max(0, p_j − p_i)`` with ``p = Σ log π / |y|^β`` (RRHF's
    ``length_penalty``, 1 by default), summed over a record's pairs and averaged over records.

    As GanjinZero/RRHF ``train.py`` ``rrhf_loss`` (``aval = (rw_diff > 0) & (diff < 0)``; ``-diff[aval].sum()``, one
    record per device batch): no margin; pairs whose rewards are equal are never compared there, which is
    ``ties: skip`` here. Its SFT term on the best candidate is the shared MLE term (``mle_target: best``)."""
    diff = scores[:, None, :] - scores[:, :, None]  # [b, i, j] = p_j − p_i, with i ranked above j
    return (torch.relu(diff) * pairs).sum((1, 2)).mean()


def plackett_luce_loss(scores: torch.Tensor, pairs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Negative Plackett–Luce log-likelihood of a ranking, one softmax step per candidate, summed over a record's
    steps and averaged over records (ListMLE, Xia et al. 2008, "Listwise approach to learning to rank"):

        L = Σ_k [ log Σ_{j ∈ {k} ∪ W_k} exp(w_kj · s_j) − w_kk · s_k ],   W_k = {j : pairs[k, j]}

    ``W_k`` holds the candidates ranked below k (all later positions with ``ties: ordered``; only strictly worse
    tie groups with ``skip``, so tied candidates never meet in a softmax and a candidate with nothing below it
    adds no step). ``weights [B, N, N]`` scale the logits (PRO's temperature); None: 1."""
    b, n = scores.shape
    eye = torch.eye(n, dtype=torch.bool, device=scores.device).expand(b, n, n)
    if weights is None:
        weights = torch.ones((b, n, n), dtype=scores.dtype, device=scores.device)
    logits = (weights * scores[:, None, :]).masked_fill(~(pairs | eye), float("-inf"))  # the diagonal keeps rows finite
    own = torch.diagonal(weights, dim1=1, dim2=2) * scores
    steps = torch.logsumexp(logits, dim=-1) - own
    return torch.where(pairs.any(-1), steps, torch.zeros_like(steps)).sum(-1).mean()


def pro_weights(rank_scores: torch.Tensor, pairs: torch.Tensor, temperature: float | str) -> torch.Tensor:
    """PRO's logit scales ``w_kj`` (Song et al. 2023, "Preference Ranking Optimization for Human Alignment").

    ``dynamic``: ``w_kj = r_k − r_j`` (the inverse temperature 1/T_k^j from the ranker's scores r) and
    ``w_kk = max_j w_kj`` over the candidates below k, as AlibabaResearch/DAMO-ConvAI ``PRO/train/utils/
    process_manager.py`` ``compute_loss`` (``neg_temperatures = pos_reward - neg_reward``, ``pos_temperature =
    max(neg_temperatures)``). A fixed temperature T: every ``w = 1/T``."""
    b, n = rank_scores.shape
    if temperature != "dynamic":
        return torch.full((b, n, n), 1.0 / float(temperature), dtype=torch.float32, device=rank_scores.device)
    gap = (rank_scores[:, :, None] - rank_scores[:, None, :]).float()
    gap = torch.where(pairs, gap, torch.zeros_like(gap))
    top = gap.masked_fill(~pairs, float("-inf")).amax(-1)
    top = torch.where(pairs.any(-1), top, torch.zeros_like(top))
    eye = torch.eye(n, dtype=torch.bool, device=rank_scores.device)
    return torch.where(eye, top[:, :, None].expand(b, n, n), gap)


def pro_sft_loss(token_logps: torch.Tensor, token_mask: torch.Tensor, slots: torch.Tensor, n_candidates: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """PRO's SFT term, as its ``compute_loss``: the *summed* negative log-likelihood of the target response scaled by
    ``(N − 1)²`` (``sft_weight * (N - 1)**2 * mean(-sum_scores[sft_index])``), N the record's candidate count.
    Returns ``(scaled, plain)``: the mean over records of ``(N−1)² · NLL`` (trained on) and of ``NLL`` (logged)."""
    seq_nll = -(token_logps * token_mask).sum(-1)  # [B, S]
    per_slot = slots.to(seq_nll.dtype)
    count = per_slot.sum(-1)
    nll = (seq_nll * per_slot).sum(-1) / count.clamp_min(1.0)  # several target slots (mle_target all): their mean
    has = count > 0
    scale = (n_candidates.to(nll.dtype) - 1.0).clamp_min(0.0) ** 2
    denom = has.sum().clamp_min(1)
    return (scale * nll * has).sum() / denom, (nll * has).sum() / denom


def dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, pairs: torch.Tensor, beta: float,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7) on the pairs of a ranking:
    ``−log σ(β·[(log π(y_i) − log π_ref(y_i)) − (log π(y_j) − log π_ref(y_j))])`` for i ranked above j, log-probs
    summed over response tokens, averaged over the batch's pairs (TRL ``DPOTrainer`` ``loss_type="sigmoid"``).
    Returns ``(loss, rewards)``, the implicit rewards ``β·(log π − log π_ref) [B, N]``."""
    rewards = beta * (policy_logps - ref_logps)
    margin = rewards[:, :, None] - rewards[:, None, :]
    return _pair_mean(-F.logsigmoid(margin), pairs), rewards


def ipo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, lengths: torch.Tensor, pairs: torch.Tensor, tau: float,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", Eq. 17):
    ``(h_ij − 1/(2τ))²`` with ``h_ij`` the difference of the length-averaged log-ratios ``(log π − log π_ref)/|y|``
    of i (ranked above) and j, averaged over the batch's pairs. The per-token average follows TRL ``DPOTrainer``
    (``loss_type="ipo"`` divides each log-ratio by its completion length). Returns ``(loss, rewards)``, the
    averaged log-ratios."""
    rewards = (policy_logps - ref_logps) / lengths.clamp_min(1).to(policy_logps.dtype)
    h = rewards[:, :, None] - rewards[:, None, :]
    return _pair_mean((h - 1.0 / (2.0 * tau)) ** 2, pairs), rewards


def simpo_loss(scores: torch.Tensor, pairs: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"):
    ``−log σ(β·(s_i − s_j) − γ)`` with the length-normalised log-likelihood ``s = Σ log π / |y|^β_len`` (the
    average log-prob at the default exponent 1), no reference model, averaged over the batch's pairs. As
    princeton-nlp/SimPO ``simpo_trainer.py`` (``logits = pi_logratios - gamma_beta_ratio``; ``-logsigmoid(beta *
    logits)``, defaults β = 2.0, γ/β = 0.25) and TRL ``CPOTrainer`` ``loss_type="simpo"``."""
    margin = beta * (scores[:, :, None] - scores[:, None, :]) - gamma
    return _pair_mean(-F.logsigmoid(margin), pairs)


# ----------------------------------------------------------------------------------------------- LiPO-λ


def lipo_labels(rank_scores: torch.Tensor | None, candidate_mask: torch.Tensor, groups: torch.Tensor, ties: Ties,
                ) -> torch.Tensor:
    """[B, N] LiPO's graded labels ψ (0 on padding).

    ``ties: skip``: the ranker's scores, in each record whose real candidates all have one (equal scores are equal
    labels, never a pair: LiPO sums over ψ_i > ψ_j). Otherwise (``ties: ordered``, whose ranking is the file order,
    or a record with an unknown score): from the rank positions, each candidate's share of wins against the others of
    its record, a tie counting half: ``(n − 1 − p_k) / (n − 1)`` with ``p_k`` the mean position of its tie group
    (``groups``), so 1 for the best and 0 for the worst of a strict ranking, in [0, 1] like a verifier's scores."""
    n = candidate_mask.sum(-1, keepdim=True).float()
    labels = (n - 1.0 - group_positions(groups)) / (n - 1.0).clamp_min(1.0)
    if ties == "skip" and rank_scores is not None:
        scored = (~torch.isnan(rank_scores) | ~candidate_mask).all(-1, keepdim=True)
        labels = torch.where(scored, rank_scores.float(), labels)
    return labels.masked_fill(~candidate_mask, 0.0)


def lipo_lambda_weights(rewards: torch.Tensor, labels: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """[B, N, N] LiPO-λ's Lambda weights ``Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|`` (Liu et al. 2024, section
    "LiPO-λ"), gain ``G = 2^ψ − 1``, discount ``D(τ) = log2(1 + τ)``, ``τ_i`` the 1-based rank of candidate i when its
    record's real candidates are sorted by ``rewards``, best first (the permutation the scores induce).

    Equal rewards are ranked by position (a stable sort): at step 0, where π = π_ref and every reward is 0, τ is the
    given ranking (an average rank would give every pair the weight 0, and nothing would train). The weights carry
    no gradient (τ is piecewise constant in the rewards; the labels are data)."""
    b, n = rewards.shape
    with torch.no_grad():
        r = rewards.detach().float().masked_fill(~candidate_mask, float("-inf"))  # padding ranks last
        order = torch.sort(r, dim=-1, descending=True, stable=True).indices
        ranks = torch.arange(1, n + 1, device=rewards.device, dtype=torch.float32).expand(b, n)
        tau = torch.empty_like(ranks).scatter_(1, order, ranks)
        inv_discount = 1.0 / torch.log2(1.0 + tau)
        gain = torch.exp2(labels.float()) - 1.0
        return (gain[:, :, None] - gain[:, None, :]).abs() * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()


def lipo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, candidate_mask: torch.Tensor,
              pairs: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LiPO-λ (Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank", arXiv 2402.01878,
    section "LiPO-λ"): the Lambda-weighted pairwise logistic loss on DPO's implicit rewards
    ``s = β·(log π − log π_ref)`` (log-probs summed over response tokens),

        L = Σ_{(i, j): ψ_i > ψ_j} Δ_ij · log(1 + e^{−(s_i − s_j)}) = Σ Δ_ij · −log σ(s_i − s_j),

    with the weights of :func:`lipo_lambda_weights`, summed over a record's pairs (``pairs``: i above j) and averaged
    over records (the paper's expectation over lists). Returns ``(loss, rewards)``."""
    rewards = beta * (policy_logps - ref_logps)
    delta = lipo_lambda_weights(rewards, labels, candidate_mask).to(rewards.dtype)
    logistic = -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :])  # [b, i, j]: −log σ(s_i − s_j)
    per_record = torch.where(pairs, delta * logistic, torch.zeros_like(logistic)).sum((1, 2))
    return per_record.mean(), rewards


# ----------------------------------------------------------------------------------------------- the registry's functions


@dataclass
class ObjectiveInputs:
    """What an objective's function reads: a batch's ranked slots, prepared once by :func:`objective_loss`."""

    token_logps: torch.Tensor
    """[B, N, T] per-token log-probs of each ranked slot's response."""
    token_mask: torch.Tensor
    """[B, N, T] its response tokens."""
    scores: torch.Tensor
    """[B, N] ``s = Σ log π / |y|^β`` (``loss.beta``)."""
    candidate_mask: torch.Tensor
    """[B, N] real candidates (records with fewer are padded)."""
    groups: torch.Tensor
    """[B, N] tie groups under ``loss.ties`` (:func:`tie_groups`)."""
    pairs: torch.Tensor
    """[B, N, N] i ranked above j under ``loss.ties`` (and ``loss.pairs`` for the objectives that read it)."""
    rank_scores: torch.Tensor | None
    """[B, N] the ranker's scores (NaN: unknown)."""
    ref_logps: torch.Tensor | None
    """[B, N] the reference model's summed log-probs (NaN: missing)."""

    @property
    def sums(self) -> torch.Tensor:
        """[B, N] the summed log-probs ``Σ log π``."""
        return (self.token_logps * self.token_mask).sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        """[B, N] response token counts."""
        return self.token_mask.sum(-1)

    def reference(self, objective: str) -> torch.Tensor:
        """[B, N] the reference log-probs, refusing a batch where a real candidate has none."""
        if self.ref_logps is None or bool(torch.isnan(self.ref_logps[self.candidate_mask]).any()):
            raise ValueError(f"loss.objective={objective} needs the reference log-probs of every candidate")
        return torch.nan_to_num(self.ref_logps.to(self.scores.dtype))


ObjectiveTerm = tuple[torch.Tensor, torch.Tensor | None]
"""An objective function's result: its term and its own per-candidate rewards (None: it has none)."""


def tuna_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    groups = x.groups if cfg.ties == "skip" and x.rank_scores is not None else None
    return ranking_loss(x.scores, cfg.margin, cfg.pair_reduction, x.candidate_mask, cfg.margin_scaling, groups=groups), None


def rrhf_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    return rrhf_loss(x.scores, x.pairs), None


def pro_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    rs = x.rank_scores
    if cfg.pro_temperature == "dynamic" and (rs is None or bool(torch.isnan(rs[x.candidate_mask]).any())):
        raise ValueError("loss.pro_temperature=dynamic needs every candidate's ranker score")
    weights = pro_weights(rs if rs is not None else x.scores.detach(), x.pairs, cfg.pro_temperature)
    return plackett_luce_loss(x.scores, x.pairs, weights), None


def listmle_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    return plackett_luce_loss(x.scores, x.pairs), None


def dpo_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    return dpo_loss(x.sums, x.reference("dpo"), x.pairs, cfg.dpo_beta)


def ipo_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    return ipo_loss(x.sums, x.reference("ipo"), x.lengths, x.pairs, cfg.ipo_tau)


def simpo_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    return simpo_loss(x.scores, x.pairs, cfg.simpo_beta, cfg.simpo_gamma), None


def lipo_objective(x: ObjectiveInputs, cfg: LossConfig) -> ObjectiveTerm:
    # x.pairs are LiPO's pairs ψ_i > ψ_j: ranked sets are sorted by score (tuna.records), tied scores share a group
    # under skip, and the rank-derived labels fall from group to group
    labels = lipo_labels(x.rank_scores, x.candidate_mask, x.groups, cfg.ties)
    return lipo_loss(x.sums, x.reference("lipo"), labels, x.candidate_mask, x.pairs, cfg.dpo_beta)


def required_candidate_fields(cfg: LossConfig) -> list[str]:
    """The candidate fields every training record must carry for this objective (empty for most)."""
    return OBJECTIVES[cfg.objective].candidate_fields(cfg) if cfg.rank_weight else []


def objective_loss(
    token_logps: torch.Tensor,
    token_mask: torch.Tensor,
    rank_mask: torch.Tensor,
    gold_mask: torch.Tensor | None,
    cfg: LossConfig,
    *,
    rank_scores: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
) -> LossOutput:
    """``L = mle_weight · L_MLE + rank_weight · L_objective`` for ``cfg.objective`` (its entry in ``OBJECTIVES``).

    Shapes as :func:`tuna_loss`; ``rank_scores [B, S]`` the ranker's scores (NaN: unknown), ``ref_logps [B, S]`` the
    reference model's summed log-probs of each candidate (NaN: missing; the objectives that read ``ref_logprob``
    need them)."""
    spec = OBJECTIVES[cfg.objective]
    n_rank = int(rank_mask.sum(-1).max().item()) if rank_mask.numel() else 0
    cmask = rank_mask[:, :n_rank]
    scores = sequence_scores(token_logps, token_mask, cfg.beta)[:, :n_rank]
    rs = rank_scores[:, :n_rank] if rank_scores is not None else None
    groups = tie_groups(rs, cmask, cfg.ties)
    pairs = preference_pairs(cmask, groups, cfg.pairs if spec.reads_pairs else "all")
    zero = scores.new_zeros(())
    rank, rewards = zero, None
    if cfg.rank_weight:
        x = ObjectiveInputs(token_logps=token_logps[:, :n_rank], token_mask=token_mask[:, :n_rank], scores=scores,
                            candidate_mask=cmask, groups=groups, pairs=pairs, rank_scores=rs,
                            ref_logps=ref_logps[:, :n_rank] if ref_logps is not None else None)
        rank, rewards = spec.function()(x, cfg)
    mle_weight, mle_target = mle_settings(cfg)
    slots = mle_slots(rank_mask, gold_mask, mle_target)
    own_mle = spec.mle_function()
    if not mle_weight:
        mle, mle_term = zero, zero
    elif own_mle is not None:
        mle_term, mle = own_mle(token_logps, token_mask, slots, rank_mask.sum(-1))
    else:
        mle = mle_term = mle_loss(token_logps, token_mask, slots)
    loss = mle_weight * mle_term + cfg.rank_weight * rank
    return LossOutput(loss=loss, rank=rank, mle=mle, scores=scores, rank_mask=cmask, pairs=pairs, rewards=rewards)
