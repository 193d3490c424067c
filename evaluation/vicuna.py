"""Vicuna QA: 80 questions, pairwise review with FastChat's original reviewer prompts (``fastchat/eval``).

* Reviewer: ``reviewer.jsonl`` picks the prompt by question category (``coding`` -> coding prompt, ``math`` ->
  math prompt, anything else -> general), as ``eval_gpt_review.py`` did; temperature/max_tokens from its
  metadata (0.2 / 1024). The user message is ``prompt_template.format(question, answer_1, answer_2, prompt)``
  with the prompt's system message.
* Review order (``orders``): ``single`` (the default) is the 2023 protocol: one review per question, the opponent
  as Assistant 1 and the model as Assistant 2, as ``eval_gpt_review.py -a opponent.jsonl model.jsonl`` wrote
  FastChat's shipped ``review_<opponent>_<model>.jsonl`` files. ``both`` adds the review with the answers swapped
  and reports the position-bias-controlled result beside the single-order one.
* Parsing: ``strict`` is FastChat's ``parse_score``: the first line, commas turned into spaces, ``split(' ')``
  must give exactly two parts (so "8, 7" fails there), and math reviews fail, since the math prompt asks for the
  scores as "a Python tuple" after the solution. ``lenient`` (default) reads the verdict wherever the reviewer
  put it ("8 7" or "(3, 8)" as the first or last line or under "Scores:", "Assistant 1: 3 ... Assistant 2: 8"
  lines, "x/10", "The output tuple is (3, 8).", "a score of 3 ... a score of 8") and takes the last one; a pair
  quoted from the question, such as a segment's endpoints, is never read as scores. A review without a verdict
  is recorded as an error (never -1).
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
_OF_10 = r"\s*(?:/|out\s+of)\s*10\b"
_MARKUP = re.compile(r"[*_#`>]+")
# words that make a line or sentence a verdict: "Scores:", "the output tuple is", "I would rate"
_VERDICT = re.compile(r"\b(?:scores?|scored|tuple|output|ratings?|rate|verdict)\b", re.IGNORECASE)
# words that make a number pair a point of the question (a segment's endpoints), never a verdict
_GEOMETRY = re.compile(r"\b(?:points?|endpoints?|coordinates?|vertex|vertices|midpoint|segment|[xy][12])\b", re.IGNORECASE)
# a line that is only a pair: "8 7", "8, 7", "(3, 8)", "[3, 8]", "Scores: 3 8", "Output: (1, 7)"
_PAIR_LINE = re.compile(rf"(?P<label>(?:final\s+)?(?:scores?|output|verdict|tuple|ratings?)\s*[:=-]?\s*)?"
                        rf"[(\[{{]?\s*{_NUM}\s*(?:,\s*|\s+){_NUM}\s*[)\]}}]?\s*\.?", re.IGNORECASE)
_TUPLE = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_TUPLE_ANY = re.compile(r"\(\s*-?\d[\d.]*\s*,\s*-?\d")  # any number pair, a point such as (2, -2) included
# "Assistant 1: 8", "Assistant 2 score: 6/10", "Assistant 1 - 7 (correct steps)", "Assistant 1 = 3", at a line's start
# or after ", " / "; " / ": " / "and "
_LABEL = re.compile(r"(?:^|[,;:]\s*|\band\s+)\W*assistant\s*([12])(?:\s+(?:score|rating))?\s*(?::|=|-|–|—)\s*",
                    re.IGNORECASE)
_LEAD_SCORE = re.compile(rf"{_NUM}(?P<of10>{_OF_10})?(?P<rest>.*)")
_SCORE_IN_PROSE = re.compile(rf"\b(?:score|rating)\s*(?:is|of|:|=)?\s*{_NUM}(?:{_OF_10})?|{_NUM}{_OF_10}", re.IGNORECASE)
# "I would give Assistant 1 a score of 10 and Assistant 2 a score of 4", "Assistant 1 gets 8/10, Assistant 2 6/10"
_MARK = rf"(?:(?:score|rating)\s+(?:of\s+|is\s+|:\s*)?{_NUM}(?:{_OF_10})?|{_NUM}{_OF_10})"
_PROSE_PAIR = re.compile(rf"assistant\s*1\b[^.\n]{{0,60}}?{_MARK}[^.\n]{{0,80}}?assistant\s*2\b[^.\n]{{0,60}}?{_MARK}",
                         re.IGNORECASE)
_LABEL_PAIR_SPAN = 8  # lines from "Assistant 1: x" to its "Assistant 2: y" (blank lines, a long explanation)


def _first(*groups: str | None) -> float:
    return float(next(g for g in groups if g is not None))


def _labelled_score(segment: str) -> float | None:
    """The score after an "Assistant k:" label: "8", "8/10", "8 (correct steps)", "8 - correct", "... the score is 8".
    A number that starts a formula ("3x + 10 = ...", "5(x - 2)") or an answer ("10 units") is not a score."""
    m = _LEAD_SCORE.match(segment)
    if m:
        rest = m.group("rest")
        paren = re.match(r"\s+\(([^)]*)\)", rest)
        if (m.group("of10") or not rest.strip(" .,;")
                or (paren and len(re.findall(r"[A-Za-z]{2,}", paren.group(1))) >= 2 and not re.search(r"[=^]", paren.group(1)))
                or re.match(r"\s*(?:[-–—:,;]|\.)\s+[^\d\s(]", rest)):
            return float(m.group(1))
    m = _SCORE_IN_PROSE.search(segment)
    return _first(*m.groups()) if m else None


def _verdicts(review: str) -> list[tuple[float, float]]:
    """Every verdict in a review, in the order written: a pair line ("8 7" first, as FastChat asks, or "(3, 8)" under
    "Scores:" or last), a tuple in a sentence about the scores ("The output tuple is (3, 8)."), "Assistant 1: x" ...
    "Assistant 2: y" labels (one line or nearby lines), and "Assistant 1 a score of x and Assistant 2 a score of y".
    A pair quoted from the question (a segment's endpoints) is none of these: a tuple counts only in a sentence about
    scores that names no point, and a pair line only where the review's verdict goes."""
    lines = [_MARKUP.sub("", line).strip() for line in review.split("\n")]
    filled = [i for i, line in enumerate(lines) if line]
    found: list[tuple[tuple[int, int], tuple[float, float]]] = []
    pending: tuple[int, float] | None = None  # (line, score) of an "Assistant 1: x" waiting for its Assistant 2
    for n, i in enumerate(filled):
        line = lines[i]
        prev = lines[filled[n - 1]] if n else ""
        m = _PAIR_LINE.fullmatch(line)
        if m:
            last = n == len(filled) - 1 and not _GEOMETRY.search(prev) and not _TUPLE_ANY.search(prev)
            if i == 0 or m.group("label") or last or (_VERDICT.search(prev) and not _GEOMETRY.search(prev)):
                found.append(((i, len(line)), (float(m.group(2)), float(m.group(3)))))
            continue
        for t in _TUPLE.finditer(line):
            start = max(line.rfind(". ", 0, t.start()) + 1, 0)
            stop = line.find(". ", t.end())
            sentence = line[start:stop if stop >= 0 else len(line)]
            if _VERDICT.search(sentence) and not _GEOMETRY.search(sentence) and not line[:t.start()].rstrip().endswith("="):
                found.append(((i, t.end()), (float(t.group(1)), float(t.group(2)))))
        for p in _PROSE_PAIR.finditer(line):
            g = p.groups()
            found.append(((i, p.end()), (_first(*g[:2]), _first(*g[2:]))))
        labels = list(_LABEL.finditer(line))
        for k, lab in enumerate(labels):
            segment = line[lab.end():labels[k + 1].start() if k + 1 < len(labels) else len(line)]
            score = _labelled_score(segment)
            if lab.group(1) == "1":
                pending = (i, score) if score is not None else None
            elif score is not None and pending is not None and i - pending[0] <= _LABEL_PAIR_SPAN:
                found.append(((i, lab.end()), (pending[1], score)))
                pending = None
            else:
                pending = None
    found.sort(key=lambda f: f[0])
    return [s for _, s in found if all(0 <= x <= 10 for x in s)]


def parse_review(review: str | None, *, strict: bool = False) -> tuple[float, float] | None:
    """The two scores of a review (Assistant 1, Assistant 2), or None when it holds no verdict.

    ``strict`` is FastChat's ``parse_score`` (``fastchat/eval/eval_gpt_review.py``): the first line, commas turned
    into spaces, ``split(" ")`` must give two numbers. Lenient (the default) reads the verdict wherever the reviewer
    put it and takes the last one: the general and coding prompts ask for it on the first line, the math prompt for
    "a Python tuple" after the solution (see ``_verdicts``)."""
    if not review:
        return None
    if strict:
        parts = review.split("\n")[0].replace(",", " ").split(" ")
        if len(parts) != 2:
            return None
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            return None
    verdicts = _verdicts(review)
    return verdicts[-1] if verdicts else None


NO_VERDICT = "no verdict in the review"
"""A judgment's error when the review holds no score pair (strict: not on its first line; lenient: nowhere)."""


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
