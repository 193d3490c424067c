"""Super-NaturalInstructions (default English track, 119 test tasks x first 100 instances = 11,810).

* Data: a ``natural-instructions`` checkout (``tasks/*.json`` + ``splits/default/test_tasks.txt``; made by ``git
  clone`` or by :func:`download_test_tasks`, which fetches only the 119 test task files) or a JSONL slice with inputs
  (``shared/data/superni/superni_test_slice.jsonl.gz``: ``id, task, category, definition, positive_examples, input,
  references``). A checkout is checked against the official answer key (ids, task and references) when one is given.
* Prompt: the source text of Tk-Instruct's ``DataCollatorForNI`` (``src/ni_collator.py``, yizhongw/Tk-Instruct
  @ 7c0e400) with the settings of its ``scripts/eval_tk_instruct.sh``: definition + 2 positive examples, no
  negative examples, no explanation; a demonstration is added only while the tokenised source still fits
  ``max_source_length`` (1024) tokens, and a source still longer than that is cut to its first 1024 tokens and
  decoded. Tokens are the evaluated model's, as in Tk-Instruct (``run_s2s.py`` L331-337 and L422-423 hand the
  collator the model's own ``AutoTokenizer``). An empty definition renders ``"Definition: .\n\n"``, as there. The builder lives here (:func:`tk_instruct_source`) because it is part of the benchmark protocol, not
  of the student's prompt format; the student's template (alpaca/chat/raw) wraps it.
* Metrics exactly as ``natural-instructions/eval/automatic/evaluation.py`` / Tk-Instruct ``compute_metrics.py``:
  exact match after lower-casing, dropping ``string.punctuation`` and folding white space (articles are kept),
  ROUGE-L F1 from ``rouge_score`` (``use_stemmer=True``, default tokenizer); max over references, mean over
  instances, x100, rounded to 4 decimals; overall, per category and per task; a missing prediction is ``""``.

:class:`FastScorer` gives the same numbers as :func:`reference_metrics` (a plain loop over the official
definition, kept for the parity test) but tokenises/stems each distinct text once and computes the LCS with a
bit-parallel algorithm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.records import iter_json_lines

log = logging.getLogger(__name__)

# Tk-Instruct's category -> reported metric map (compute_metrics.py).
EM_CATEGORIES = {
    "Textual Entailment", "Cause Effect Classification", "Coreference Resolution", "Dialogue Act Recognition",
    "Answerability Classification", "Word Analogy",
}
ROUGE_CATEGORIES = {
    "Overlap Extraction", "Keyword Tagging", "Question Rewriting", "Title Generation", "Data to Text", "Grammar Error Correction",
}


# ------------------------------------------------------------------------------------------------- prompts


def _end_punct(s: str) -> str:
    return s if s and s[-1] in string.punctuation else s + "."


def tk_instruct_source(
    definition: str,
    instance_input: str,
    positive_examples: list[dict[str, str]] | None = None,
    *,
    num_pos_examples: int,
    add_explanation: bool = False,
    tokenizer: Any = None,
    max_source_length: int | None = None,
) -> tuple[str, int, bool]:
    """The Tk-Instruct source text, the number of demonstrations in it, and whether it was cut to
    ``max_source_length`` tokens. Without a tokenizer nothing is measured (every demonstration is added).
    The protocol's values (2 examples, 1024 tokens) are the defaults of ``tuna eval superni``."""
    if tokenizer is not None and not max_source_length:
        raise TunaError("a tokenizer needs max_source_length", field="max_source_length")
    task_input = _end_punct(f"Now complete the following example -\nInput: {instance_input.strip()}") + "\nOutput: "
    # Tk-Instruct src/ni_collator.py L80-83 @ 7c0e400 (eval_tk_instruct.sh: --add_task_definition True):
    # definition = "Definition: " + instance["Definition"].strip(); '.' unless it ends in punctuation; += "\n\n".
    # An empty definition is no exception there: it renders "Definition: .\n\n".
    definition_part = _end_punct("Definition: " + definition.strip()) + "\n\n"
    demos: list[str] = []
    for i, ex in enumerate((positive_examples or [])[:num_pos_examples]):
        s = _end_punct(f" Positive Example {i + 1} -\nInput: {ex['input'].strip()}") + "\n"
        s = _end_punct(s + f" Output: {ex['output'].strip()}") + "\n"
        if add_explanation and "explanation" in ex:
            s = _end_punct(s + f" Explanation: {ex['explanation'].strip()}") + "\n"
        s += "\n"
        # the collator measures with " ".join although it concatenates with "" (kept: it decides which demos fit)
        if tokenizer is not None and len(tokenizer(definition_part + " ".join(demos) + s + task_input)["input_ids"]) > max_source_length:  # type: ignore[operator]
            break
        demos.append(s)
    source = definition_part + "".join(demos) + task_input
    if tokenizer is not None:
        ids = tokenizer(source)["input_ids"]
        if len(ids) > max_source_length:
            return tokenizer.decode(ids[:max_source_length], skip_special_tokens=True), len(demos), True
    return source, len(demos), False


def tk_instruct_prompt(definition: str, instance_input: str, positive_examples: list[dict[str, str]] | None = None,
                       **kwargs: Any) -> str:
    """:func:`tk_instruct_source`'s text only."""
    return tk_instruct_source(definition, instance_input, positive_examples, **kwargs)[0]


# ---------------------------------------------------------------------------------------------------- data


def load_references(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The official answer key (``create_reference_file.py`` format: ``id, references, task_id, task_category``)."""
    rows = []
    for line, obj in iter_json_lines(path):
        for key in ("id", "references"):
            if key not in obj:
                raise TunaError("missing key", path=path, line=line, field=key)
        if obj.get("track", "default") != "default":
            continue
        rows.append(obj)
    return rows


TEST_TASKS = 119
OFFICIAL_ITEMS = (11810, "bc39ad4d75e8b593")
"""Instances and the sha256 (first 16 hex) of the sorted ids, one per line, of the default-track test set."""


def items_digest(ids: Iterable[str]) -> str:
    """sha256 (first 16 hex) of the sorted ids joined by newlines: which items a run evaluated."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode("utf-8")).hexdigest()[:16]


def is_checkout(path: str | os.PathLike) -> bool:
    return (Path(path) / "splits" / "default" / "test_tasks.txt").is_file()


def read_task_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TunaError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None


def task_rows(name: str, td: dict[str, Any], path: Path, limit: int = 100) -> list[dict[str, Any]]:
    """A natural-instructions task file's first ``limit`` instances in the slice's row format."""
    for key in ("Definition", "Categories", "Instances"):
        if key not in td:
            raise TunaError("task file lacks a field", path=path, field=key)
    defin = td["Definition"][0] if isinstance(td["Definition"], list) else td["Definition"]
    pos = []
    for e in td.get("Positive Examples", []):
        ex = {"input": e["input"], "output": e["output"]}
        if "explanation" in e:
            ex["explanation"] = e["explanation"]
        pos.append(ex)
    rows = []
    for k, inst in enumerate(td["Instances"][:limit]):
        if "id" not in inst:
            raise TunaError(f"instance {k} has no id (an old task-file schema: use a newer natural-instructions commit)",
                            path=path, field="Instances.id")
        rows.append({"id": inst["id"], "task": name, "category": td["Categories"][0], "definition": defin,
                     "positive_examples": pos, "input": inst["input"], "references": list(inst["output"])})
    return rows


def answer_key(references: str | os.PathLike) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in load_references(references)}


def check_against_key(rows: list[dict[str, Any]], key: dict[str, dict[str, Any]], where: str | os.PathLike) -> int:
    """Every row's id must be in the official answer key (:func:`answer_key`) with the same task and references.
    Returns the number of rows checked."""
    for r in rows:
        ref = key.get(str(r["id"]))
        if ref is None:
            raise TunaError(f"instance {r['id']} of {r['task']} is not in the answer key", path=where, field="id")
        if ref.get("task_id", r["task"]) != r["task"] or list(ref["references"]) != list(r["references"]):
            raise TunaError(f"instance {r['id']} of {r['task']} differs from the answer key (task or references)",
                            path=where, field="output")
    return len(rows)


def load_instances(data: str | os.PathLike, *, limit: int | None = None, tasks: list[str] | None = None,
                   references: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Instances with inputs, in official order: ``{id, task, category, definition, positive_examples, input,
    references}``. ``data`` is a JSONL(.gz) slice or a natural-instructions checkout (first 100 instances of each of
    ``splits/default/test_tasks.txt``); ``references``: the answer key a checkout is checked against. ``limit``: per task."""
    p = Path(data)
    rows: list[dict[str, Any]] = []
    if p.is_dir():
        if not is_checkout(p):
            raise TunaError("not a natural-instructions checkout (splits/default/test_tasks.txt missing)", path=p)
        names = [t.strip() for t in (p / "splits" / "default" / "test_tasks.txt").read_text().splitlines() if t.strip()]
        for name in names:
            if tasks and name not in tasks:
                continue
            tf = p / "tasks" / f"{name}.json"
            if not tf.exists():
                raise TunaError("task file missing", path=tf)
            rows.extend(task_rows(name, read_task_file(tf), tf))
        if references:
            check_against_key(rows, answer_key(references), p)
    else:
        for _, obj in iter_json_lines(p):
            if tasks and obj["task"] not in tasks:
                continue
            rows.append(obj)
    if limit:
        seen: dict[str, int] = defaultdict(int)
        kept = []
        for r in rows:
            if seen[r["task"]] < limit:
                kept.append(r)
                seen[r["task"]] += 1
        rows = kept
    if not rows:
        raise TunaError("no Super-NI instances selected", path=p)
    return rows


# --------------------------------------------------------------------------------------------------- download

NI_REPO = "https://raw.githubusercontent.com/allenai/natural-instructions"
NI_REF = "e0fd31052b21acea5bd95fb00253e1ee1f5d8259"
"""The natural-instructions commit downloaded by default (its task files carry instance ids matching the answer key)."""


def default_checkout() -> Path:
    """Where ``--data full`` keeps the downloaded test tasks: ``$TUNA_CACHE/natural-instructions``."""
    from tuna.models import cache_root

    return cache_root() / "natural-instructions"


def download_test_tasks(dest: str | os.PathLike, *, ref: str = NI_REF, base_url: str = NI_REPO,
                        references: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``splits/default/test_tasks.txt`` and the 119 test task files of ``allenai/natural-instructions`` at
    ``ref`` into ``dest`` (a checkout layout), keeping each task's first 100 instances (the evaluated ones; the full
    files are ~GBs). Resumable: a task file already there is kept. With ``references`` every kept instance is checked
    against the answer key. Offline, clone the repository elsewhere and pass its path instead."""
    import time
    import urllib.error
    import urllib.request

    from tuna.records import atomic_write_text

    root = Path(dest)
    split = root / "splits" / "default" / "test_tasks.txt"

    def get(rel: str) -> bytes:
        url = f"{base_url.rstrip('/')}/{ref}/{rel}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a fixed https host or the caller's URL
                return r.read()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise TunaError(f"cannot download {url} ({getattr(e, 'reason', e)}); offline, `git clone "
                            f"https://github.com/allenai/natural-instructions` on a machine with network and pass "
                            f"--data /path/to/natural-instructions", path=root) from None

    if not split.exists():
        split.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(split, get("splits/default/test_tasks.txt").decode("utf-8"))
    names = [t.strip() for t in split.read_text().splitlines() if t.strip()]
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if not (root / "tasks" / f"{n}.json").exists()]
    key = answer_key(references) if references and todo else None
    log.info("natural-instructions@%s: %d of %d test tasks to download -> %s", ref[:10], len(todo), len(names), root)
    t0, nbytes = time.monotonic(), 0
    for i, name in enumerate(todo):
        raw = get(f"tasks/{name}.json")
        nbytes += len(raw)
        td = json.loads(raw.decode("utf-8"))
        total = len(td.get("Instances", []))
        td["Instances"] = td.get("Instances", [])[:100]
        td["tuna_download"] = {"ref": ref, "instances_in_source": total, "instances_kept": len(td["Instances"]),
                               "sha256": hashlib.sha256(raw).hexdigest()}
        target = root / "tasks" / f"{name}.json"
        if key is not None:
            check_against_key(task_rows(name, td, target), key, target)
        atomic_write_text(target, json.dumps(td, ensure_ascii=False, indent=1))
        dt = time.monotonic() - t0
        eta = dt / (i + 1) * (len(todo) - i - 1)
        log.info("natural-instructions: %d/%d %s (%.1f MB so far, ETA %.0f s)", i + 1, len(todo), name, nbytes / 1e6, eta)
    return root


def resolve_data(data: str, *, references: str | os.PathLike | None = None) -> str:
    """``full`` -> the cached checkout of the test tasks (downloaded when missing); anything else as given."""
    if data != "full":
        return data
    d = default_checkout()
    if not is_checkout(d) or len(list((d / "tasks").glob("*.json"))) < TEST_TASKS:
        download_test_tasks(d, references=references)
    return str(d)


# --------------------------------------------------------------------------------------------------- metrics


def normalize_answer(s: str) -> str:
    """SQuAD-style without article removal: lower-case, drop string.punctuation, fold white space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    return " ".join(s.split())


_PUNCT = set(string.punctuation)


def reference_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The plain official definition (one RougeScorer call per reference), kept for parity tests."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    em = rl = 0.0
    for pred, refs in zip(predictions, references):
        em += max(float(normalize_answer(pred) == normalize_answer(r)) for r in refs)
        rl += max(scorer.score(prediction=pred, target=r)["rougeL"].fmeasure for r in refs)
    n = len(predictions)
    return {"exact_match": round(100.0 * em / n, 4), "rougeL": round(100.0 * rl / n, 4)}


def lcs_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Length of the longest common subsequence (bit-parallel, Allison-Dix/Hyyro: O(len(b)) big-int ops)."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, tok in enumerate(b):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


class FastScorer:
    """ROUGE-L F (rouge_score's default tokenizer + Porter stemmer) and EM with per-text caches."""

    def __init__(self) -> None:
        from rouge_score import tokenize
        from rouge_score.tokenizers import DefaultTokenizer

        self._tok = DefaultTokenizer(use_stemmer=True)
        self._stemmer = self._tok._stemmer
        self._nonalnum, self._spaces, self._valid = tokenize.NON_ALPHANUM_RE, tokenize.SPACES_RE, tokenize.VALID_TOKEN_RE
        self.tokens = lru_cache(maxsize=1 << 18)(self._tokens)
        self.stem = lru_cache(maxsize=1 << 18)(self._stemmer.stem)
        self.norm = lru_cache(maxsize=1 << 18)(normalize_answer)

    def _tokens(self, text: str) -> tuple[str, ...]:
        # Same steps as rouge_score.tokenize.tokenize, with the stemmer memoised per word.
        text = self._nonalnum.sub(" ", text.lower())
        toks = [self.stem(x) if len(x) > 3 else x for x in self._spaces.split(text)]
        return tuple(x for x in toks if self._valid.match(x))

    def rouge_l(self, pred: str, ref: str) -> float:
        p, r = self.tokens(pred), self.tokens(ref)
        if not p or not r:
            return 0.0
        if p == r:
            lcs = len(p)
        else:
            lcs = lcs_length(r, p)
        precision, recall = lcs / len(p), lcs / len(r)
        return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    def score(self, pred: str, refs: Iterable[str]) -> tuple[float, float]:
        np_ = self.norm(pred)
        refs = list(refs)
        em = max(float(np_ == self.norm(r)) for r in refs)
        rl = max(self.rouge_l(pred, r) for r in refs)
        return em, rl


def _agg(pairs: list[tuple[float, float]]) -> dict[str, float]:
    n = len(pairs)
    return {"exact_match": round(100.0 * sum(p[0] for p in pairs) / n, 4), "rougeL": round(100.0 * sum(p[1] for p in pairs) / n, 4), "n": n}


def compute_metrics(
    rows: list[dict[str, Any]], predictions: dict[str, str], scorer: FastScorer | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``rows``: ``{id, references, task (or task_id), category (or task_category)}``. Returns (metrics, per-instance)."""
    scorer = scorer or FastScorer()
    by_cat: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    allp: list[tuple[float, float]] = []
    per: list[dict[str, Any]] = []
    missing = 0
    for r in rows:
        rid = str(r["id"])
        if rid not in predictions:
            missing += 1
        pred = predictions.get(rid, "")
        if pred is None:
            pred = ""
        em, rl = scorer.score(str(pred), r["references"])
        task = r.get("task") or r.get("task_id")
        cat = r.get("category") or r.get("task_category")
        allp.append((em, rl))
        by_cat[cat].append((em, rl))
        by_task[task].append((em, rl))
        per.append({"id": rid, "task": task, "exact_match": em, "rougeL": round(rl, 6)})
    per_cat = {c: _agg(v) for c, v in sorted(by_cat.items())}
    for c, m in per_cat.items():
        m["tk_metric"] = "exact_match" if c in EM_CATEGORIES else "rougeL" if c in ROUGE_CATEGORIES else None
    metrics = {
        **_agg(allp),
        "missing_predictions": missing,
        "per_category": per_cat,
        "per_task": {t: _agg(v) for t, v in by_task.items()},
    }
    return metrics, per


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    preds: dict[str, str] = {}
    for line, obj in iter_json_lines(path):
        if "id" not in obj:
            raise TunaError("missing key", path=path, line=line, field="id")
        pred = obj.get("prediction", obj.get("output"))
        if pred is not None and not isinstance(pred, str):
            raise TunaError(f"prediction must be a string, got {type(pred).__name__}", path=path, line=line, field="prediction")
        preds[str(obj["id"])] = pred or ""
    return preds


def score_prediction_file(predictions: str | os.PathLike, references: str | os.PathLike, *, tasks: list[str] | None = None) -> dict[str, Any]:
    """Like the official script: every instance of the answer key is scored; a missing prediction is ``""``."""
    refs = load_references(references)
    if tasks:
        refs = [r for r in refs if r["task_id"] in tasks]
    preds = read_predictions(predictions)
    known = {str(r["id"]) for r in refs}
    unknown = sum(1 for k in preds if k not in known)
    metrics, _ = compute_metrics(refs, preds)
    metrics["unknown_prediction_ids"] = unknown
    return metrics


def strip_prediction(text: str) -> str:
    """Keep the first paragraph of a causal LM's answer (models keep writing new 'Input:' blocks)."""
    text = text.strip()
    cut = re.split(r"\n\s*\n|\n(?:Input|Definition|Now complete|Positive Example)\b", text, maxsplit=1)
    return cut[0].strip()
