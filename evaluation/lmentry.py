"""LMentry (Efrat et al.): 25 core tasks + 16 argument-content subsets, zero-shot, regex scorers.

Aggregation follows ``lmentry/analysis/{accuracy,robustness,lmentry_score}.py``:

* task accuracy = correct / examples (x100, rounded to 2 decimals), per-template accuracy rounded to 1;
  model accuracy = mean over the 25 core tasks;
* robustness aspect = mean over its items of ``100 - max pairwise |accuracy difference|``:
  argument order (answer as 1st vs 2nd argument; 7 tasks), argument content (6 groups of subset files),
  template (3 templates, 25 tasks), adjacent tasks (17 pairs); robustness = mean of the 4 aspects;
* LMentry score = accuracy x robustness / 100.

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
from itertools import combinations
from pathlib import Path
from typing import Any

from evaluation.lmentry_scorers import CORE_TASKS, base_task, score
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
    return 100 - max((abs(a - b) for a, b in combinations(accs, 2)), default=0.0)


def task_metrics(task: str, scored: list[tuple[dict[str, Any], int, int]]) -> dict[str, Any]:
    """``scored``: (example, score, certainty) triples for one task."""
    per_t: dict[int, list[int]] = defaultdict(list)
    idx: dict[int, list[int]] = defaultdict(list)
    for ex, s, _ in scored:
        md = ex["metadata"]
        per_t[md["template_id"]].append(s)
        if "answer_index" in md and md["answer_index"] in (0, 1):
            idx[md["answer_index"]].append(s)
    n = len(scored)
    n1 = sum(s for _, s, _ in scored)
    cert = sum(c for _, _, c in scored)
    out: dict[str, Any] = {
        "n": n,
        "accuracy": round(100 * n1 / n, 2) if n else 0.0,
        "certainty": round(100 * cert / n, 2) if n else 0.0,
        "templates": {str(t): round(100 * sum(v) / len(v), 1) for t, v in sorted(per_t.items())},
    }
    if base_task(task) in ARGUMENT_ORDER_TASKS and task == base_task(task):
        # upstream: 0 when no example of that index is correct, else correct / count
        out["answer_index"] = {str(i): round(100 * (sum(idx[i]) / len(idx[i]) if sum(idx.get(i, [])) else 0.0), 2) for i in (0, 1)}
    return out


def aggregate(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    acc = [per_task[t]["accuracy"] for t in CORE_TASKS if t in per_task]
    aspects: dict[str, float | None] = {}
    items: dict[str, dict[str, float]] = {}

    order = {t: robustness_func(list(per_task[t]["answer_index"].values())) for t in ARGUMENT_ORDER_TASKS if t in per_task}
    content = {}
    for t, subs in ARGUMENT_CONTENT_GROUPS.items():
        names = [f"{t}_{s}" for s in subs]
        if all(n in per_task for n in names):
            content[t] = robustness_func([per_task[n]["accuracy"] for n in names])
    template = {t: robustness_func(list(per_task[t]["templates"].values())) for t in CORE_TASKS if t in per_task}
    adjacent = {f"{a}/{b}": robustness_func([per_task[a]["accuracy"], per_task[b]["accuracy"]]) for a, b in ADJACENT_PAIRS if a in per_task and b in per_task}
    for name, vals, full in (
        ("argument_order", order, len(ARGUMENT_ORDER_TASKS)),
        ("argument_content", content, len(ARGUMENT_CONTENT_GROUPS)),
        ("template", template, len(CORE_TASKS)),
        ("adjacent_tasks", adjacent, len(ADJACENT_PAIRS)),
    ):
        items[name] = {k: round(v, 2) for k, v in vals.items()}
        aspects[name] = round(sum(vals.values()) / len(vals), 2) if len(vals) == full else None
    complete = all(v is not None for v in aspects.values()) and len(acc) == len(CORE_TASKS)
    accuracy = sum(acc) / len(acc) if acc else 0.0
    robustness = round(sum(aspects.values()) / 4, 1) if complete else None  # type: ignore[arg-type]
    return {
        "accuracy": round(accuracy, 2),
        "robustness": robustness,
        "lmentry_score": round(accuracy * robustness / 100, 2) if robustness is not None else None,
        "robustness_aspects": aspects,
        "robustness_items": items,
        "complete": complete,
    }


def score_rows(tasks: dict[str, Any], rows: dict[str, dict[str, Any]], *, truncate: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``rows``: ``{"<task>/<example id>": {"prediction": ...}}`` -> (metrics, per-example scores)."""
    by_task: dict[str, list[tuple[dict[str, Any], int, int]]] = defaultdict(list)
    scored_rows = []
    for key, row in rows.items():
        task, eid = key.split("/", 1)
        ex = tasks[task]["examples"][eid]
        s, c = score(task, row.get("prediction") or "", ex, truncate=truncate)
        by_task[task].append((ex, s, c))
        scored_rows.append({"id": key, "score": s, "certainty": c})
    per_task = {t: task_metrics(t, v) for t, v in by_task.items()}
    metrics = aggregate(per_task)
    metrics["per_task"] = {t: per_task[t] for t in [*CORE_TASKS, *SUBSET_TASKS] if t in per_task}
    return metrics, scored_rows
