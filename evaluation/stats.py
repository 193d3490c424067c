"""Bootstrap confidence intervals for the report's cells and paired differences between two models.

Percentile bootstrap (numpy), seeded, 95 % by default:

* Super-NI: items are instances; a cell's interval resamples instances (the metric is their mean).
* LMentry: the accuracy's interval resamples examples within each task (templates pooled, as the accuracy pools
  them). :func:`lmentry_replicates` resamples within each (task, template) cell and recomputes the whole aggregate
  with :func:`evaluation.lmentry.aggregate`. Drawing a cell's resample as multinomial counts over its kinds of example
  (answer index x correct) is the same distribution as drawing the examples, and much cheaper. Intervals are given
  for the accuracy only: robustness is 100 - max |accuracy difference|, and resampling adds noise to every
  accuracy, which widens those differences, so the replicates of robustness (and of the score, accuracy x
  robustness) sit below the point estimate and a percentile interval on them would miss it (the tests measure
  this); their values are reported without an interval.
* Vicuna QA: items are questions; the interval is on the win rate (wins / decided questions).

A paired comparison resamples the same items for both models (the same instances, examples or questions) and
reports the difference with its interval; the difference is significant at the 5 % level when the interval
excludes 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """For a difference: the interval excludes 0."""
        return self.lo > 0 or self.hi < 0


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (nan replicates are dropped)."""
    s = samples[~np.isnan(samples)]
    if not len(s):
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(s, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_means(x: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement, same size) of ``x``: (resamples,)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n == 0:
        return np.full(resamples, np.nan)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # bounded memory: chunk x n indices at a time
    for s in range(0, resamples, chunk):
        k = min(chunk, resamples - s)
        out[s : s + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def mean_ci(x: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Estimate:
    """The mean of per-item values with its bootstrap interval (items resampled)."""
    x = np.asarray(x, dtype=float)
    lo, hi = interval(bootstrap_means(x, resamples=resamples, seed=seed), level)
    return Estimate(float(x.mean()) if len(x) else float("nan"), lo, hi, len(x))


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) over the same items, resampling items (pairs) together."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in size: {a.shape} vs {b.shape}")
    return mean_ci(a - b, resamples=resamples, seed=seed, level=level)


# ----------------------------------------------------------------------------------------------- LMentry

LMENTRY_METRICS = ("lmentry_score", "accuracy", "robustness")
LMENTRY_WITH_INTERVAL = ("accuracy",)
"""Robustness and the score are biased under resampling (see the module doc): no interval for them."""


def _strata(items: list[dict[str, Any]], others: list[list[dict[str, Any]]]) -> dict[tuple[str, int], np.ndarray]:
    """Per (task, template): counts of each kind of example, a kind being (answer index 0/1/none, correct in each of
    the models). ``others`` are the same examples scored by further models, in the same order."""
    k = 2 ** (1 + len(others))
    counts: dict[tuple[str, int], np.ndarray] = defaultdict(lambda: np.zeros(3 * k))
    for i, it in enumerate(items):
        ai = it.get("answer_index")
        code = ai if ai in (0, 1) else 2
        bits = int(it["score"])
        for j, o in enumerate(others):
            bits |= int(o[i]["score"]) << (j + 1)
        counts[(it["task"], int(it["template_id"]))][code * k + bits] += 1
    return dict(counts)


def lmentry_replicates(items: list[dict[str, Any]], others: Sequence[list[dict[str, Any]]] = (), *, resamples: int = RESAMPLES,
                       seed: int = SEED) -> list[dict[str, Any]]:
    """The aggregate of each model on ``resamples`` stratified resamples of the examples (the same resamples for every
    model): one :func:`evaluation.lmentry.aggregate` dict (arrays of shape (resamples,)) per model."""
    from evaluation import lmentry

    models = 1 + len(others)
    k = 2 ** models
    strata = _strata(items, list(others))
    rng = np.random.default_rng(seed)
    draws = {s: rng.multinomial(int(c.sum()), c / c.sum(), size=resamples).reshape(resamples, 3, k) for s, c in sorted(strata.items())}
    n_templates: dict[str, int] = defaultdict(int)
    for task, t in strata:
        n_templates[task] = max(n_templates[task], t + 1)
    out = []
    for m in range(models):
        correct_kind = np.array([(bits >> m) & 1 for bits in range(k)], dtype=float)
        counts = {}
        for task, nt in n_templates.items():
            tn, tc = np.zeros((resamples, nt)), np.zeros((resamples, nt))
            i_n, i_c = np.zeros((resamples, 2)), np.zeros((resamples, 2))
            for t in range(nt):
                d = draws.get((task, t))
                if d is None:
                    continue
                tn[:, t] = d.sum(axis=(1, 2))
                tc[:, t] = (d * correct_kind).sum(axis=(1, 2))
                i_n += d[:, :2, :].sum(axis=2)
                i_c += (d[:, :2, :] * correct_kind).sum(axis=2)
            c = lmentry.TaskCounts(tn, tc)
            if task in lmentry.ARGUMENT_ORDER_TASKS:
                c.index_n, c.index_correct = i_n, i_c
            counts[task] = c
        out.append(lmentry.aggregate(lmentry.task_accuracies(counts)))
    return out


def lmentry_accuracy_replicates(models: Sequence[list[dict[str, Any]]], *, resamples: int = RESAMPLES,
                                seed: int = SEED) -> np.ndarray:
    """LMentry accuracy (the mean over the core tasks of each task's share correct, templates pooled as upstream pools
    them) on ``resamples`` resamples of the examples within each task, the same examples for every model:
    (models, resamples). Resampling within (task, template) instead would give no variance at all to a slice with one
    example per template."""
    from evaluation.lmentry_scorers import CORE_TASKS

    rng = np.random.default_rng(seed)
    tasks = [t for t in CORE_TASKS if any(it["task"] == t for it in models[0])]
    acc = np.zeros((len(models), resamples))
    for t in tasks:
        rows = [i for i, it in enumerate(models[0]) if it["task"] == t]
        correct = np.array([[float(m[i]["score"]) for i in rows] for m in models])  # (models, n)
        idx = rng.integers(0, len(rows), size=(resamples, len(rows)))
        acc += 100 * correct[:, idx].mean(axis=2)
    return acc / max(len(tasks), 1)


def lmentry_cis(items: list[dict[str, Any]], *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict[str, Estimate]:
    """The LMentry score, accuracy and robustness of ``items``; an interval (else nan) for ``LMENTRY_WITH_INTERVAL``."""
    from evaluation import lmentry

    point = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(items))))
    rep = {"accuracy": lmentry_accuracy_replicates([items], resamples=resamples, seed=seed)[0]}
    out = {}
    for m in LMENTRY_METRICS:
        v = point[m]
        lo, hi = interval(rep[m], level) if v is not None and m in LMENTRY_WITH_INTERVAL else (float("nan"), float("nan"))
        out[m] = Estimate(float("nan") if v is None else v, lo, hi, len(items))
    return out


def lmentry_paired(a: list[dict[str, Any]], b: list[dict[str, Any]], *, resamples: int = RESAMPLES, seed: int = SEED,
                   level: float = LEVEL) -> dict[str, Estimate]:
    """Model a minus model b on the same examples (matched by id): score, accuracy and robustness differences, with an
    interval for ``LMENTRY_WITH_INTERVAL``."""
    from evaluation import lmentry

    by_id = {r["id"]: r for r in b}
    common = [r for r in a if r["id"] in by_id]
    b_rows = [by_id[r["id"]] for r in common]
    acc = lmentry_accuracy_replicates([common, b_rows], resamples=resamples, seed=seed)
    ra, rb = {"accuracy": acc[0]}, {"accuracy": acc[1]}
    pa = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(common))))
    pb = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(b_rows))))
    out = {}
    for m in LMENTRY_METRICS:
        if pa[m] is None or pb[m] is None:
            out[m] = Estimate(float("nan"), float("nan"), float("nan"), len(common))
            continue
        lo, hi = interval(ra[m] - rb[m], level) if m in LMENTRY_WITH_INTERVAL else (float("nan"), float("nan"))
        out[m] = Estimate(pa[m] - pb[m], lo, hi, len(common))
    return out


# ----------------------------------------------------------------------------------------------- ratios


def bootstrap_ratios(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``sum(num[i]) / sum(den[i])`` for each row of resample indices ``idx`` (nan where the denominator is 0)."""
    n, d = num[idx].sum(axis=1), den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def ratio_ci(num: Sequence[float], den: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
             level: float = LEVEL) -> Estimate:
    """A ratio of sums over units (pairs ordered right / pairs, per ranked set), resampling the units: the pairs of one
    set stay together, since they share its candidates."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    value = float(a.sum() / b.sum()) if b.sum() > 0 else float("nan")
    if not len(a):
        return Estimate(value, float("nan"), float("nan"), 0)
    lo, hi = interval(bootstrap_ratios(a, b, _indices(len(a), resamples, seed)), level)
    return Estimate(value, lo, hi, len(a))


def paired_ratio_difference(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float], den_b: Sequence[float], *,
                            resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Estimate:
    """ratio(a) - ratio(b) over the same units, resampling units together."""
    na, da, nb, db = (np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b))
    if not (na.shape == da.shape == nb.shape == db.shape):
        raise ValueError("paired ratios need the same units")
    value = float(na.sum() / da.sum() - nb.sum() / db.sum()) if da.sum() > 0 and db.sum() > 0 else float("nan")
    if not len(na):
        return Estimate(value, float("nan"), float("nan"), 0)
    idx = _indices(len(na), resamples, seed)
    lo, hi = interval(bootstrap_ratios(na, da, idx) - bootstrap_ratios(nb, db, idx), level)
    return Estimate(value, lo, hi, len(na))
