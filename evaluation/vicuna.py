"""Vicuna QA: 80 questions, pairwise review with FastChat's original reviewer prompts (``fastchat/eval``).

* Reviewer: ``reviewer.jsonl`` picks the prompt by question category (``coding`` -> coding prompt, ``math`` ->
  math prompt, anything else -> general), as ``eval_gpt_review.py`` did; temperature/max_tokens from its
  metadata (0.2 / 1024). The user message is ``prompt_template.format(question, answer_1, answer_2, prompt)``
  with the prompt's system message.
* Review order (``orders``): ``single`` (the default) is the 2023 protocol: one review per question, the opponent
  as Assistant 1 and the model as Assistant 2, as ``eval_gpt_review.py -a opponent.jsonl model.jsonl`` wrote
  FastChat's shipped ``review_<opponent>_<model>.jsonl`` files. ``both`` adds the review with the answers swapped
  and reports the position-bias-controlled result beside the single-order one.
* Parsing: the first line of the review, commas turned into spaces, two numbers. ``strict`` is the original
  (``line.split(' ')`` must give exactly two parts, so "8, 7" fails there); ``lenient`` (default) splits on any
  white space, strips brackets (the math prompt asks for a Python tuple) and accepts a first line such as
  "Assistant 1: 8/10, Assistant 2: 7/10". A review that does not parse is recorded as an error (never -1).
* Outcome: single order: the model's score against the opponent's (higher = win, equal = tie, lower = lose).
  Both orders: the model's two scores are summed and compared with the opponent's two; a question with an error
  in either order counts in ``errors`` and in none of win/tie/lose. Per-order outcomes and the order-consistency
  rate are reported too.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.records import iter_json_lines


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_json_lines(path)]


def load_questions(data_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return read_jsonl(Path(data_dir) / "question.jsonl")


def load_reviewers(data_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{category: {"system", "template", "prompt", "temperature", "max_tokens", "reviewer_id"}}``."""
    d = Path(data_dir)
    prompts = {p["prompt_id"]: p for p in read_jsonl(d / "prompt.jsonl")}
    out = {}
    for r in read_jsonl(d / "reviewer.jsonl"):
        p = prompts[r["prompt_id"]]
        out[r["category"]] = {
            "reviewer_id": r["reviewer_id"],
            "system": p["system_prompt"],
            "template": p["prompt_template"],
            "defaults": p.get("defaults", {}),
            "temperature": r["metadata"].get("temperature", 0.2),
            "max_tokens": r["metadata"].get("max_tokens", 1024),
        }
    if "general" not in out:
        raise TunaError("reviewer.jsonl has no general reviewer", path=d / "reviewer.jsonl")
    return out


def reviewer_for(category: str, reviewers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return reviewers.get(category) if category in ("coding", "math") and category in reviewers else reviewers["general"]  # type: ignore[return-value]


def review_messages(question: str, answer_1: str, answer_2: str, reviewer: dict[str, Any]) -> list[dict[str, str]]:
    content = reviewer["template"].format(question=question, answer_1=answer_1, answer_2=answer_2, **reviewer["defaults"])
    return [{"role": "system", "content": reviewer["system"]}, {"role": "user", "content": content}]


_NUM = r"(\d+(?:\.\d+)?)"


def parse_review(review: str | None, *, strict: bool = False) -> tuple[float, float] | None:
    """Two scores from the review's first line, or None when it cannot be parsed."""
    if not review:
        return None
    first = review.split("\n")[0]
    if strict:
        parts = first.replace(",", " ").split(" ")
        if len(parts) != 2:
            return None
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            return None
    line = first.strip().replace(",", " ")
    bare = line.strip("()[]{}* ").strip()
    parts = bare.split()
    if len(parts) == 2:
        try:
            return float(parts[0].rstrip(".")), float(parts[1].rstrip("."))
        except ValueError:
            pass
    m = re.fullmatch(rf"\W*assistant\s*1\W*{_NUM}(?:\s*/\s*10)?\W+assistant\s*2\W*{_NUM}(?:\s*/\s*10)?\W*", bare, flags=re.IGNORECASE)
    if m:
        return float(m.group(1)), float(m.group(2))
    return None


# FastChat's reviewer asks for "score1 score2" on the first line, then an explanation. For a weak local judge
# behind a llama.cpp server this grammar makes that first line always well formed (scores 1-10).
SCORE_GRAMMAR = 'root ::= score " " score "\\n" [^\\n]*\nscore ::= "10" | [1-9]\n'


def load_answer_file(path: str | os.PathLike) -> dict[int, str]:
    """Answers keyed by question id from a JSONL with ``question_id``/``id`` and ``text``/``prediction``."""
    out: dict[int, str] = {}
    for line, obj in iter_json_lines(path):
        qid = obj.get("question_id", obj.get("id"))
        text = obj.get("text", obj.get("prediction"))
        if qid is None or text is None:
            raise TunaError("an answer needs question_id (or id) and text (or prediction)", path=path, line=line,
                            field="question_id" if qid is None else "text")
        try:
            q = int(qid)
        except (TypeError, ValueError):
            raise TunaError(f"expected an integer question id, got {qid!r}", path=path, line=line, field="question_id") from None
        if not isinstance(text, str):
            raise TunaError(f"expected a string, got {type(text).__name__}", path=path, line=line, field="text")
        if q in out:
            raise TunaError(f"duplicate question id {q}", path=path, line=line, field="question_id")
        out[q] = text
    return out


def old_eval_models(data_dir: str | os.PathLike) -> dict[str, dict[int, str]]:
    p = Path(data_dir) / "old_eval_answers.jsonl.gz"
    by: dict[str, dict[int, str]] = defaultdict(dict)
    with gzip.open(p, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                by[o["answer_file_model"]][int(o["question_id"])] = o["text"]
    return dict(by)


def resolve_opponent(opponent: str, data_dir: str | os.PathLike) -> tuple[str, dict[int, str]]:
    """A model of FastChat's answer table (gpt35, bard, alpaca-13b, llama-13b, vicuna-13b, ...), an answers JSONL,
    or an evaluation run directory (its predictions.jsonl)."""
    p = Path(opponent)
    if p.is_dir() and (p / "predictions.jsonl").exists():
        return p.name, load_answer_file(p / "predictions.jsonl")
    if p.is_file():
        return p.stem, load_answer_file(p)
    table = old_eval_models(data_dir)
    if opponent in table:
        return opponent, table[opponent]
    raise TunaError(f"unknown opponent {opponent!r}: not a file, run directory or one of {', '.join(sorted(table))}", field="opponent")


ORDERS = {"single": ("BA",), "both": ("AB", "BA")}
"""Review orders per question: "AB" = the model is Assistant 1, "BA" = the model is Assistant 2 (FastChat 2023)."""


def judge_requests(questions: list[dict[str, Any]], mine: dict[int, str], theirs: dict[int, str], reviewers: dict[str, dict[str, Any]],
                   orders: str = "single") -> list[dict[str, Any]]:
    """One request per question and order of ``ORDERS[orders]``."""
    if orders not in ORDERS:
        raise TunaError(f"orders must be single | both, got {orders!r}", field="orders")
    out = []
    for q in questions:
        qid = int(q["question_id"])
        if qid not in mine or qid not in theirs:
            continue
        rv = reviewer_for(q.get("category", ""), reviewers)
        for order in ORDERS[orders]:
            a1, a2 = (mine[qid], theirs[qid]) if order == "AB" else (theirs[qid], mine[qid])
            out.append({"question_id": qid, "category": q.get("category", ""), "order": order, "reviewer_id": rv["reviewer_id"],
                        "messages": review_messages(q["text"], a1, a2, rv), "temperature": rv["temperature"], "max_tokens": rv["max_tokens"]})
    return out


def _outcome(m: float, t: float) -> str:
    return "win" if m > t else "lose" if m < t else "tie"


def _model_opp(order: str, s: list[float]) -> tuple[float, float]:
    return (s[0], s[1]) if order == "AB" else (s[1], s[0])


def _tally(results: list[dict[str, Any]], scores: dict[int, tuple[float, float]]) -> dict[str, Any]:
    """W/T/L/error totals, rates and per category from per-question ``{question_id, category, result}``."""
    total = {"win": 0, "tie": 0, "lose": 0, "error": 0}
    per_cat: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "tie": 0, "lose": 0, "error": 0})
    for r in results:
        total[r["result"]] += 1
        per_cat[r["category"]][r["result"]] += 1
    decided = total["win"] + total["tie"] + total["lose"]
    n_scored = len(scores)
    return {
        **total,
        "n": len(results),
        "win_rate": round(100 * total["win"] / decided, 2) if decided else None,
        "win_rate_adjusted": round(100 * (total["win"] + 0.5 * total["tie"]) / decided, 2) if decided else None,
        "mean_score": round(sum(m for m, _ in scores.values()) / n_scored, 3) if n_scored else None,
        "mean_score_opponent": round(sum(t for _, t in scores.values()) / n_scored, 3) if n_scored else None,
        "per_category": dict(sorted(per_cat.items())),
        "per_question": results,
    }


def combine(judgments: list[dict[str, Any]], orders: str = "single") -> dict[str, Any]:
    """``judgments``: ``{question_id, category, order, scores: [s1, s2] | None}``. See the module doc for the rules.

    The top level is always the single-order (2023) result, from the "BA" reviews; with ``orders="both"``,
    ``both_orders`` holds the summed two-order result, with ``per_order`` outcomes and ``order_consistency``."""
    by_q: dict[int, dict[str, Any]] = defaultdict(dict)
    cats: dict[int, str] = {}
    for j in judgments:
        by_q[j["question_id"]][j["order"]] = j.get("scores")
        cats[j["question_id"]] = j.get("category", "")
    single, single_scores = [], {}
    for qid in sorted(by_q):
        s = by_q[qid].get("BA")
        if s is None:
            single.append({"question_id": qid, "category": cats[qid], "result": "error"})
            continue
        m, t = _model_opp("BA", s)
        single_scores[qid] = (m, t)
        single.append({"question_id": qid, "category": cats[qid], "result": _outcome(m, t)})
    out = {**_tally(single, single_scores), "orders": orders}
    if orders == "single":
        return out

    per_order = {o: {"win": 0, "tie": 0, "lose": 0, "error": 0} for o in ("AB", "BA")}
    both, both_scores = [], {}
    consistent = decided_both = 0
    for qid in sorted(by_q):
        o = by_q[qid]
        outcomes = {}
        for order in ("AB", "BA"):
            if o.get(order) is None:
                per_order[order]["error"] += 1
                continue
            outcomes[order] = _outcome(*_model_opp(order, o[order]))
            per_order[order][outcomes[order]] += 1
        if len(outcomes) < 2:
            both.append({"question_id": qid, "category": cats[qid], "result": "error"})
            continue
        m = o["AB"][0] + o["BA"][1]
        t = o["AB"][1] + o["BA"][0]
        both_scores[qid] = (m / 2, t / 2)
        both.append({"question_id": qid, "category": cats[qid], "result": _outcome(m, t)})
        decided_both += 1
        consistent += outcomes["AB"] == outcomes["BA"]
    out["both_orders"] = {**_tally(both, both_scores), "per_order": per_order,
                          "order_consistency": round(100 * consistent / decided_both, 2) if decided_both else None,
                          "rule": "sum of the model's scores over both orders vs the opponent's; equal = tie; error in either order = error"}
    return out
