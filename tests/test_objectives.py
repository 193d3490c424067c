"""The objectives registry and the tie rule against independent slow references.

Each reference is written from the papers' formulas with plain Python loops over records, pairs, steps and
tokens (tie groups found by comparing scores, not by the fast cumulative sum); where a reference implementation
exists (RRHF, PRO, TRL's DPO/IPO, SimPO) a second test evaluates that code's own formula on the same numbers. LiPO-λ
has no public reference code: its loop reference follows the paper's definitions (labels, pairs ψ_i > ψ_j, ranks τ
counted from the rewards), and its Lambda weights are checked by hand on a 3-candidate example."""

from __future__ import annotations

import itertools
import math
from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from tuna.config import Objective
from tuna.losses import (
    OBJECTIVES,
    LossConfig,
    dpo_loss,
    lipo_lambda_weights,
    lipo_loss,
    mle_settings,
    objective_loss,
    pair_accuracy,
    plackett_luce_loss,
    preference_pairs,
    ranking_loss,
    required_candidate_fields,
    tie_groups,
    tuna_loss,
)
from tuna.objectives import ObjectiveSpec

NAN = float("nan")
# Best-first ranker scores per record, with ties: record 1 has 3 candidates, record 2 four plus its gold in slot 4.
RANK_SCORES = [
    [3.0, 2.0, 2.0, 1.0, 0.0],
    [1.0, 1.0, 0.0, NAN, NAN],
    [5.0, 4.0, 3.0, 2.0, NAN],
    [1.0, 0.5, 0.5, 0.5, -1.0],
]


def make_inputs(seed: int = 0, T: int = 6):
    g = torch.Generator().manual_seed(seed)
    B, S = len(RANK_SCORES), len(RANK_SCORES[0])
    logps = (-torch.rand(B, S, T, generator=g) * 3).requires_grad_(True)
    lengths = torch.randint(1, T + 1, (B, S), generator=g)
    mask = torch.arange(T)[None, None, :] < lengths[..., None]
    rank_mask = torch.ones(B, S, dtype=torch.bool)
    rank_mask[1, 3:] = False
    rank_mask[2, 4] = False
    gold_mask = torch.zeros(B, S, dtype=torch.bool)
    gold_mask[2, 4] = True
    mask = mask & (rank_mask | gold_mask)[..., None]
    rank_scores = torch.tensor(RANK_SCORES)
    ref = (-torch.rand(B, S, generator=g) * 3 * lengths).masked_fill(~rank_mask, NAN)
    return logps, mask, rank_mask, gold_mask, rank_scores, ref


# ----------------------------------------------------------------------------------------------- slow reference


def seq(logps, mask, b, k):
    """(sum of the response's token log-probs, its token count)."""
    vals = [logps[b, k, t] for t in range(logps.shape[2]) if mask[b, k, t]]
    return sum(vals), len(vals)


def slow_pairs(scores_row, n_real, ties, selection="all"):
    """[(i, j)]: i ranked above j. Tied: equal known scores. Adjacent: dense ranks one apart."""
    def tied(i, j):
        a, b = scores_row[i], scores_row[j]
        return ties == "skip" and not (math.isnan(a) or math.isnan(b)) and a == b

    def dense(k):  # how many distinct levels lie above candidate k
        if ties == "ordered":
            return k
        return len({scores_row[i] for i in range(k) if not tied(i, k)}) if not math.isnan(scores_row[k]) else k

    out = []
    for i, j in itertools.combinations(range(n_real), 2):
        if tied(i, j):
            continue
        if selection == "adjacent" and dense(j) != dense(i) + 1:
            continue
        out.append((i, j))
    return out


def mean_position(scores_row, n_real, k, ties):
    if ties == "ordered" or math.isnan(scores_row[k]):
        return float(k)
    same = [i for i in range(n_real) if scores_row[i] == scores_row[k]]
    return sum(same) / len(same)


def slow_objective(logps, mask, rank_mask, gold_mask, rank_scores, ref, cfg: LossConfig):
    """(loss, rank term, MLE term as logged) from the papers' formulas, loop by loop."""
    B = logps.shape[0]
    n_of = [int(rank_mask[b].sum()) for b in range(B)]
    beta = cfg.beta

    def s(b, k):
        total, n = seq(logps, mask, b, k)
        return total / (n**beta)

    rows = [[float(x) for x in rank_scores[b]] for b in range(B)]
    sel = cfg.pairs if cfg.objective in ("dpo", "ipo", "simpo") else "all"
    pairs = [slow_pairs(rows[b], n_of[b], cfg.ties, sel) for b in range(B)]
    obj = cfg.objective
    if obj == "tuna":
        if cfg.pair_reduction == "all_pairs_sum":
            rank = sum(sum(torch.clamp(s(b, j) - s(b, i) + cfg.margin * (mean_position(rows[b], n_of[b], j, cfg.ties)
                                                                              - mean_position(rows[b], n_of[b], i, cfg.ties)), min=0)
                           for i, j in pairs[b]) for b in range(B)) / B
        else:
            by_d: dict[float, list] = {}
            for b in range(B):
                for i, j in pairs[b]:
                    d = mean_position(rows[b], n_of[b], j, cfg.ties) - mean_position(rows[b], n_of[b], i, cfg.ties)
                    by_d.setdefault(d, []).append(torch.clamp(s(b, j) - s(b, i) + cfg.margin * d, min=0))
            rank = sum(sum(v) / len(v) for v in by_d.values())
    elif obj == "rrhf":
        rank = sum(sum(torch.relu(s(b, j) - s(b, i)) for i, j in pairs[b]) for b in range(B)) / B
    elif obj in ("pro", "listmle"):
        total = 0.0
        for b in range(B):
            for k in range(n_of[b]):
                below = [j for i, j in pairs[b] if i == k]
                if not below:
                    continue
                if obj == "pro" and cfg.pro_temperature == "dynamic":
                    w = {j: rows[b][k] - rows[b][j] for j in below}
                    w_own = max(w.values())
                else:
                    t = 1.0 if obj == "listmle" else cfg.pro_temperature
                    w = {j: 1.0 / t for j in below}
                    w_own = 1.0 / t
                z = torch.exp(w_own * s(b, k)) + sum(torch.exp(w[j] * s(b, j)) for j in below)
                total = total + torch.log(z) - w_own * s(b, k)
        rank = total / B
    elif obj == "lipo":
        rank = slow_lipo(logps, mask, n_of, rows, ref, cfg.dpo_beta, cfg.ties)
    else:
        terms = []
        for b in range(B):
            for i, j in pairs[b]:
                (pi, ni), (pj, nj) = seq(logps, mask, b, i), seq(logps, mask, b, j)
                ri, rj = float(ref[b, i]), float(ref[b, j])
                if obj == "dpo":
                    terms.append(-F.logsigmoid(cfg.dpo_beta * ((pi - ri) - (pj - rj))))
                elif obj == "ipo":
                    terms.append(((pi - ri) / ni - (pj - rj) / nj - 1 / (2 * cfg.ipo_tau)) ** 2)
                else:
                    terms.append(-F.logsigmoid(cfg.simpo_beta * (s(b, i) - s(b, j)) - cfg.simpo_gamma))
        rank = sum(terms) / len(terms) if terms else torch.zeros(())
    weight, target = mle_settings(cfg)
    slots = {"all": lambda b, k: bool(rank_mask[b, k]), "best": lambda b, k: k == 0,
             "gold": lambda b, k: bool(gold_mask[b, k])}[target]
    if weight == 0:  # not computed (logged as 0)
        mle_term = mle = torch.zeros(())
    elif obj == "pro":  # PRO: the summed NLL of the target, scaled by (N-1)² per record
        scaled = plain = 0.0
        used = 0
        for b in range(B):
            ks = [k for k in range(logps.shape[1]) if slots(b, k)]
            if not ks:
                continue
            used += 1
            nll = sum(-seq(logps, mask, b, k)[0] for k in ks) / len(ks)
            scaled, plain = scaled + (n_of[b] - 1) ** 2 * nll, plain + nll
        mle_term, mle = scaled / used, plain / used
    else:
        num, den = 0.0, 0
        for b in range(B):
            for k in range(logps.shape[1]):
                if slots(b, k):
                    for t in range(logps.shape[2]):
                        if mask[b, k, t]:
                            num, den = num - logps[b, k, t], den + 1
        mle_term = mle = num / den
    return weight * mle_term + cfg.rank_weight * rank, rank, mle


def slow_lipo_labels(row, n, ties):
    """LiPO's ψ: the ranker's scores (ties: skip, every candidate scored), else each candidate's share of wins
    against the others of its record (a tie, under skip, counting half), counted pair by pair."""
    known = [not math.isnan(row[k]) for k in range(n)]
    if ties == "skip" and all(known):
        return [row[k] for k in range(n)]
    if n == 1:
        return [0.0]

    def tied(i, j):
        return ties == "skip" and known[i] and known[j] and row[i] == row[j]

    return [sum(0.5 if tied(k, j) else float(k < j) for j in range(n) if j != k) / (n - 1) for k in range(n)]


def slow_lipo(logps, mask, n_of, rows, ref, beta, ties):
    """LiPO-λ from the paper's definitions: s_k = β(ℓ_k − ℓ_ref,k); τ_i = 1 + #{j: s_j > s_i} (equal rewards: the
    earlier position ranks first); Σ over pairs ψ_i > ψ_j of |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|·log(1 + e^-(s_i − s_j)),
    G = 2^ψ − 1, D(τ) = log2(1 + τ); mean over records."""
    total = 0.0
    for b, n in enumerate(n_of):
        s = [beta * (seq(logps, mask, b, k)[0] - float(ref[b, k])) for k in range(n)]
        sv = [float(v) for v in s]
        tau = [1 + sum(1 for j in range(n) if sv[j] > sv[i] or (sv[j] == sv[i] and j < i)) for i in range(n)]
        psi = slow_lipo_labels(rows[b], n, ties)
        for i in range(n):
            for j in range(n):
                if psi[i] > psi[j]:
                    delta = abs((2 ** psi[i] - 1) - (2 ** psi[j] - 1)) * abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                    total = total + delta * torch.log(1 + torch.exp(-(s[i] - s[j])))
    return total / len(n_of)


CASES = [
    ("tuna", {"ties": "skip"}), ("tuna", {"ties": "skip", "pair_reduction": "all_pairs_sum"}),
    ("tuna", {"ties": "ordered", "margin": 0.3, "beta": 1.3}),
    ("rrhf", {}), ("rrhf", {"ties": "skip", "beta": 0.7}),
    ("pro", {}), ("pro", {"ties": "skip"}), ("pro", {"pro_temperature": 0.5}), ("pro", {"pro_temperature": 2.0, "ties": "skip"}),
    ("listmle", {}), ("listmle", {"ties": "skip", "mle_weight": 0.3}),
    ("dpo", {}), ("dpo", {"ties": "skip", "pairs": "adjacent", "dpo_beta": 0.5}), ("dpo", {"pairs": "adjacent"}),
    ("ipo", {}), ("ipo", {"ties": "skip", "ipo_tau": 0.3, "mle_weight": 0.5, "mle_target": "gold"}),
    ("simpo", {}), ("simpo", {"ties": "skip", "pairs": "adjacent", "simpo_gamma": 1.0, "beta": 0.0}),
    ("lipo", {}), ("lipo", {"ties": "skip", "dpo_beta": 0.5}), ("lipo", {"ties": "skip", "mle_weight": 0.2, "mle_target": "gold"}),
]


@pytest.mark.parametrize(("objective", "knobs"), CASES, ids=[f"{o}-{'-'.join(f'{k}={v}' for k, v in kn.items())}" for o, kn in CASES])
def test_objective_value_and_gradient_match_slow_reference(objective, knobs):
    logps, mask, rank_mask, gold_mask, rank_scores, ref = make_inputs()
    cfg = LossConfig(objective=objective, **knobs)
    out = objective_loss(logps, mask, rank_mask, gold_mask, cfg, rank_scores=rank_scores, ref_logps=ref)
    g_fast = torch.autograd.grad(out.loss, logps)[0]

    logps2 = logps.detach().clone().requires_grad_(True)
    loss, rank, mle = slow_objective(logps2, mask, rank_mask, gold_mask, rank_scores, ref, cfg)
    g_ref = torch.autograd.grad(loss, logps2)[0]
    assert float(out.rank) == pytest.approx(float(rank), rel=1e-5, abs=1e-6)
    assert float(out.mle) == pytest.approx(float(mle), rel=1e-5, abs=1e-6)
    assert float(out.loss) == pytest.approx(float(loss), rel=1e-5, abs=1e-6)
    assert float(out.rank) != 0.0
    torch.testing.assert_close(g_fast, g_ref, atol=1e-6, rtol=1e-5)


def test_every_registered_objective_is_tested():
    assert {o for o, _ in CASES} == set(OBJECTIVES) and len(CASES) == 21


# ----------------------------------------------------------------------------------------------- ties


def test_ordered_ties_with_scores_are_bit_identical_to_the_plain_tuna_loss():
    logps, mask, rank_mask, gold_mask, rank_scores, _ = make_inputs(1)
    cfg = LossConfig()
    a = tuna_loss(logps, mask, rank_mask, gold_mask, cfg)
    b = objective_loss(logps, mask, rank_mask, gold_mask, cfg, rank_scores=rank_scores)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(torch.autograd.grad(a.loss, logps)[0], torch.autograd.grad(b.loss, logps)[0])


@pytest.mark.parametrize("reduction", ["per_distance_mean", "all_pairs_sum"])
def test_skip_without_ties_equals_ordered(reduction):
    torch.manual_seed(0)
    scores = torch.randn(3, 5, requires_grad=True)
    cand = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    distinct = torch.tensor([[5.0, 4, 3, 2, 1], [3, 2, 1, NAN, NAN], [9, 8, 1, 0, NAN]])
    plain = ranking_loss(scores, 0.2, reduction, cand)
    tied_path = ranking_loss(scores, 0.2, reduction, cand, groups=tie_groups(distinct, cand, "skip"))
    assert float(tied_path) == pytest.approx(float(plain), rel=1e-6)
    g1, g2 = (torch.autograd.grad(x, scores)[0] for x in (plain, tied_path))
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_skip_makes_every_objective_blind_to_the_order_of_tied_candidates(objective):
    """Swapping two tied candidates (their texts, hence their log-probs) leaves the loss unchanged under skip."""
    logps, mask, rank_mask, gold_mask, rank_scores, ref = make_inputs(2)
    cfg = LossConfig(objective=objective, ties="skip", pro_temperature=0.7 if objective == "pro" else "dynamic")
    perm = torch.arange(5)
    perm[1], perm[2] = 2, 1  # record 0: candidates 1 and 2 share score 2.0
    swapped = [t.detach().clone() for t in (logps, mask, ref)]
    for t in swapped:
        t[0] = t[0][perm]
    a = objective_loss(logps.detach(), mask, rank_mask, gold_mask, cfg, rank_scores=rank_scores, ref_logps=ref)
    b = objective_loss(swapped[0], swapped[1], rank_mask, gold_mask, cfg, rank_scores=rank_scores, ref_logps=swapped[2])
    assert float(a.rank) == pytest.approx(float(b.rank), rel=1e-6)
    ordered = objective_loss(swapped[0], swapped[1], rank_mask, gold_mask, LossConfig(objective=objective), rank_scores=rank_scores,
                             ref_logps=swapped[2])
    assert float(ordered.rank) != pytest.approx(float(b.rank), rel=1e-6)  # ordered: the swap matters


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_a_record_whose_candidates_all_tie_has_no_ranking_gradient(objective):
    logps, mask, rank_mask, gold_mask, _, ref = make_inputs(3)
    keep = slice(3, 4)  # one record, 5 candidates
    scores = torch.full((1, 5), 0.25)
    cfg = LossConfig(objective=objective, ties="skip", mle_weight=0.0, pro_temperature=1.0 if objective == "pro" else "dynamic")
    out = objective_loss(logps[keep], mask[keep], rank_mask[keep], gold_mask[keep], cfg, rank_scores=scores, ref_logps=ref[keep])
    assert float(out.loss) == 0.0
    assert out.pairs is not None and not out.pairs.any()


def test_tie_groups_unknown_scores_never_tie():
    cand = torch.ones(2, 4, dtype=torch.bool)
    groups = tie_groups(torch.tensor([[1.0, 1.0, NAN, NAN], [2.0, 2.0, 2.0, 1.0]]), cand, "skip")
    assert groups.tolist() == [[0, 0, 1, 2], [0, 0, 0, 1]]
    assert tie_groups(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), cand[:1], "ordered").tolist() == [[0, 1, 2, 3]]
    pairs = preference_pairs(cand[1:], groups[1:], "adjacent")
    assert pairs[0].nonzero().tolist() == [[0, 3], [1, 3], [2, 3]]


def test_pair_accuracy_counts_only_compared_pairs():
    scores = torch.tensor([[0.0, 1.0, -1.0]])  # the student puts 1 above 0
    cand = torch.ones(1, 3, dtype=torch.bool)
    assert float(pair_accuracy(scores, cand)) == pytest.approx(2 / 3)
    skip = preference_pairs(cand, tie_groups(torch.tensor([[2.0, 2.0, 1.0]]), cand, "skip"))
    assert float(pair_accuracy(scores, cand, skip)) == 1.0  # the tied pair (0, 1) is not counted


# ----------------------------------------------------------------------------------------------- reference code


def test_rrhf_equals_the_rrhf_repository_formula():
    """GanjinZero/RRHF train.py (batched version): diff = s[None] - s[:, None]; aval = (rw_diff > 0) & (diff < 0);
    loss = -diff[aval].sum() over the whole batch; ours averages records, so ours · B equals it."""
    torch.manual_seed(0)
    s = torch.randn(3, 4)
    rw = torch.tensor([[3.0, 2.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    diff = s.unsqueeze(1) - s.unsqueeze(-1)
    rw_diff = rw.unsqueeze(1) - rw.unsqueeze(-1)
    aval = torch.bitwise_and(rw_diff > 0, diff < 0)
    theirs = -diff[aval].sum()
    cand = torch.ones(3, 4, dtype=torch.bool)
    from tuna.losses import rrhf_loss

    ours = rrhf_loss(s, preference_pairs(cand, tie_groups(rw, cand, "skip")))
    assert float(ours) * 3 == pytest.approx(float(theirs), rel=1e-6)


def test_pro_equals_the_pro_repository_formula():
    """DAMO-ConvAI PRO/train/utils/process_manager.py compute_loss, with ties ordered as its loop does."""
    torch.manual_seed(1)
    B, N, T = 3, 4, 5
    logps = -torch.rand(B, N, T) * 2
    mask = torch.arange(T)[None, None, :] < torch.randint(1, T + 1, (B, N))[..., None]
    rewards = torch.tensor([[2.0, 1.5, 1.5, -1.0], [0.3, 0.2, 0.1, 0.0], [5.0, 1.0, 0.0, -2.0]])
    sum_scores = (logps * mask).sum(-1)
    scores = sum_scores / mask.sum(-1)
    theirs = 0.0
    eps = 1e-10
    for time in range(N - 1):
        neg_reward, pos_reward = rewards[:, time + 1 :], rewards[:, time]
        neg_t = pos_reward.view(-1, 1) - neg_reward
        pos_t = torch.max(neg_t, dim=1).values
        loss = torch.log(eps + torch.exp(scores[:, time] * pos_t) + torch.sum(torch.exp(scores[:, time + 1 :] * neg_t), dim=1)) \
            - scores[:, time] * pos_t
        theirs = theirs + torch.mean(loss)
    sft_weight = 0.05
    theirs = theirs + sft_weight * math.pow(N - 1, 2) * torch.mean(-sum_scores[:, 0])

    rank_mask = torch.ones(B, N, dtype=torch.bool)
    out = objective_loss(logps, mask, rank_mask, None, LossConfig(objective="pro"), rank_scores=rewards)
    assert float(out.loss) == pytest.approx(float(theirs), rel=1e-6)


def test_dpo_ipo_simpo_equal_trl_and_simpo_formulas_on_the_implied_pairs():
    torch.manual_seed(2)
    B, N, T = 2, 3, 6
    logps = -torch.rand(B, N, T) * 2
    mask = torch.arange(T)[None, None, :] < torch.randint(2, T + 1, (B, N))[..., None]
    ref = -torch.rand(B, N) * 8
    rank_mask = torch.ones(B, N, dtype=torch.bool)
    sums, lens = (logps * mask).sum(-1), mask.sum(-1)
    chosen = [(b, i) for b in range(B) for i, j in itertools.combinations(range(N), 2)]
    rejected = [(b, j) for b in range(B) for i, j in itertools.combinations(range(N), 2)]

    def col(t, idx):
        return torch.stack([t[b, k] for b, k in idx])

    pc, pr, rc, rr = col(sums, chosen), col(sums, rejected), col(ref, chosen), col(ref, rejected)
    lc, lr = col(lens, chosen).float(), col(lens, rejected).float()
    beta = 0.1
    dpo = (-F.logsigmoid(beta * ((pc - pr) - (rc - rr)))).mean()  # TRL loss_type="sigmoid", label_smoothing 0
    ipo = ((((pc - rc) / lc) - ((pr - rr) / lr) - 1 / (2 * beta)) ** 2).mean()  # TRL loss_type="ipo"
    simpo_beta, gamma_beta_ratio = 2.0, 0.25  # SimPO simpo_trainer.py defaults
    simpo = (-F.logsigmoid(simpo_beta * ((pc / lc - pr / lr) - gamma_beta_ratio))).mean()
    for name, expected in (("dpo", dpo), ("ipo", ipo), ("simpo", simpo)):
        out = objective_loss(logps, mask, rank_mask, None, LossConfig(objective=name), ref_logps=ref)
        assert float(out.loss) == pytest.approx(float(expected), rel=1e-6), name


def test_listmle_is_minus_log_of_the_plackett_luce_probability_of_the_ranking():
    """Per-permutation reference: the PL probabilities of all 4! orders sum to 1, and the loss of a record is
    −log of its ranking's probability."""
    torch.manual_seed(3)
    s = torch.randn(1, 4, dtype=torch.float64)

    def prob(order):
        p, left = 1.0, list(order)
        for k in order:
            p *= math.exp(float(s[0, k])) / sum(math.exp(float(s[0, j])) for j in left)
            left.remove(k)
        return p

    perms = list(itertools.permutations(range(4)))
    assert len(perms) == 24 and sum(prob(p) for p in perms) == pytest.approx(1.0, rel=1e-12)
    cand = torch.ones(1, 4, dtype=torch.bool)
    loss = plackett_luce_loss(s, preference_pairs(cand, tie_groups(None, cand, "ordered")))
    assert float(loss) == pytest.approx(-math.log(prob((0, 1, 2, 3))), rel=1e-12)


# ----------------------------------------------------------------------------------------------- LiPO-λ


def random_lipo_case(seed: int, n: int, T: int = 5):
    """Three records of up to ``n`` candidates: ranker scores from {0, 1, 2} (ties), padding, and in one record an
    unknown (NaN) score for the last real candidate; one record always has all ``n``."""
    g = torch.Generator().manual_seed(seed)
    B = 3
    n_real = [n] + [int(torch.randint(1, n + 1, (1,), generator=g)) for _ in range(B - 1)]
    rank_mask = torch.arange(n)[None, :] < torch.tensor(n_real)[:, None]
    rows = []
    for b in range(B):
        vals = sorted((float(v) for v in torch.randint(0, 3, (n_real[b],), generator=g)), reverse=True) + [NAN] * (n - n_real[b])
        if b == 1 and n_real[b] > 1:
            vals[n_real[b] - 1] = NAN
        rows.append(vals)
    logps = (-torch.rand(B, n, T, generator=g) * 3).requires_grad_(True)
    lengths = torch.randint(1, T + 1, (B, n), generator=g)
    mask = (torch.arange(T)[None, None, :] < lengths[..., None]) & rank_mask[..., None]
    ref = (-torch.rand(B, n, generator=g) * 3 * lengths).masked_fill(~rank_mask, NAN)
    return logps, mask, rank_mask, torch.tensor(rows), ref, n_real


def test_lipo_value_and_gradient_match_the_loop_reference_on_random_cases():
    """N = 2 and N = 4, ties ordered and skipped, padding, tied and unknown ranker scores, two β."""
    checked = 0
    for n in (2, 4):
        for ties in ("ordered", "skip"):
            for seed in range(4):
                logps, mask, rank_mask, rank_scores, ref, n_real = random_lipo_case(seed + 10 * n, n)
                cfg = LossConfig(objective="lipo", ties=ties, dpo_beta=(0.1, 0.7)[seed % 2])
                out = objective_loss(logps, mask, rank_mask, None, cfg, rank_scores=rank_scores, ref_logps=ref)
                g_fast = torch.autograd.grad(out.loss, logps)[0]
                logps2 = logps.detach().clone().requires_grad_(True)
                rows = [[float(x) for x in r] for r in rank_scores]
                slow = slow_lipo(logps2, mask, n_real, rows, ref, cfg.dpo_beta, ties)
                g_ref = torch.autograd.grad(slow, logps2)[0]
                assert float(out.rank) == pytest.approx(float(slow), rel=1e-5, abs=1e-6), (n, ties, seed)
                assert float(out.loss) == float(out.rank) and float(out.rank) > 0  # no MLE term by default
                torch.testing.assert_close(g_fast, g_ref, atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(out.rewards, cfg.dpo_beta * ((logps * mask).sum(-1) - ref.nan_to_num()))
                checked += 1
    assert checked == 16


def test_lipo_lambda_weights_on_a_hand_computed_example():
    """ψ = 2, 1, 0 (gains 3, 1, 0); the policy's rewards order them 1, 0, 2, so τ = 2, 1, 3 and 1/D(τ) = 1/log2(3),
    1, 1/2. Δ_01 = 2·(1 − 1/log2 3), Δ_02 = 3·(1/log2 3 − 1/2), Δ_12 = 1·(1 − 1/2)."""
    labels = torch.tensor([[2.0, 1.0, 0.0]])
    rewards = torch.tensor([[0.1, 0.5, -0.2]], requires_grad=True)
    cand = torch.ones(1, 3, dtype=torch.bool)
    w = lipo_lambda_weights(rewards, labels, cand)[0]
    inv3 = 1 / math.log2(3)
    expected = torch.tensor([[0.0, 2 * (1 - inv3), 3 * (inv3 - 0.5)], [2 * (1 - inv3), 0.0, 0.5], [3 * (inv3 - 0.5), 0.5, 0.0]])
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad  # the weights are not differentiated through
    # τ depends on the rewards only through their order: a positive scale or shift changes nothing
    torch.testing.assert_close(lipo_lambda_weights(rewards * 7.0 - 3.0, labels, cand)[0], expected)
    # the policy ranking them as the labels do: τ = 1, 2, 3, and the top pair weighs most
    ordered = lipo_lambda_weights(torch.tensor([[1.0, 0.0, -1.0]]), labels, cand)[0]
    assert float(ordered[0, 1]) == pytest.approx(2 * (1 - inv3)) and float(ordered[1, 2]) == pytest.approx(inv3 - 0.5)
    # equal labels weigh nothing, whatever the ranks
    assert float(lipo_lambda_weights(rewards, torch.tensor([[1.0, 1.0, 0.0]]), cand)[0, 0, 1]) == 0.0
    # a padded candidate ranks last and leaves the real ones' τ alone
    padded = lipo_lambda_weights(torch.tensor([[0.1, 0.5, -0.2, 9.0]]), torch.tensor([[2.0, 1.0, 0.0, 0.0]]),
                                 torch.tensor([[True, True, True, False]]))[0, :3, :3]
    torch.testing.assert_close(padded, expected)


def test_lipo_at_step_zero_weights_pairs_by_the_given_ranking():
    """π = π_ref: every reward is 0, the stable sort ranks the candidates as given (τ = 1..N), and each pair's loss is
    Δ_ij · log 2 (an average rank for the tied rewards would weigh every pair 0 and nothing would train)."""
    logps = -torch.rand(2, 4) * 5
    cand = torch.ones(2, 4, dtype=torch.bool)
    labels = torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0], [3.0, 2.0, 2.0, 0.0]])
    pairs = labels[:, :, None] > labels[:, None, :]
    loss, rewards = lipo_loss(logps, logps.clone(), labels, cand, pairs, beta=0.1)
    assert bool((rewards == 0).all())
    inv_d = [1 / math.log2(1 + t) for t in (1, 2, 3, 4)]
    expected = 0.0
    for b in range(2):
        for i, j in itertools.combinations(range(4), 2):
            if labels[b, i] > labels[b, j]:
                expected += abs(2 ** float(labels[b, i]) - 2 ** float(labels[b, j])) * (inv_d[i] - inv_d[j]) * math.log(2)
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6) and expected > 0


def test_lipo_with_two_candidates_is_a_weighted_dpo():
    """N = 2: τ is 1 and 2 whatever the order, so Δ = |G_0 − G_1|·(1 − 1/log2 3) and each record's loss is DPO's
    −log σ(β[(ℓ_0 − ℓ_ref,0) − (ℓ_1 − ℓ_ref,1)]) times its Δ."""
    torch.manual_seed(4)
    B, T = 5, 6
    logps = (-torch.rand(B, 2, T) * 2).requires_grad_(True)
    mask = torch.arange(T)[None, None, :] < torch.randint(1, T + 1, (B, 2))[..., None]
    ref = -torch.rand(B, 2) * 8
    cand = torch.ones(B, 2, dtype=torch.bool)
    scale = 1 - 1 / math.log2(3)
    # rank-derived labels (ties ordered): ψ = 1, 0 in every record, so LiPO is DPO scaled by one constant
    lipo = objective_loss(logps, mask, cand, None, LossConfig(objective="lipo"), ref_logps=ref)
    dpo = objective_loss(logps, mask, cand, None, LossConfig(objective="dpo"), ref_logps=ref)
    assert float(lipo.loss) == pytest.approx(scale * float(dpo.loss), rel=1e-6)
    g_lipo, g_dpo = (torch.autograd.grad(o.loss, logps)[0] for o in (lipo, dpo))
    torch.testing.assert_close(g_lipo, scale * g_dpo)
    # graded labels (the ranker's scores, ties skipped): a per-record weight |2^ψ0 − 2^ψ1|·scale
    scores = torch.tensor([[1.0, 0.0], [0.9, 0.2], [2.0, 1.5], [0.5, 0.5], [3.0, -1.0]])
    out = objective_loss(logps, mask, cand, None, LossConfig(objective="lipo", ties="skip"), rank_scores=scores, ref_logps=ref)
    sums = (logps * mask).sum(-1)
    per_record = [dpo_loss(sums[b : b + 1], ref[b : b + 1], torch.tensor([[[False, True], [False, False]]]), 0.1)[0]
                  for b in range(B)]
    expected = sum(abs(2 ** float(scores[b, 0]) - 2 ** float(scores[b, 1])) * scale * per_record[b] for b in range(B)) / B
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(out.loss) > 0 and not bool(out.pairs[3].any())  # the tied record has no pair


# ----------------------------------------------------------------------------------------------- config


def test_objective_defaults_and_requirements():
    assert mle_settings(LossConfig()) == (1.0, "all")
    assert mle_settings(LossConfig(objective="rrhf")) == (1.0, "best")
    assert mle_settings(LossConfig(objective="dpo")) == (0.0, "best")
    assert mle_settings(LossConfig(objective="dpo", mle_weight=0.2, mle_target="gold")) == (0.2, "gold")
    assert required_candidate_fields(LossConfig(objective="dpo")) == ["ref_logprob"]
    assert required_candidate_fields(LossConfig(objective="ipo", rank_weight=0.0)) == []
    assert required_candidate_fields(LossConfig(objective="pro")) == ["score"]
    assert required_candidate_fields(LossConfig(objective="pro", pro_temperature=1.0)) == []
    assert required_candidate_fields(LossConfig(objective="simpo", ties="skip")) == []
    assert mle_settings(LossConfig(objective="lipo")) == (0.0, "best")
    assert required_candidate_fields(LossConfig(objective="lipo")) == ["ref_logprob"]


def test_the_objective_choices_are_the_registry():
    """`loss.objective`'s type (jsonargparse's choices in --help and --print_config) is built from the registry, and
    every entry's functions import."""
    assert get_args(Objective) == tuple(OBJECTIVES)
    resolved = [spec.function() for spec in OBJECTIVES.values()]
    assert len(resolved) == len(OBJECTIVES) >= 8 and all(callable(f) for f in resolved)
    assert [name for name, spec in OBJECTIVES.items() if spec.mle_function() is not None] == ["pro"]


def throwaway_objective(x, cfg):
    """The gap between each record's best and second candidate, as a test objective."""
    return (x.scores[:, 1] - x.scores[:, 0]).mean(), None


def test_adding_an_objective_is_one_registry_entry(monkeypatch):
    """A new entry, with no other edit: the config accepts it, training asks for its fields, the loss dispatches to
    its function and uses its own MLE defaults."""
    spec = ObjectiveSpec("a test", f"{__name__}:throwaway_objective", 0.5, "gold", candidate_fields=lambda cfg: ["score"])
    monkeypatch.setitem(OBJECTIVES, "throwaway", spec)
    cfg = LossConfig(objective="throwaway")
    assert mle_settings(cfg) == (0.5, "gold")
    assert required_candidate_fields(cfg) == ["score"]
    logps, mask, rank_mask, gold_mask, rank_scores, _ = make_inputs(5)
    out = objective_loss(logps, mask, rank_mask, gold_mask, cfg, rank_scores=rank_scores)
    s = out.scores
    assert float(out.rank) == pytest.approx(float((s[:, 1] - s[:, 0]).mean()))
    gold = objective_loss(logps, mask, rank_mask, gold_mask, LossConfig(objective="tuna", mle_target="gold", rank_weight=0.0))
    assert float(out.mle) == pytest.approx(float(gold.mle)) and float(out.loss) == pytest.approx(0.5 * float(out.mle) + float(out.rank))
    with pytest.raises(ValueError, match=r"loss\.objective must be one of .*\| lipo \| throwaway, got 'ppo'"):
        LossConfig(objective="ppo")


@pytest.mark.parametrize(("knobs", "field"), [
    ({"objective": "ppo"}, "loss.objective"), ({"ties": "hinge"}, "loss.ties"), ({"pairs": "best"}, "loss.pairs"),
    ({"dpo_beta": 0.0}, "loss.dpo_beta"), ({"ipo_tau": -1.0}, "loss.ipo_tau"), ({"simpo_beta": 0}, "loss.simpo_beta"),
    ({"simpo_gamma": -0.1}, "loss.simpo_gamma"), ({"pro_temperature": 0.0}, "loss.pro_temperature"),
    ({"pro_temperature": "hot"}, "loss.pro_temperature"), ({"mle_weight": -1.0}, "loss.mle_weight")])
def test_bad_objective_knobs_are_named(knobs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        LossConfig(**knobs)


def test_records_validate_with_and_without_reference_fields():
    from tuna.errors import TunaError
    from tuna.records import parse_record

    base = {"id": "1", "instruction": "x", "ranking": {"by": "teacher"}}
    plain = parse_record({**base, "candidates": [{"text": "a", "score": 1.0}, {"text": "b", "score": 0.0}]})
    assert plain.candidates[0].ref_logprob is None
    ref = parse_record({**base, "candidates": [{"text": "a", "ref_logprob": -12.5, "ref_tokens": 7, "ref_model": "m"}]})
    assert (ref.candidates[0].ref_logprob, ref.candidates[0].ref_tokens) == (-12.5, 7)
    assert '"ref_logprob": -12.5' in ref.dump()
    with pytest.raises(TunaError, match=r"candidates\[0\]\.ref_tokens"):
        parse_record({**base, "candidates": [{"text": "a", "ref_logprob": -1.0, "ref_tokens": 0}]}, path="f.jsonl", line=3)
    with pytest.raises(TunaError, match=r"candidates\[0\]\.ref_logprob"):
        parse_record({**base, "candidates": [{"text": "a", "ref_logprob": float("nan"), "ref_tokens": 2}]})
