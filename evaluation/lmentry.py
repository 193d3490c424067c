"""LMentry (Efrat et al.): 25 core tasks + 16 argument-content subsets, zero-shot, regex scorers.

Aggregation is ``lmentry/analysis/{accuracy,robustness,lmentry_score}.py`` (aviaefrat/lmentry @ 463763d), rounding
included:

* task accuracy = ``round(correct / examples * 100, 2)``; per-template accuracy ``round(.., 1)``; accuracy when the
  answer is the 1st / 2nd argument ``round(.., 2)`` (0 when none of them is correct);
* model accuracy = the mean of the 25 (rounded) task accuracies, not rounded;
* robustness aspect = the mean over its items of ``100 - max pairwise |accuracy difference|``, not rounded:
  argument order (7 tasks), argument content (6 groups of subset files), template (3 templates, 25 tasks),
  adjacent tasks (17 pairs); robustness = ``np.mean(aspects).round(1)``;
* LMentry score = ``round(accuracy * (robustness / 100), 1)``; accuracy is reported as ``round(accuracy, 1)`` too
  (the unrounded mean is kept as ``accuracy_unrounded``).

:func:`aggregate` works on arrays with a leading batch axis, so the bootstrap in :mod:`evaluation.stats`
recomputes the whole aggregate on resampled counts with this same code.

With ``limit`` (examples per task, spread evenly over the 3 templates) accuracies are over the evaluated
examples only, so every number, robustness above all, is an approximation of the full-benchmark value;
``results.json`` says so (``"approximate": true``).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.lmentry_scorers import CORE_TASKS, score
from tuna.errors import TunaError

ARGUMENT_ORDER_TASKS = ["more_letters", "less_letters", "first_alphabetically", "rhyming_word", "homophones", "bigger_number", "smaller_number"]
ARGUMENT_CONTENT_GROUPS = {
    "first_alphabetically": ["far_first_letter", "different_first_letter", "consecutive_first_letter", "same_first_letter"],
    "all_words_from_category": ["0_distractors", "1_distractors", "2_distractors"],
    "any_words_from_category": ["5_distractors", "4_distractors", "3_distractors"],
    "rhyming_word": ["orthographically_similar", "orthographically_different"],
    "more_letters": ["length_diff_3plus", "length_diff_1"],
    "less_letters": ["length_diff_3plus", "length_diff_1"],
}
SUBSET_TASKS = [f"{t}_{s}" for t, subs in ARGUMENT_CONTENT_GROUPS.items() for s in subs]
ADJACENT_PAIRS = [
    ("bigger_number", "smaller_number"), ("more_letters", "less_letters"), ("word_after", "word_before"),
    ("most_associated_word", "least_associated_word"), ("any_words_from_category", "all_words_from_category"),
    ("sentence_containing", "sentence_not_containing"), ("word_containing", "word_not_containing"),
    ("starts_with_word", "starts_with_letter"), ("ends_with_word", "ends_with_letter"),
    ("sentence_containing", "word_containing"), ("sentence_not_containing", "word_not_containing"),
    ("first_word", "first_letter"), ("last_word", "last_letter"),
    ("starts_with_word", "ends_with_word"), ("starts_with_letter", "ends_with_letter"),
    ("first_word", "last_word"), ("first_letter", "last_letter"),
]


def load_tasks(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise TunaError("LMentry data file does not exist", path=p)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        data = json.load(f)
    missing = [t for t in CORE_TASKS if t not in data]
    if missing:
        raise TunaError(f"LMentry data lacks tasks: {', '.join(missing)}", path=p)
    return data


def select_examples(task_data: dict[str, Any], limit: int | None) -> list[tuple[str, dict[str, Any]]]:
    """All examples, or the first ``ceil(limit/3)`` of each template (so template robustness stays defined)."""
    items = list(task_data["examples"].items())
    if not limit:
        return items
    per = math.ceil(limit / max(1, len(task_data["settings"]["input_templates"])))
    seen: dict[int, int] = defaultdict(int)
    out = []
    for eid, ex in items:
        t = ex["metadata"]["template_id"]
        if seen[t] < per:
            out.append((eid, ex))
            seen[t] += 1
    return out


def robustness_func(accs: list[float]) -> float:
    """upstream ``robustness_func``: 100 minus the largest pairwise absolute difference."""
    return 100 - max((abs(a - b) for a, b in combinations(accs, 2)), default=0.0)


# ----------------------------------------------------------------------------------- counts -> accuracies


def _py_round(values: Any, digits: int) -> np.ndarray:
    """Python's ``round`` on every element (upstream rounds Python floats; ``np.round`` differs on some halves)."""
    arr = np.asarray(values, dtype=float)
    return np.vectorize(lambda v: round(float(v), digits), otypes=[float])(arr) if arr.size else arr


def _rate(correct: Any, total: Any, digits: int) -> np.ndarray:
    """``round(correct / total * 100, digits)`` elementwise, as upstream writes it; 0 where nothing is correct."""
    c, n = np.asarray(correct, dtype=float), np.asarray(total, dtype=float)
    safe = np.where(n > 0, n, 1.0)
    return _py_round(np.where(c > 0, c / safe * 100, 0.0), digits)


@dataclass
class TaskCounts:
    """Counts of one task's examples, with a leading batch axis (1 for the point estimate, B for a bootstrap)."""

    template_n: np.ndarray
    """(B, templates) examples per template."""
    template_correct: np.ndarray
    """(B, templates) correct examples per template."""
    index_n: np.ndarray | None = None
    """(B, 2) examples whose answer is the 1st / 2nd argument (argument-order tasks only)."""
    index_correct: np.ndarray | None = None


def task_accuracies(counts: dict[str, TaskCounts]) -> dict[str, dict[str, np.ndarray]]:
    """upstream ``get_accuracy_and_certainty`` / ``get_simple_answer_index_bias`` on counts: task accuracy
    (2 decimals), per-template accuracies (1 decimal), accuracy per answer index (2 decimals)."""
    out = {}
    for task, c in counts.items():
        acc = {"accuracy": _rate(c.template_correct.sum(1), c.template_n.sum(1), 2),
               "templates": _rate(c.template_correct, c.template_n, 1)}
        if c.index_n is not None:
            acc["answer_index"] = _rate(c.index_correct, c.index_n, 2)
        out[task] = acc
    return out


def _robustness(accs: np.ndarray) -> np.ndarray:
    """``robustness_func`` over the last axis: the largest pairwise |difference| is max - min (same float)."""
    return 100 - (accs.max(-1) - accs.min(-1))


def aggregate(acc: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The LMentry score from per-task accuracies (:func:`task_accuracies`), batched over the leading axis.

    Returns arrays of shape (B,): ``accuracy_unrounded``, ``accuracy``, ``robustness``, ``lmentry_score`` (nan
    when a robustness item is missing), ``robustness_aspects`` {aspect: (B,) | None}, ``robustness_items``
    {aspect: {item: (B,)}} and ``complete``."""
    core = [t for t in CORE_TASKS if t in acc]
    items: dict[str, dict[str, np.ndarray]] = {
        "argument_order": {t: _robustness(acc[t]["answer_index"]) for t in ARGUMENT_ORDER_TASKS
                           if t in acc and "answer_index" in acc[t]},
        "argument_content": {t: _robustness(np.stack([acc[f"{t}_{s}"]["accuracy"] for s in subs], -1))
                             for t, subs in ARGUMENT_CONTENT_GROUPS.items() if all(f"{t}_{s}" in acc for s in subs)},
        "template": {t: _robustness(acc[t]["templates"]) for t in core},
        "adjacent_tasks": {f"{a}/{b}": _robustness(np.stack([acc[a]["accuracy"], acc[b]["accuracy"]], -1))
                           for a, b in ADJACENT_PAIRS if a in acc and b in acc},
    }
    full = {"argument_order": len(ARGUMENT_ORDER_TASKS), "argument_content": len(ARGUMENT_CONTENT_GROUPS),
            "template": len(CORE_TASKS), "adjacent_tasks": len(ADJACENT_PAIRS)}
    # upstream: np.mean over each aspect's items (unrounded), np.mean over the aspects, .round(1)
    aspects = {k: np.mean(np.stack(list(v.values()), -1), axis=-1) if len(v) == full[k] else None for k, v in items.items()}
    complete = all(v is not None for v in aspects.values()) and len(core) == len(CORE_TASKS)
    accuracy = np.mean(np.stack([acc[t]["accuracy"] for t in core], -1), axis=-1) if core else np.zeros(1)
    if complete:
        robustness = np.mean(np.stack(list(aspects.values()), -1), axis=-1).round(1)
        score = np.round(accuracy * (robustness / 100), 1)
    else:
        robustness = score = np.full(accuracy.shape, np.nan)
    return {"accuracy_unrounded": accuracy, "accuracy": np.round(accuracy, 1), "robustness": robustness,
            "lmentry_score": score, "robustness_aspects": aspects, "robustness_items": items, "complete": complete}


def counts_from_items(items: list[dict[str, Any]]) -> dict[str, TaskCounts]:
    """Per-task counts (batch size 1) from scored examples ``{task, template_id, answer_index, score}``."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by_task[it["task"]].append(it)
    out = {}
    for task, rows in by_task.items():
        k = 1 + max(int(r["template_id"]) for r in rows)
        tn, tc = np.zeros((1, k)), np.zeros((1, k))
        for r in rows:
            tn[0, int(r["template_id"])] += 1
            tc[0, int(r["template_id"])] += r["score"]
        c = TaskCounts(tn, tc)
        if task in ARGUMENT_ORDER_TASKS:
            c.index_n, c.index_correct = np.zeros((1, 2)), np.zeros((1, 2))
            for r in rows:
                if r.get("answer_index") in (0, 1):
                    c.index_n[0, r["answer_index"]] += 1
                    c.index_correct[0, r["answer_index"]] += r["score"]
        out[task] = c
    return out


def summarize(agg: dict[str, Any], i: int = 0) -> dict[str, Any]:
    """Row ``i`` of a batched :func:`aggregate` as plain JSON numbers (None where not defined)."""

    def num(x: np.ndarray) -> float | None:
        v = float(x[i])
        return None if math.isnan(v) else v

    return {
        "accuracy": num(agg["accuracy"]),
        "accuracy_unrounded": num(agg["accuracy_unrounded"]),
        "robustness": num(agg["robustness"]),
        "lmentry_score": num(agg["lmentry_score"]),
        "robustness_aspects": {k: (None if v is None else num(v)) for k, v in agg["robustness_aspects"].items()},
        "robustness_items": {k: {n: num(v) for n, v in d.items()} for k, d in agg["robustness_items"].items()},
        "complete": agg["complete"],
    }


def score_rows(tasks: dict[str, Any], rows: dict[str, dict[str, Any]], *, truncate: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``rows``: ``{"<task>/<example id>": {"prediction": ...}}`` -> (metrics, per-example scores).

    The per-example rows carry what the bootstrap needs to recompute the aggregate: task, template and answer
    index (``null`` where the example has none)."""
    scored = []
    for key, row in rows.items():
        task, eid = key.split("/", 1)
        ex = tasks[task]["examples"][eid]
        md = ex["metadata"]
        s, c = score(task, row.get("prediction") or "", ex, truncate=truncate)
        ai = md.get("answer_index")
        scored.append({"id": key, "task": task, "template_id": md["template_id"],
                       "answer_index": ai if ai in (0, 1) else None, "score": s, "certainty": c})
    counts = counts_from_items(scored)
    acc = task_accuracies(counts)
    metrics = summarize(aggregate(acc))
    certain: dict[str, int] = defaultdict(int)
    for r in scored:
        certain[r["task"]] += r["certainty"]
    per_task = {}
    for t in [*CORE_TASKS, *SUBSET_TASKS]:
        if t not in acc:
            continue
        n = int(counts[t].template_n.sum())
        per_task[t] = {"n": n, "accuracy": float(acc[t]["accuracy"][0]),
                       "certainty": round(certain[t] / n * 100, 2) if n else 0.0,
                       "templates": {str(j): float(v) for j, v in enumerate(acc[t]["templates"][0])}}
        if "answer_index" in acc[t]:
            per_task[t]["answer_index"] = {str(j): float(v) for j, v in enumerate(acc[t]["answer_index"][0])}
    metrics["per_task"] = per_task
    return metrics, scored
