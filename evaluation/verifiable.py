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


def superni_records(rows: list[dict[str, Any]]) -> list[Record]:
    """Super-NI instances as instruction records: the zero-shot Tk-Instruct source (definition + input) is the
    instruction, so training prompts and evaluation prompts have the same form."""
    from evaluation.superni import tk_instruct_prompt

    out = []
    for r in rows:
        refs = [str(x) for x in r["references"]]
        out.append(Record(id=f"superni/{r['id']}", instruction=tk_instruct_prompt(r["definition"], r["input"], num_pos_examples=0), gold=refs[0],
                          candidates=[Candidate(text=refs[0], source="reference")],
                          provenance={"verifier": {"benchmark": "superni", "task": r["task"], "references": refs}}))
    return out


def lmentry_records(task: str, examples: list[tuple[str, dict[str, Any]]]) -> list[Record]:
    """LMentry examples as instruction records; the example itself goes along for the task's scorer."""
    out = []
    for eid, ex in examples:
        answer = ex["metadata"].get("answer")
        gold = str(answer) if isinstance(answer, (str, int)) else None
        out.append(Record(id=f"lmentry/{task}/{eid}", instruction=ex["input"], gold=gold,
                          candidates=[Candidate(text=gold or "", source="reference")],
                          provenance={"verifier": {"benchmark": "lmentry", "task": task,
                                                   "example": {"input": ex["input"], "metadata": ex["metadata"]}}}))
    return out


@dataclass
class SplitSizes:
    """How many items of each benchmark task go to the held-out, validation and training splits."""

    lmentry_eval_per_task: int = 12
    """Held-out examples per LMentry task (the slice `tuna eval lmentry --limit 12` evaluates)."""
    lmentry_val_per_task: int = 2
    """Validation examples per LMentry task (outside the evaluation slice)."""
    lmentry_train_per_task: int = 8
    """Training examples per LMentry task (outside the evaluation slice)."""
    superni_eval_per_task: int = 25
    """Held-out instances per Super-NI slice task (from one half of its instances; training uses the other half)."""
    superni_val_per_task: int = 5
    """Validation instances per Super-NI task (from the other half)."""
    superni_train_per_task: int = 25
    """Training instances per Super-NI task (from the other half)."""


def make_splits(
    *,
    superni_data: str | Path,
    lmentry_data: str | Path,
    sizes: SplitSizes | None = None,
    lmentry_tasks: list[str] | None = None,
    seed: int = 0,
) -> dict[str, list[Record]]:
    """``{"train", "val", "heldout"}`` instruction records, pairwise disjoint.

    LMentry: the held-out part is the evaluation slice ``tuna eval lmentry --limit k`` uses (the first k/3 examples
    of each template); validation and training examples are drawn, seeded, from the rest of the task. Super-NI:
    each slice task's 100 instances are split in two halves (even / odd positions in file order); the held-out
    examples come from one half, validation and training examples from the other."""
    from evaluation import lmentry, superni
    from evaluation.lmentry_scorers import CORE_TASKS

    n = sizes or SplitSizes()
    rng = random.Random(seed)
    splits: dict[str, list[Record]] = {"train": [], "val": [], "heldout": []}
    tasks = lmentry.load_tasks(lmentry_data)
    for t in lmentry_tasks or CORE_TASKS:
        heldout = lmentry.select_examples(tasks[t], n.lmentry_eval_per_task)
        used = {eid for eid, _ in heldout}
        rest = [(eid, ex) for eid, ex in tasks[t]["examples"].items() if eid not in used]
        rng.shuffle(rest)
        need = n.lmentry_val_per_task + n.lmentry_train_per_task
        if len(rest) < need:
            raise TunaError(f"LMentry task {t} has {len(rest)} examples outside its evaluation slice, {need} needed",
                            path=lmentry_data, field="lmentry_train_per_task")
        splits["heldout"] += lmentry_records(t, heldout)
        splits["val"] += lmentry_records(t, rest[:n.lmentry_val_per_task])
        splits["train"] += lmentry_records(t, rest[n.lmentry_val_per_task:need])
    rows = superni.load_instances(superni_data)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for t, items in by_task.items():
        held_half, train_half = items[0::2], items[1::2]
        need = n.superni_val_per_task + n.superni_train_per_task
        if len(held_half) < n.superni_eval_per_task or len(train_half) < need:
            raise TunaError(f"Super-NI task {t} has {len(items)} instances: too few for the requested split",
                            path=superni_data, field="superni_train_per_task")
        splits["heldout"] += superni_records(held_half[:n.superni_eval_per_task])
        splits["val"] += superni_records(train_half[:n.superni_val_per_task])
        splits["train"] += superni_records(train_half[n.superni_val_per_task:need])
    ids = [{r.id for r in recs} for recs in splits.values()]
    if ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]:  # by construction; kept as a guard for future edits
        raise TunaError("verifiable splits overlap")
    return splits


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


def rank_by_verifier(rec: Record, by: Verifier = "task") -> Record:
    """The candidate set as a ranked set, best first by the verifier's score (a stable sort: ties keep their order)."""
    scores = verifier_scores(rec, by)
    if any(not math.isfinite(s) for s in scores):
        raise TunaError("verifier returned a non-finite score", field=f"record {rec.id}")
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    cands = [rec.candidates[k].model_copy(update={"score": float(scores[k])}) for k in order]
    distinct = len(set(scores))
    ranking = Ranking(by="verifier", method=by, details={"order": order, "distinct_scores": distinct,
                                                           "benchmark": (rec.provenance.get("verifier") or {}).get("benchmark")})
    return rec.model_copy(update={"candidates": cands, "ranking": ranking})


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
