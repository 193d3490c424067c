"""From other people's files to tuna records: Alpaca data, the paper's released files, FastChat's Vicuna answers.

The paper's released files (microsoft/LMOps, tuna/; docs/fidelity.md, "Released files"):

* ``tuna-train``: train.*.w_orig_alpaca.json, what train_tuna.py reads: instruction (the rendered prompt),
  output (K responses), score (K numbers), id;
* ``tuna-davinci``: the text-davinci-003 data: orig (the Alpaca example), text, avg_token_prob, length, logprob;
* ``tuna-gpt4``: gpt-4-ranking.json, written by gpt-eval.py: prompt (GPT-4's), instruct (the student's),
  generation, id, gpt_eval, rank_str, ranks (the README says rank), response_4.

:func:`load_inputs` is what every command that reads instructions uses: tuna records or Alpaca data, sliced.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.records import Candidate, Record, best_first, iter_json_lines, open_bytes, parse_record, positions, read_records

log = logging.getLogger(__name__)


# The paper's released files (microsoft/LMOps, tuna/; docs/fidelity.md, "Released files"):
#   tuna-train    train.*.w_orig_alpaca.json, what train_tuna.py reads: instruction (the rendered prompt),
#                 output (K responses), score (K numbers), id
#   tuna-davinci  the text-davinci-003 data: orig (the Alpaca example), text, avg_token_prob, length, logprob
#   tuna-gpt4     gpt-4-ranking.json, written by gpt-eval.py: prompt (GPT-4's), instruct (the student's),
#                 generation, id, gpt_eval, rank_str, ranks (the README says rank), response_4


def _load_json_or_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each item of a JSON array (the line the item starts on) or of a JSONL file."""
    with open_bytes(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise TunaError(f"not valid UTF-8 (byte {e.start})", path=path, line=line) from None
    body = text.lstrip()
    if not body.startswith("["):
        return list(iter_json_lines(path))
    decoder = json.JSONDecoder()
    out: list[tuple[int, dict[str, Any]]] = []
    pos, line, counted = len(text) - len(body) + 1, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            raise TunaError("the JSON array is not closed (was the file cut short?)", path=path, line=line)
        if text[pos] == "]":
            return out
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise TunaError(f"invalid JSON: {e.msg}", path=path, line=text.count("\n", 0, e.pos) + 1) from None
        if not isinstance(obj, dict):
            raise TunaError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
        out.append((line, obj))
        pos = end


_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object"}


def _require(obj: dict[str, Any], key: str, typ: type, path: Path, line: int) -> Any:
    if key not in obj:
        raise TunaError("missing required field", path=path, line=line, field=key)
    if not isinstance(obj[key], typ):
        raise TunaError(f"expected {_TYPE_NAMES.get(typ, typ.__name__)}, got {type(obj[key]).__name__}",
                        path=path, line=line, field=key)
    return obj[key]


def _texts(obj: dict[str, Any], key: str, path: Path, line: int) -> list[str]:
    texts = _require(obj, key, list, path, line)
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise TunaError(f"expected a string, got {type(t).__name__}", path=path, line=line, field=f"{key}[{k}]")
    if not texts:
        raise TunaError("is empty", path=path, line=line, field=key)
    return texts


def _numbers(obj: dict[str, Any], key: str, n: int, path: Path, line: int) -> list[float]:
    vals = _require(obj, key, list, path, line)
    if len(vals) != n:
        raise TunaError(f"has {len(vals)} values for {n} responses", path=path, line=line, field=key)
    out = []
    for k, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TunaError(f"expected a finite number, got {v!r}", path=path, line=line, field=f"{key}[{k}]")
        out.append(float(v))
    return out


class _UniqueIds:
    """Record ids from a file's ``id`` field, made unique: a released file may reuse an id (an Alpaca row and a
    ranking row of the same instruction); the second gets ``<id>#2`` and provenance keeps the original."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, rid: Any) -> str:
        base = str(rid)
        out, k = base, 1
        while out in self.used:
            k += 1
            out = f"{base}#{k}"
        self.used.add(out)
        return out


def _split_prompt(prompt: str) -> tuple[str, str]:
    from tuna.prompts import parse_alpaca_prompt

    return parse_alpaca_prompt(prompt) or (prompt, "")


def import_alpaca(path: str | os.PathLike, *, limit: int | None = None, offset: int = 0) -> list[Record]:
    """Alpaca JSON array or JSONL (``instruction``, ``input``, ``output``) → records with one gold candidate."""
    path = Path(path)
    out = []
    for i, (line, obj) in enumerate(_load_json_or_jsonl(path)):
        if i < offset:
            continue
        if limit is not None and len(out) >= limit:
            break
        instr = _require(obj, "instruction", str, path, line)
        inp = obj.get("input") or ""
        output = _require(obj, "output", str, path, line)
        rid = obj.get("id", obj.get("idx", i))
        out.append(
            Record(
                id=f"alpaca-{rid}",
                instruction=instr,
                input=inp,
                gold=output,
                candidates=[Candidate(text=output, source="alpaca")],
                provenance={"file": path.name, "index": i, **({"provenance": obj["provenance"]} if "provenance" in obj else {})},
            )
        )
    return out


def read_gold_pairs(path: str | os.PathLike) -> list[Record]:
    """Records with a gold response from Alpaca JSON/JSONL (``output`` is the gold) or tuna records (their ``gold``;
    records without one are skipped)."""
    path = Path(path)
    items = _load_json_or_jsonl(path)
    if items and "candidates" not in items[0][1]:
        return import_alpaca(path)
    return [r for r in read_records(path) if r.gold is not None]


def import_tuna_train(path: str | os.PathLike) -> list[Record]:
    """A released training file (``train.davinci_003_w_prob.w_orig_alpaca.json``,
    ``train.gpt-4-ranking.w_orig_alpaca.json``): exactly what ``train_tuna.py`` reads.

    ``instruction`` is the rendered prompt the released code puts in front of each output (L256
    ``f"{inst}{out}{eos}"``); it becomes ``prompt``, verbatim (instruction and input are recovered from the Alpaca
    template for display and judging). Outputs are ordered best-first by ``score`` with a stable sort, as L257
    does, so tied outputs keep their file order. Every row is kept, including the original-Alpaca rows these files
    mix in: train them with ``data.regularizer: none`` (the regulariser is already inside)."""
    path = Path(path)
    out, ids = [], _UniqueIds()
    for i, (line, obj) in enumerate(_load_json_or_jsonl(path)):
        prompt = _require(obj, "instruction", str, path, line)
        outs = _texts(obj, "output", path, line)
        scores = _numbers(obj, "score", len(outs), path, line)
        instruction, inp = _split_prompt(prompt)
        prov: dict[str, Any] = {"file": path.name, "index": i, "released_id": obj.get("id", i)}
        if len(outs) > 1 and len(set(outs)) == 1:
            prov["identical_outputs"] = True  # the shape of the files' original-Alpaca rows (docs/fidelity.md)
        out.append(parse_record({
            "id": ids(obj.get("id", i)), "instruction": instruction, "input": inp, "prompt": prompt,
            "candidates": [{"text": outs[k], "score": scores[k], "source": "released"} for k in best_first(scores)],
            "ranking": {"by": "import", "method": "score", "details": {"format": "tuna-train"}},
            "provenance": prov,
        }, path=path, line=line))
    return out


def import_tuna_davinci(path: str | os.PathLike, *, beta: float | None = None) -> list[Record]:
    """The released text-davinci-003 data: ``orig`` (the Alpaca example), ``text`` (its responses),
    ``avg_token_prob``, ``length``, ``logprob``.

    The prompt is the Alpaca template on ``orig`` (PROMPT_DICT, train.py L32-43, input template iff the input is
    not ""), stored verbatim in ``prompt``; ``orig.output`` becomes ``gold``. Candidates are ranked best-first by the
    stored ``avg_token_prob`` (the README's "average token log probability"; that the training file's ``score`` is
    this number is inferred, its builder was not released), ties in file order; with ``beta`` set, by
    ``logprob / length**beta`` instead. The stored arrays stay in ``provenance["teacher"]``."""
    from tuna.prompts import alpaca_prompt

    path = Path(path)
    out, ids = [], _UniqueIds()
    for i, (line, obj) in enumerate(_load_json_or_jsonl(path)):
        orig = _require(obj, "orig", dict, path, line)
        for key in ("instruction", "output"):
            if not isinstance(orig.get(key), str):
                raise TunaError("missing or not a string", path=path, line=line, field=f"orig.{key}")
        inp = orig.get("input") or ""
        if not isinstance(inp, str):
            raise TunaError(f"expected a string, got {type(inp).__name__}", path=path, line=line, field="orig.input")
        texts = _texts(obj, "text", path, line)
        teacher = {"avg_token_prob": _numbers(obj, "avg_token_prob", len(texts), path, line)}
        if beta is None:
            scores, method = teacher["avg_token_prob"], "avg_token_prob"
        else:
            logprob, length = _numbers(obj, "logprob", len(texts), path, line), _numbers(obj, "length", len(texts), path, line)
            if any(n <= 0 for n in length):
                raise TunaError("a response has length 0", path=path, line=line, field="length")
            scores, method = [lp / n**beta for lp, n in zip(logprob, length)], f"logprob/len^{beta}"
        for key in ("length", "logprob"):
            if key in obj:
                teacher[key] = obj[key]
        out.append(parse_record({
            "id": ids(obj.get("id", f"davinci-{i}")), "instruction": orig["instruction"], "input": inp,
            "prompt": alpaca_prompt(orig["instruction"], inp), "gold": orig["output"],
            "candidates": [{"text": texts[k], "score": scores[k], "source": "text-davinci-003"} for k in best_first(scores)],
            "ranking": {"by": "teacher", "model": "text-davinci-003", "method": method},
            "provenance": {"file": path.name, "index": i, "teacher": teacher},
        }, path=path, line=line))
    return out


def import_tuna_gpt4_ranking(path: str | os.PathLike, *, reference: str = "drop", missing: str = "last",
                             alpaca: str | os.PathLike | None = None) -> list[Record]:
    """``gpt-4-ranking.json``, written by the released ``gpt-eval.py`` (L154-157).

    The student's prompt is ``instruct``: the Alpaca-rendered prompt ``non_interactive_generate.py`` sampled the
    four ``generation`` from (its ``raw_strings``), which ``gpt-eval.py`` put in front of them; it becomes
    ``prompt``, verbatim. GPT-4's side goes to ``provenance["judge"]``: its request (``prompt``), its reply
    (``gpt_eval``), ``rank_str``, ``ranks`` and ``response_4``. The order is read from ``ranks`` (``rank`` in the
    README): the integers gpt-eval.py took from the reply. Out-of-range and repeated indices are skipped (and
    noted). ``reference`` and ``missing`` are ``tuna judge``'s policies with its defaults: GPT-4's own Response 4 is
    dropped (``include`` keeps it, as the best-scoring candidate it usually is), and responses GPT-4 left out as
    duplicates follow the ranked ones, tied (``drop`` removes them). Score = number of items − position. ``alpaca``:
    an Alpaca file whose examples give the records of the same instruction and input their ``gold`` (what
    ``data.regularizer`` mixes in). How the released training file was built from this one was not released
    (docs/fidelity.md)."""
    if reference not in ("drop", "include"):
        raise TunaError(f"reference must be drop | include, got {reference!r}", field="reference")
    if missing not in ("last", "drop"):
        raise TunaError(f"missing must be last | drop, got {missing!r}", field="missing")
    path = Path(path)
    out, ids = [], _UniqueIds()
    for i, (line, obj) in enumerate(_load_json_or_jsonl(path)):
        instruct = _require(obj, "instruct", str, path, line)
        gens = _texts(obj, "generation", path, line)
        key = "ranks" if "ranks" in obj else "rank"
        ranks = _require(obj, key, list, path, line)
        if any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
            raise TunaError("expected a list of integers", path=path, line=line, field=key)
        n, ref_text = len(gens), obj.get("response_4") or ""
        valid = set(range(n)) | ({n} if reference == "include" and ref_text else set())
        order: list[int] = []
        notes = []
        for r in ranks:
            if r == n and reference == "drop":
                continue
            if r not in valid:
                notes.append(f"skipped index {r}" + (" (no response_4 text)" if r == n else " (out of range)"))
            elif r in order:
                notes.append(f"skipped repeated index {r}")
            else:
                order.append(r)
        if not any(r < n for r in order):
            # e.g. a reply that echoed the format ('rank: [i, j ,k, l, m]') before its ranking: the released parser
            # then kept only the digits up to the next "rank:". Nothing to train on; the other records go on.
            log.warning("%s:%d: field '%s': %s names none of the %d responses; record skipped", path, line, key, ranks, n)
            continue
        left_out = [k for k in range(n) if k not in order]
        items = order + (left_out if missing == "last" else [])
        pos = positions(order, items)
        m = len(items)
        judge = {k: obj[k] for k in ("prompt", "gpt_eval", "rank_str", "response_4") if k in obj} | {"ranks": ranks}
        prov = {"file": path.name, "index": i, "released_id": obj.get("id", i), "judge": judge}
        instruction, inp = _split_prompt(instruct)
        out.append(parse_record({
            "id": ids(obj.get("id", i)), "instruction": instruction, "input": inp, "prompt": instruct,
            "candidates": [{"text": ref_text if k == n else gens[k], "score": float(m - pos[k]),
                            "source": "gpt-4-0314" if k == n else "tuna_p"} for k in items],
            "ranking": {"by": "judge", "model": "gpt-4-0314", "method": "paper_prompt",
                        "details": {"order": items, "missing": left_out, "reference": reference, "missing_policy": missing,
                                    **({"notes": notes} if notes else {})}},
            "provenance": prov,
        }, path=path, line=line))
    return attach_gold(out, import_alpaca(alpaca)) if alpaca else out


def attach_gold(records: list[Record], examples: list[Record]) -> list[Record]:
    """``records`` with ``gold`` from the example of the same instruction and input (the first one, when an
    instruction repeats); records without a match keep theirs."""
    golds: dict[tuple[str, str], str] = {}
    for e in examples:
        if e.gold is not None:
            golds.setdefault((e.instruction, e.input), e.gold)
    return [r.model_copy(update={"gold": golds[(r.instruction, r.input)]}) if (r.instruction, r.input) in golds else r
            for r in records]


def import_vicuna_answers(path: str | os.PathLike, questions: str | os.PathLike, *, models: list[str] | None = None) -> list[Record]:
    """FastChat's old Vicuna answer table (7 models × 80 questions) → one unranked candidate set per question.
    Real, diverse responses to the same prompts: useful before any sampling has been done."""
    qs = {str(o["question_id"]): o for _, o in iter_json_lines(questions)}
    by_q: dict[str, list[Candidate]] = {}
    for _, o in iter_json_lines(path):
        model = o.get("answer_file_model") or o.get("model_id")
        if models and model not in models:
            continue
        by_q.setdefault(str(o["question_id"]), []).append(Candidate(text=o["text"], source=model))
    return [
        Record(
            id=f"vicuna-{qid}",
            instruction=qs[qid]["text"],
            candidates=cands,
            provenance={"file": Path(path).name, "category": qs[qid].get("category")},
        )
        for qid, cands in sorted(by_q.items(), key=lambda kv: int(kv[0]))
        if qid in qs
    ]


IMPORTERS = {
    "alpaca": import_alpaca,
    "tuna-train": import_tuna_train,
    "tuna-davinci": import_tuna_davinci,
    "tuna-gpt4": import_tuna_gpt4_ranking,
}


# ----------------------------------------------------------------------------------------------- instruction files


def detect_format(path: Path) -> str:
    """``tuna`` (JSONL of records) or ``alpaca`` (an Alpaca JSON array or JSONL)."""
    if not path.exists():
        raise TunaError("file does not exist", path=path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for raw in f:
            s = raw.strip()
            if not s:
                continue
            if s.startswith(b"["):
                return "alpaca"
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                return "alpaca"  # a pretty-printed JSON array or object; import_alpaca reports problems
            return "tuna" if isinstance(obj, dict) and "candidates" in obj else "alpaca"
    raise TunaError("holds no records", path=path)


def load_inputs(path: str, *, fmt: str = "auto", limit: int | None = None, offset: int = 0, kind: str = "any",
                min_candidates: int = 1) -> list[Record]:
    """Tuna records (JSONL) or Alpaca JSON/JSONL, sliced by ``offset``/``limit``."""
    p = Path(path)
    fmt = detect_format(p) if fmt == "auto" else fmt
    if fmt == "alpaca":
        return import_alpaca(p, limit=limit, offset=offset)
    if fmt != "tuna":
        raise TunaError(f"unknown input format {fmt!r} (auto | tuna | alpaca)", field="input_format")
    out: list[Record] = []
    seen: set[str] = set()
    i = -1
    for i, (line, obj) in enumerate(iter_json_lines(p)):
        if i < offset:
            continue
        if limit is not None and len(out) >= limit:
            break
        rec = parse_record(obj, path=p, line=line)
        if rec.id in seen:
            raise TunaError(f"duplicate id {rec.id!r}", path=p, line=line, field="id")
        if kind == "ranked" and rec.ranking is None:
            raise TunaError("expected a ranked set", path=p, line=line, field="ranking")
        if len(rec.candidates) < min_candidates:
            raise TunaError(f"has {len(rec.candidates)} candidate(s), at least {min_candidates} needed to rank",
                            path=p, line=line, field="candidates")
        seen.add(rec.id)
        out.append(rec)
    if i < 0:
        raise TunaError("holds no records", path=p)
    return out


# ----------------------------------------------------------------------------------------------- the command


def import_records(fmt: str, path: str, out: str, limit: int | None = None, beta: float | None = None,
                   reference: str = "drop", missing: str = "last", alpaca: str | None = None) -> str:
    """Convert Alpaca JSON/JSONL or the paper's released files into tuna records (JSONL).

    docs/fidelity.md says what each released field becomes.

    Args:
        fmt: alpaca | tuna-train (train.*.w_orig_alpaca.json) | tuna-davinci (the text-davinci-003 data) |
            tuna-gpt4 (gpt-4-ranking.json).
        path: The input file (JSON array or JSONL, optionally .gz).
        out: The output JSONL.
        limit: Keep the first n records.
        beta: tuna-davinci: rank by logprob/length**beta instead of the stored avg_token_prob.
        reference: tuna-gpt4: drop | include GPT-4's own Response 4.
        missing: tuna-gpt4: last | drop the responses GPT-4 left out of its ranking (duplicates).
        alpaca: tuna-gpt4: Alpaca data that gives each record the gold of its instruction (for data.regularizer).
    """
    from tuna.records import write_records

    if fmt not in IMPORTERS:
        raise TunaError(f"unknown format {fmt!r} ({' | '.join(IMPORTERS)})", field="fmt")
    kwargs: dict[str, Any] = {"tuna-davinci": {"beta": beta}, "tuna-gpt4": {"reference": reference, "missing": missing, "alpaca": alpaca}}.get(fmt, {})
    records = IMPORTERS[fmt](path, **kwargs)
    if limit:
        records = records[:limit]
    write_records(out, records)
    print(f"wrote {len(records)} records to {out}")
    return out


COMMANDS = {"import": import_records}
