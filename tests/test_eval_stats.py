"""Bootstrap intervals against independent computations: a binomial proportion against the normal approximation,
paired differences of identical and shifted columns, the chunked resampler against a per-replicate loop, and the
stratified LMentry bootstrap against explicit example resampling."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from evaluation import lmentry, stats
from evaluation.lmentry_scorers import CORE_TASKS


def test_bootstrap_of_a_proportion_matches_the_normal_approximation():
    """n = 5,000 draws of a 0/1 variable: the 95 % percentile interval is p ± 1.96 sqrt(p(1-p)/n) up to Monte Carlo
    error (checked to 6 % of the half-width with 4,000 resamples)."""
    rng = np.random.default_rng(1)
    x = (rng.random(5000) < 0.3).astype(float)
    est = stats.mean_ci(x, resamples=4000, seed=7)
    p, n = x.mean(), len(x)
    half = 1.959964 * math.sqrt(p * (1 - p) / n)
    assert est.value == p and est.n == 5000
    assert est.lo == pytest.approx(p - half, abs=0.06 * half)
    assert est.hi == pytest.approx(p + half, abs=0.06 * half)


def test_chunked_resampler_equals_a_per_replicate_loop():
    x = np.random.default_rng(2).random(777)
    fast = stats.bootstrap_means(x, resamples=50, seed=11)
    rng = np.random.default_rng(11)
    slow = np.array([np.mean(x[rng.integers(0, len(x), size=len(x))]) for _ in range(50)])
    assert np.allclose(fast, slow, rtol=0, atol=1e-12)


def test_paired_difference_of_identical_and_shifted_columns():
    a = np.random.default_rng(3).random(300)
    same = stats.paired_difference(a, a.copy())
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.significant
    shifted = stats.paired_difference(a + 1.0, a)
    assert shifted.value == pytest.approx(1.0) and shifted.lo == pytest.approx(1.0) and shifted.hi == pytest.approx(1.0)
    assert shifted.significant


def test_pairing_narrows_the_interval_of_correlated_scores():
    """Two models that mostly agree per item: the paired interval is much narrower than one that ignores pairing."""
    rng = np.random.default_rng(4)
    base = rng.random(400)
    a, b = base + 0.02 * rng.random(400), base
    paired = stats.paired_difference(a, b)
    ia, ib = stats.bootstrap_means(a, seed=1), stats.bootstrap_means(b, seed=2)
    lo, hi = stats.interval(ia - ib)
    assert paired.significant and paired.hi - paired.lo < 0.2 * (hi - lo)


def test_seeded_and_reproducible():
    x = np.random.default_rng(5).random(100)
    assert stats.mean_ci(x, seed=1) == stats.mean_ci(x, seed=1)
    assert stats.mean_ci(x, seed=1) != stats.mean_ci(x, seed=2)


# ----------------------------------------------------------------------------------------------- LMentry


def _lmentry_items(seed: int, per_template: int = 12, p: float = 0.4, model_shift: float = 0.0) -> list[dict]:
    """Scored examples for all 41 files, 3 templates each, answer indices alternating on argument-order tasks."""
    rng = random.Random(seed)
    items = []
    for t in [*CORE_TASKS, *lmentry.SUBSET_TASKS]:
        for tpl in range(3):
            for k in range(per_template):
                ai = k % 2 if t in lmentry.ARGUMENT_ORDER_TASKS else None
                items.append({"id": f"{t}/{tpl}-{k}", "task": t, "template_id": tpl, "answer_index": ai,
                              "score": int(rng.random() < p + model_shift)})
    return items


def test_lmentry_stratified_bootstrap_matches_explicit_resampling():
    """The multinomial-count resampler against a slow reference that draws examples within each (task, template)
    and recomputes the aggregate from them: same distribution (mean and spread of 400 replicates each)."""
    items = _lmentry_items(0)
    fast = stats.lmentry_replicates(items, resamples=400, seed=3)[0]
    strata: dict = {}
    for it in items:
        strata.setdefault((it["task"], it["template_id"]), []).append(it)
    rng = random.Random(9)
    slow = {m: [] for m in ("lmentry_score", "accuracy_unrounded", "robustness")}
    for _ in range(400):
        resampled = [rng.choice(rows) for rows in strata.values() for _ in rows]
        agg = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(resampled))))
        for m in slow:
            slow[m].append(agg[m])
    for m, vals in slow.items():
        f, s = fast[m], np.array(vals)
        assert f.mean() == pytest.approx(s.mean(), abs=0.25 * s.std()), m
        assert f.std() == pytest.approx(s.std(), rel=0.2), m


def test_lmentry_point_values_and_intervals():
    items = _lmentry_items(1)
    cis = stats.lmentry_cis(items, resamples=300)
    point = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(items))))
    assert point["complete"]
    for m in stats.LMENTRY_METRICS:
        assert cis[m].value == point[m] and cis[m].n == len(items)
    assert cis["accuracy"].lo <= cis["accuracy"].value <= cis["accuracy"].hi
    assert all(math.isnan(cis[m].lo) for m in ("lmentry_score", "robustness"))
    # accuracy: a mean of 25 task accuracies over 36 examples each: about the normal approximation's width
    p = np.array([np.mean([it["score"] for it in items if it["task"] == t]) for t in CORE_TASKS])
    half = 1.96 * 100 * math.sqrt(np.sum(p * (1 - p) / 36)) / 25
    assert (cis["accuracy"].hi - cis["accuracy"].lo) / 2 == pytest.approx(half, rel=0.25)


def test_robustness_replicates_are_biased_below_the_estimate():
    """Why robustness and the score get no interval: resampling noise widens the accuracy differences that
    robustness subtracts, so nearly every replicate lies below the point estimate (here 12 examples per template)."""
    items = _lmentry_items(1)
    point = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(items))))
    rep = stats.lmentry_replicates(items, resamples=300)[0]
    assert np.mean(rep["robustness"] < point["robustness"]) > 0.9
    assert abs(np.mean(rep["accuracy_unrounded"] < point["accuracy_unrounded"]) - 0.5) < 0.1  # accuracy: unbiased


def test_lmentry_paired_difference():
    a = _lmentry_items(2)
    same = stats.lmentry_paired(a, [dict(r) for r in a], resamples=200)
    assert (same["accuracy"].value, same["accuracy"].lo, same["accuracy"].hi) == (0.0, 0.0, 0.0)
    assert same["lmentry_score"].value == 0.0 and same["robustness"].value == 0.0
    better = _lmentry_items(2, model_shift=0.35)  # same random stream: b's correct answers are a superset of a's
    diff = stats.lmentry_paired(better, a, resamples=300)
    assert diff["accuracy"].value > 0 and diff["accuracy"].significant and diff["accuracy"].n == len(a)


def test_ratio_bootstrap_against_a_per_replicate_loop_and_the_delta_method():
    """Pair accuracy = sum(right) / sum(pairs) over ranked sets, resampling sets: the vectorised replicates equal a
    plain loop, and on many sets the interval matches the delta-method (ratio estimator) standard error."""
    rng = np.random.default_rng(3)
    den = rng.integers(1, 7, size=600).astype(float)
    num = rng.binomial(den.astype(int), 0.6).astype(float)
    est = stats.ratio_ci(num, den, resamples=3000, seed=5)
    assert est.value == num.sum() / den.sum() and est.n == 600
    idx = np.random.default_rng(5).integers(0, 600, size=(3000, 600))
    loop = np.array([num[i].sum() / den[i].sum() for i in idx])
    assert np.allclose(stats.bootstrap_ratios(num, den, idx), loop)
    r = est.value
    se = math.sqrt(((num - r * den) ** 2).sum() / (600 * 599)) / den.mean()  # delta method for a ratio of means
    assert est.lo == pytest.approx(r - 1.959964 * se, abs=0.08 * 1.96 * se)
    assert est.hi == pytest.approx(r + 1.959964 * se, abs=0.08 * 1.96 * se)


def test_paired_ratio_difference_of_identical_and_shifted_models():
    rng = np.random.default_rng(4)
    den = rng.integers(1, 7, size=300).astype(float)
    num = rng.binomial(den.astype(int), 0.5).astype(float)
    same = stats.paired_ratio_difference(num, den, num, den, resamples=500, seed=1)
    assert same.value == 0.0 and same.lo == 0.0 and same.hi == 0.0 and same.n == 300
    better = np.minimum(num + 1, den)  # one more pair right in every set where one was wrong
    d = stats.paired_ratio_difference(better, den, num, den, resamples=1000, seed=1)
    assert d.value == pytest.approx((better.sum() - num.sum()) / den.sum())
    assert d.lo > 0 and d.significant


def test_lmentry_accuracy_interval_with_one_example_per_template():
    """The demo's slice has one example per (task, template): resampling within tasks (templates pooled, as the accuracy
    pools them) still gives an interval; it matches an explicit per-replicate loop over each task's examples."""
    items = _lmentry_items(3, per_template=1)
    est = stats.lmentry_cis(items, resamples=400, seed=2)["accuracy"]
    assert est.hi - est.lo > 5  # 25 tasks x 3 examples: far from a zero-width interval
    rng = np.random.default_rng(2)
    reps = np.zeros(400)
    for t in CORE_TASKS:
        x = np.array([it["score"] for it in items if it["task"] == t], dtype=float)
        reps += 100 * x[rng.integers(0, len(x), size=(400, len(x)))].mean(axis=1)
    reps /= len(CORE_TASKS)
    assert np.allclose(stats.lmentry_accuracy_replicates([items], resamples=400, seed=2)[0], reps)
    assert (est.lo, est.hi) == stats.interval(reps)
