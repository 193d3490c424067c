"""Verifiable feedback: candidate sets ranked by a score that can be checked, not by an LLM judge.

A weak judge cannot tell "the training method does not work" from "the feedback is noise". A verifier can:
it ranks a student's samples by a benchmark's own per-item scorer, so the ranking is right by construction and a
ranking stage that learns it must get better at the task. Three pieces:

* **splits** (:func:`make_splits`): instruction records built from benchmark items, with disjoint train /
  validation / held-out parts (LMentry examples outside the evaluation slice; each Super-NI slice task's instances
  split in two). Each record carries what its verifier needs in ``provenance["verifier"]``: the benchmark, the
  Super-NI references or the LMentry example (its input and metadata).
* **verifiers** (:func:`verifier_scores`): ``task`` = the benchmark's headline per-item scorer (Super-NI: ROUGE-L
  F, stemmed, max over the references, as the official script; LMentry: the task's regex scorer, 0 or 1);
  ``rouge_l`` = ROUGE-L F against the references, or against the record's ``gold`` for any other record.
* **ranking** (:func:`rank_by_verifier`, ``tuna rank``): ordinary ranked sets, best first, ``ranking.by =
  "verifier"``, ``ranking.method`` = the verifier. Equal scores are ties; the order inside a tie is the sampling
  order, and the loss can skip tied pairs (``loss.ties``).

Held-out evaluation on such a split (``tuna eval verifiable``) generates greedy answers and scores them with the
same verifier; ``tuna eval pairs`` measures how often a model's length-normalised log-likelihood orders a held-out
ranked set's candidates as the verifier did.

The LMentry files carry a canary string asking that they not appear in training corpora. These splits train
throw-away checkpoints for a controlled experiment; never publish a model trained on them.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from tuna.errors import TunaError
from tuna.records import Candidate, Ranking, Record

Verifier = Literal["task", "rouge_l"]
VERIFIERS: tuple[str, ...] = ("task", "rouge_l")


# ----------------------------------------------------------------------------------------------- splits


def superni_records(rows: list[dict[str, Any]], roles: list[dict[str, Any]] | None = None) -> list[Record]:
    """Super-NI instances as instruction records: the zero-shot Tk-Instruct source (definition + input) is the
    instruction, so training prompts and evaluation prompts have the same form. ``roles``: extra verifier fields per
    record (``task_seen`` ...)."""
    from evaluation.superni import tk_instruct_prompt

    out = []
    for i, r in enumerate(rows):
        refs = [str(x) for x in r["references"]]
        out.append(Record(id=f"superni/{r['id']}", instruction=tk_instruct_prompt(r["definition"], r["input"], num_pos_examples=0), gold=refs[0],
                          candidates=[Candidate(text=refs[0], source="reference")],
                          provenance={"verifier": {"benchmark": "superni", "task": r["task"], "references": refs,
                                                   **(roles[i] if roles else {})}}))
    return out


def lmentry_records(task: str, examples: list[tuple[str, dict[str, Any]]], roles: list[dict[str, Any]] | None = None) -> list[Record]:
    """LMentry examples as instruction records; the example itself goes along for the task's scorer. ``roles``: extra
    verifier fields per record (``task_seen``, ``template_seen``, ``question``)."""
    out = []
    for i, (eid, ex) in enumerate(examples):
        answer = ex["metadata"].get("answer")
        gold = str(answer) if isinstance(answer, (str, int)) else None
        out.append(Record(id=f"lmentry/{task}/{eid}", instruction=ex["input"], gold=gold,
                          candidates=[Candidate(text=gold or "", source="reference")],
                          provenance={"verifier": {"benchmark": "lmentry", "task": task, "label": lmentry_label(task, ex["metadata"]),
                                                   "example": {"input": ex["input"], "metadata": ex["metadata"]},
                                                   **(roles[i] if roles else {})}}))
    return out


ROUGE_L_CATEGORIES = ("Overlap Extraction", "Keyword Tagging", "Question Rewriting", "Title Generation", "Data to Text",
                      "Grammar Error Correction")
"""Super-NI categories Tk-Instruct reports with ROUGE-L (generation); the others with exact match (classification)."""
MAX_LABELS = 10
"""A task with at most this many distinct labels is a classification task: its splits are stratified by label."""


@dataclass
class SplitSizes:
    """How the verifiable splits are cut. Every LMentry question (one set of arguments, asked in each of the task's
    templates) and every Super-NI instance goes to one split only; classification tasks are split stratified by label;
    some tasks and, per seen LMentry task, some templates are never trained on (they appear in validation and held-out
    only, which mirror each other)."""

    lmentry_heldout_questions: int = 4
    """Held-out questions per LMentry task, each asked in every template (4 questions x 3 templates = 12 items)."""
    lmentry_val_questions: int = 2
    """Validation questions per LMentry task, each in every template (the validation split mirrors held-out)."""
    lmentry_train_questions: int = 8
    """Training questions per seen LMentry task, each asked once, in one of the task's trained templates."""
    lmentry_heldout_templates: int = 1
    """Templates per seen LMentry task that are never trained on (drawn by the seed)."""
    lmentry_unseen_tasks: int = 3
    """LMentry tasks never trained on (drawn by the seed); they have validation and held-out questions only."""
    superni_heldout_per_task: int = 30
    """Held-out instances per Super-NI task."""
    superni_val_per_task: int = 10
    """Validation instances per Super-NI task."""
    superni_train_per_task: int = 30
    """Training instances per seen Super-NI task."""
    superni_unseen_tasks: int = 2
    """Super-NI tasks never trained on (Super-NI's own protocol is generalisation to unseen tasks): drawn by the seed in
    turn from the ROUGE-L (generation) and the exact-match (classification) categories."""


def normalise_label(text: str) -> str:
    """A label as the stratification and the constant baseline compare them: lower case, outer space and final
    punctuation removed (``"Yes."`` and ``"yes"`` are one label)."""
    return text.strip().lower().rstrip(".!?").strip()


def lmentry_question_key(metadata: dict[str, Any]) -> str:
    """One LMentry question: the example's arguments without its template (the same question in every template)."""
    return json.dumps({k: v for k, v in metadata.items() if k != "template_id"}, sort_keys=True, ensure_ascii=False)


def lmentry_label(task: str, metadata: dict[str, Any]) -> str | None:
    """The stratification label of an LMentry example: yes/no for the category questions, the answer's position
    (first or second argument) where the task has one, else none (the answers are the items' own words)."""
    if task == "all_words_from_category":
        return "yes" if metadata["num_distractors"] == 0 else "no"
    if task == "any_words_from_category":
        return "yes" if metadata["num_words"] > metadata["num_distractors"] else "no"
    if "answer_index" in metadata:
        return f"position {metadata['answer_index']}"
    return None


def superni_label(references: list[str], task_labels: set[str]) -> str | None:
    """A Super-NI instance's label (its first reference, normalised) when its task is a classification task."""
    return normalise_label(references[0]) if len(task_labels) <= MAX_LABELS else None


def stratified_take(groups: list[tuple[Any, str | None]], sizes: list[int], rng: random.Random) -> list[list[Any]]:
    """Deal ``groups`` (``(item, label)``) into parts of the given ``sizes`` so that every part holds each label in the
    proportion the whole has (largest remainder, seeded). Items are shuffled within each label first."""
    by_label: dict[str | None, list[Any]] = {}
    for item, lab in groups:
        by_label.setdefault(lab, []).append(item)
    labels = sorted(by_label, key=lambda x: (x is None, str(x)))
    for lab in labels:
        rng.shuffle(by_label[lab])
    total = len(groups)
    if sum(sizes) > total:
        raise ValueError(f"{sum(sizes)} items requested from {total}")
    parts: list[list[Any]] = []
    for size in sizes:
        remaining = sum(len(by_label[lab]) for lab in labels)
        if size == 0:
            parts.append([])
            continue
        quota = {lab: size * len(by_label[lab]) / remaining for lab in labels}
        take = {lab: int(math.floor(q)) for lab, q in quota.items()}
        short = size - sum(take.values())
        # largest remainder first; equal remainders in a seeded order
        order = sorted(labels, key=lambda lab: (-(quota[lab] - take[lab]), rng.random()))
        for lab in order[:short]:
            take[lab] += 1
        part: list[Any] = []
        for lab in labels:
            part += by_label[lab][: take[lab]]
            by_label[lab] = by_label[lab][take[lab]:]
        rng.shuffle(part)
        parts.append(part)
    return parts


def draw_unseen(tasks: list[str], k: int, rng: random.Random, family: dict[str, str] | None = None) -> list[str]:
    """``k`` tasks drawn by ``rng``; with ``family`` (task -> family), in turn from each family (sorted by name)."""
    if k <= 0:
        return []
    if not family:
        return sorted(rng.sample(sorted(tasks), k))
    pools = {f: sorted(t for t in tasks if family[t] == f) for f in sorted(set(family[t] for t in tasks))}
    for pool in pools.values():
        rng.shuffle(pool)
    out: list[str] = []
    while len(out) < k and any(pools.values()):
        for f in pools:
            if pools[f] and len(out) < k:
                out.append(pools[f].pop())
    return sorted(out)


def make_splits(
    *,
    superni_data: str | Path,
    lmentry_data: str | Path,
    sizes: SplitSizes | None = None,
    lmentry_tasks: list[str] | None = None,
    seed: int = 0,
) -> dict[str, list[Record]]:
    """``{"train", "val", "heldout"}`` instruction records that cannot leak or flip labels.

    * **Unseen tasks**: ``lmentry_unseen_tasks`` LMentry tasks and ``superni_unseen_tasks`` Super-NI tasks (drawn in
      turn from the generation and classification categories) have validation and held-out items only.
    * **LMentry by question**: a question (its arguments) is asked in every template of its task; all of them go to
      one split. Held-out and validation questions are asked in every template; each training question once, in a
      template drawn from the task's trained ones (``lmentry_heldout_templates`` per task are never trained on).
    * **Stratified**: within each task, items are dealt to the splits by a seeded shuffle stratified by label (the
      yes/no answer, the answer's position, or a Super-NI classification task's label), so every split of a task
      holds its labels in the same proportions; file order plays no part.

    Each record's ``provenance["verifier"]`` says its benchmark, task, split role (``seen``/``unseen`` task, trained or
    held-out template, question key) for the per-group tables."""
    from evaluation import lmentry, superni
    from evaluation.lmentry_scorers import CORE_TASKS

    n = sizes or SplitSizes()
    rng = random.Random(seed)
    splits: dict[str, list[Record]] = {"train": [], "val": [], "heldout": []}
    tasks = lmentry.load_tasks(lmentry_data)
    lm_tasks = list(lmentry_tasks or CORE_TASKS)
    lm_unseen = set(draw_unseen(lm_tasks, n.lmentry_unseen_tasks, rng))
    for t in lm_tasks:
        n_templates = len(tasks[t]["settings"]["input_templates"])
        questions: dict[str, dict[int, tuple[str, dict[str, Any]]]] = {}
        for eid, ex in tasks[t]["examples"].items():
            questions.setdefault(lmentry_question_key(ex["metadata"]), {})[int(ex["metadata"]["template_id"])] = (eid, ex)
        complete = [(q, lmentry_label(t, next(iter(v.values()))[1]["metadata"])) for q, v in questions.items()
                    if len(v) == n_templates]
        unseen = t in lm_unseen
        want = [n.lmentry_heldout_questions, n.lmentry_val_questions, 0 if unseen else n.lmentry_train_questions]
        if sum(want) > len(complete):
            raise TunaError(f"LMentry task {t} has {len(complete)} questions in all templates, {sum(want)} needed",
                            path=lmentry_data, field="lmentry_train_questions")
        held_q, val_q, train_q = stratified_take(complete, want, rng)
        held_templates = set() if unseen else set(rng.sample(range(n_templates), n.lmentry_heldout_templates))
        trained_templates = sorted(set(range(n_templates)) - held_templates)

        for split, picks in (("heldout", [(q, k) for q in held_q for k in range(n_templates)]),
                             ("val", [(q, k) for q in val_q for k in range(n_templates)]),
                             ("train", [(q, rng.choice(trained_templates)) for q in train_q])):
            roles = [{"task_seen": not unseen, "template_seen": k in trained_templates, "question": q} for q, k in picks]
            splits[split] += lmentry_records(t, [questions[q][k] for q, k in picks], roles=roles)
    rows = superni.load_instances(superni_data)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    family = {t: "generation" if items[0]["category"] in ROUGE_L_CATEGORIES else "classification" for t, items in by_task.items()}
    sni_unseen = set(draw_unseen(list(by_task), n.superni_unseen_tasks, rng, family))
    for t, items in by_task.items():
        labels = {normalise_label(r["references"][0]) for r in items}
        unseen = t in sni_unseen
        want = [n.superni_heldout_per_task, n.superni_val_per_task, 0 if unseen else n.superni_train_per_task]
        if sum(want) > len(items):
            raise TunaError(f"Super-NI task {t} has {len(items)} instances, {sum(want)} needed", path=superni_data,
                            field="superni_train_per_task")
        parts = stratified_take([(r, superni_label(r["references"], labels)) for r in items], want, rng)
        for split, part in zip(("heldout", "val", "train"), parts):
            splits[split] += superni_records(part, roles=[{"task_seen": not unseen, "family": family[t]}] * len(part))
    check_splits(splits)
    return splits


def check_splits(splits: dict[str, list[Record]]) -> None:
    """Guards for future edits: no record, LMentry question or prompt text in two splits; nothing of an unseen task
    or a held-out template in training."""
    seen: dict[str, str] = {}
    for split, recs in splits.items():
        for r in recs:
            v = r.provenance["verifier"]
            keys = [f"id:{r.id}", f"text:{r.instruction}"]
            if v["benchmark"] == "lmentry":
                keys.append(f"question:{v['task']}:{v['question']}")
            for k in keys:
                if seen.setdefault(k, split) != split:
                    raise TunaError(f"verifiable splits leak: {k[:80]!r} is in {seen[k]} and {split}")
            if split == "train" and not (v["task_seen"] and v.get("template_seen", True)):
                raise TunaError(f"verifiable splits leak: {r.id} (an unseen task or template) is in train")


# ----------------------------------------------------------------------------------------------- verifiers


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from evaluation.superni import FastScorer

    return FastScorer()


def verifier_scores(rec: Record, by: Verifier = "task") -> list[float]:
    """One score per candidate (higher is better) under the verifier ``by``."""
    v = rec.provenance.get("verifier") or {}
    texts = [c.text for c in rec.candidates]
    if by == "task":
        if v.get("benchmark") == "lmentry":
            from evaluation.lmentry_scorers import score

            return [float(score(v["task"], t, v["example"])[0]) for t in texts]
        if v.get("benchmark") == "superni":
            return [max(_rouge().rouge_l(t, ref) for ref in v["references"]) for t in texts]
        raise TunaError("verifier 'task' needs a record made by `tuna verifiable-data` (provenance.verifier)",
                        field=f"record {rec.id}: provenance.verifier")
    if by == "rouge_l":
        refs = v.get("references") or ([rec.gold] if rec.gold else [])
        if not refs:
            raise TunaError("verifier 'rouge_l' needs a gold response or references", field=f"record {rec.id}: gold")
        return [max(_rouge().rouge_l(t, ref) for ref in refs) for t in texts]
    raise TunaError(f"unknown verifier {by!r} ({' | '.join(VERIFIERS)})", field="by")


def degrade_scores(scores: list[float], flip: float, rng: random.Random) -> tuple[list[float], bool]:
    """A ranker that is wrong on purpose: with probability ``2 * flip`` the set's distinct score levels are permuted
    uniformly at random (each candidate takes the score of the level its own level is sent to), else the scores are
    kept. Any two candidates with different scores then swap order with probability exactly ``flip`` (a uniform
    permutation reverses a pair of levels half the time), ties stay ties, and the result is a ranking (transitive).
    ``flip`` = 0.5 is a random ranking. Flips are correlated within a set: the ranker guesses whole sets at random,
    as a judge with position bias does. Returns the new scores and whether the levels were permuted."""
    if not 0.0 <= flip <= 0.5:
        raise TunaError(f"flip must be in [0, 0.5], got {flip!r}", field="flip")
    levels = sorted(set(scores))
    if flip == 0.0 or len(levels) < 2 or rng.random() >= 2 * flip:
        return list(scores), False
    sent = levels[:]
    rng.shuffle(sent)
    to = dict(zip(levels, sent))
    return [to[s] for s in scores], True


def rank_by_verifier(rec: Record, by: Verifier = "task", *, flip: float = 0.0, seed: int = 0) -> Record:
    """The candidate set as a ranked set, best first by the verifier's score (a stable sort: ties keep their order).
    ``flip`` > 0 degrades the verifier on purpose (:func:`degrade_scores`, seeded by ``seed`` and the record id); the
    verifier's own scores stay in ``ranking.details["verifier_scores"]`` (candidate order) to measure the degraded
    ranker's accuracy."""
    true_scores = verifier_scores(rec, by)
    if any(not math.isfinite(s) for s in true_scores):
        raise TunaError("verifier returned a non-finite score", field=f"record {rec.id}")
    scores, permuted = degrade_scores(true_scores, flip, random.Random(f"{seed}:{rec.id}")) if flip else (true_scores, False)
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    cands = [rec.candidates[k].model_copy(update={"score": float(scores[k])}) for k in order]
    details: dict[str, Any] = {"order": order, "distinct_scores": len(set(scores)),
                               "benchmark": (rec.provenance.get("verifier") or {}).get("benchmark")}
    if flip:
        details.update(flip=flip, permuted=permuted, verifier_scores=[float(true_scores[k]) for k in order])
    method = f"{by}+flip{flip:g}" if flip else by
    return rec.model_copy(update={"candidates": cands, "ranking": Ranking(by="verifier", method=method, details=details)})


def ranker_agreement(records: list[Record]) -> dict[str, Any]:
    """How often a degraded ranker's order agrees with the verifier's on the pairs the verifier orders: ``{"pairs",
    "agree", "accuracy"}`` (records ranked without ``flip`` agree by construction)."""
    pairs = agree = 0
    for r in records:
        scores = [c.score or 0.0 for c in r.candidates]
        truth = (r.ranking.details.get("verifier_scores") if r.ranking else None) or scores
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                if truth[i] == truth[j]:
                    continue
                pairs += 1
                agree += int((scores[i] - scores[j]) * (truth[i] - truth[j]) > 0)
    return {"pairs": pairs, "agree": agree, "accuracy": agree / pairs if pairs else None}


def count_pairs(scores: list[float]) -> tuple[int, int]:
    """``(ordered pairs, tied pairs)`` among a candidate set's scores."""
    ordered = tied = 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if scores[i] == scores[j]:
                tied += 1
            else:
                ordered += 1
    return ordered, tied


# ----------------------------------------------------------------------------------------------- held-out measures


def item_scores(records: list[Record], predictions: dict[str, str], by: Verifier = "task") -> list[dict[str, Any]]:
    """Each record's greedy prediction scored by its verifier: ``{"id", "benchmark", "task", "score"}``."""
    out = []
    for rec in records:
        pred = predictions.get(rec.id, "")
        one = rec.model_copy(update={"candidates": [Candidate(text=pred)]})
        v = rec.provenance.get("verifier") or {}
        out.append({"id": rec.id, "benchmark": v.get("benchmark"), "task": v.get("task"),
                    "score": verifier_scores(one, by)[0]})
    return out


def summarise_items(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean score x100 overall, per benchmark and per task (each with its n)."""

    def agg(xs: list[float]) -> dict[str, Any]:
        return {"score": round(100.0 * sum(xs) / len(xs), 4) if xs else None, "n": len(xs)}

    by_bench: dict[str, list[float]] = {}
    by_task: dict[str, list[float]] = {}
    for r in rows:
        by_bench.setdefault(str(r["benchmark"]), []).append(r["score"])
        by_task.setdefault(f"{r['benchmark']}/{r['task']}", []).append(r["score"])
    return {**agg([r["score"] for r in rows]), "per_benchmark": {k: agg(v) for k, v in sorted(by_bench.items())},
            "per_task": {k: agg(v) for k, v in sorted(by_task.items())}}


def model_pair_outcomes(model: Any, tokenizer: Any, records: list[Record], *, template: str = "alpaca", max_length: int = 512,
                        batch_size: int = 4, logprob_mode: str = "chunked", beta: float = 1.0) -> list[dict[str, Any]]:
    """Per ranked set: how many of its untied candidate pairs the model's length-normalised log-likelihood orders as
    the ranking does (``right``), out of ``pairs``; tied pairs (equal ranking scores) are counted apart and never
    scored. The same tokens as training (``tuna.data``: the template, EOS appended, the same truncation)."""
    import torch

    from tuna.config import DataConfig
    from tuna.data import collate_padded, tokenize_record
    from tuna.forward import response_token_logprobs
    from tuna.losses import sequence_scores

    cfg = DataConfig(template=template, max_length=max_length)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    out: list[dict[str, Any]] = []
    model.eval()
    for b in range(0, len(records), batch_size):
        chunk = records[b : b + batch_size]
        items = [tokenize_record(r.model_dump(), tokenizer, cfg, mode="rank", with_gold=False) for r in chunk]
        batch = collate_padded(items, tokenizer.pad_token_id)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            logps, mask = response_token_logprobs(model, batch, mode=logprob_mode)  # type: ignore[arg-type]
            scores = sequence_scores(logps.float(), mask, beta).cpu()
        for i, rec in enumerate(chunk):
            ref = [c.score for c in rec.candidates]
            right = pairs = tied = 0
            for x in range(len(ref)):
                for y in range(x + 1, len(ref)):
                    if ref[x] is None or ref[y] is None or ref[x] == ref[y]:
                        tied += 1
                        continue
                    pairs += 1
                    better, worse = (x, y) if ref[x] > ref[y] else (y, x)
                    right += int(scores[i, better] > scores[i, worse])
            out.append({"id": rec.id, "right": right, "pairs": pairs, "tied": tied})
    return out


def summarise_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = sum(r["pairs"] for r in rows)
    return {"pair_accuracy": round(100.0 * sum(r["right"] for r in rows) / pairs, 4) if pairs else None,
            "n": len(rows), "n_records_with_pairs": sum(1 for r in rows if r["pairs"]), "pairs": pairs,
            "tied_pairs": sum(r["tied"] for r in rows)}


# ----------------------------------------------------------------------------------------------- controls


def constant_answers(train: list[Record]) -> dict[str, str]:
    """The constant-answer control: each task's majority training label (``task`` -> answer). LMentry: the gold
    answer, or yes/no for the category questions; Super-NI: the first reference, compared normalised
    (:func:`normalise_label`) and given in the form first seen. Ties go to the label first in sorted order; tasks
    without a label among their training items (LMentry tasks whose answers are free sentences) get ``""``, and so
    do tasks never trained on (unseen tasks)."""
    from collections import Counter

    counts: dict[str, Counter] = {}
    shown: dict[tuple[str, str], str] = {}
    for r in train:
        v = r.provenance.get("verifier") or {}
        if v.get("benchmark") == "lmentry":
            label = v.get("label") if v.get("label") in ("yes", "no") else r.gold
        else:
            label = r.gold
        if label is None:
            continue
        key = normalise_label(str(label))
        counts.setdefault(v["task"], Counter())[key] += 1
        shown.setdefault((v["task"], key), str(label).strip())
    out = {}
    for task, c in counts.items():
        best = max(c.values())
        key = sorted(k for k, n in c.items() if n == best)[0]
        out[task] = shown[(task, key)]
    return out


def degeneration(items: list[dict[str, Any]]) -> dict[str, Any]:
    """What answers look like, beside the scores, so that a collapse cannot read as learning: over ``items``
    (``{"task", "prediction"}``): the share of distinct answers (normalised), the share of the most common answer
    within each task (mean over tasks), the share of empty answers, the mean length in words, and (where the items
    carry a ``finish_reason``) the share that ran to the token limit instead of stopping."""
    from collections import Counter

    if not items:
        return {"n": 0}
    norm = [normalise_label(str(x["prediction"])) for x in items]
    by_task: dict[str, list[str]] = {}
    for x, a in zip(items, norm):
        by_task.setdefault(str(x["task"]), []).append(a)
    mode = [Counter(v).most_common(1)[0][1] / len(v) for v in by_task.values()]
    reasons = [x.get("finish_reason") for x in items]
    return {"n": len(items), "distinct_share": len(set(norm)) / len(norm), "task_mode_share": sum(mode) / len(mode),
            "empty_share": sum(1 for a in norm if not a) / len(norm),
            "mean_words": sum(len(str(x["prediction"]).split()) for x in items) / len(items),
            "length_share": None if None in reasons else sum(r == "length" for r in reasons) / len(reasons)}
