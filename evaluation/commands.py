"""``tuna eval superni|lmentry|vicuna`` and ``tuna report`` (registered by :mod:`tuna_recipes.cli` through ``COMMANDS``).

Each benchmark is a job dataclass (its flags: the benchmark's own fields plus ``--generation.*``, ``--runtime.*`` and,
for Vicuna, ``--judge.*``; :class:`evaluation.config.EvalJob`) and a runner in ``RUNNERS`` that follows the shared
flow of :class:`evaluation.flow.EvalRun`. Heavy imports (torch, transformers, rouge_score, matplotlib) happen inside
the runners.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.config import EvalJob, greedy
from evaluation.flow import EvalRun
from tuna.errors import TunaError
from tuna.feedback.config import JudgeConfig
from tuna.generation import GenerationConfig
from tuna.paths import data_dir, data_file

log = logging.getLogger("tuna.eval")


def references_default() -> str | None:
    p = data_dir() / "superni" / "test_references.jsonl.gz"
    return str(p) if p.exists() else None


@dataclass(kw_only=True)
class SuperNIJob(EvalJob):
    """Super-NaturalInstructions test set (119 tasks x 100): ROUGE-L and exact match, overall/per category/per task.
    --limit counts instances per task (the official set is the first 100)."""

    predictions: str | None = None
    """Score an existing predictions JSONL ({"id", "prediction"}) against --references; no model."""
    references: str | None = None
    """The official answer key (test_references.jsonl[.gz]); default: the shared data's copy. A natural-instructions
    checkout is checked against it."""
    data: str | None = None
    """full (the 119 test tasks, downloaded once into $TUNA_CACHE/natural-instructions), a natural-instructions
    checkout, or a JSONL slice; default: the shared data's 8-task slice (reported as a slice)."""
    tasks: list[str] | None = None
    """Only these task names."""
    num_pos_examples: int = 2
    """Positive examples after the definition (Tk-Instruct eval_tk_instruct.sh: 2); 0 = definition only."""
    postprocess: str = "none"
    """none (score the generated text as is, like the official script) | first_paragraph."""
    max_source_length: int = 1024
    """Tokens of the Tk-Instruct source (model's tokenizer): demonstrations are added only while it fits, and a longer
    source is cut to this length, as Tk-Instruct's collator does (1024)."""
    generation: GenerationConfig = field(default_factory=lambda: greedy(128))
    """Decoding of the answers (Tk-Instruct: greedy, 128 new tokens)."""


def score_superni_file(job: SuperNIJob) -> str:
    """The model-free path: score a predictions file against the answer key."""
    from evaluation import superni
    from evaluation.predictions import Timer, provenance
    from tuna.records import atomic_write_json

    timer = Timer()
    key = job.references or data_file("superni/test_references.jsonl.gz", None)
    metrics = superni.score_prediction_file(job.predictions, key, tasks=job.tasks)  # type: ignore[arg-type]
    out = Path(job.predictions).with_suffix(".metrics.json")  # type: ignore[arg-type]
    settings = {"benchmark": "superni", "predictions": str(job.predictions), "references": str(key), "tasks": job.tasks}
    metrics["wall_time_s"] = round(timer(), 3)
    atomic_write_json(out, {"benchmark": "superni", "settings": settings, **provenance(None), "metrics": metrics})
    print(f"Super-NI ({metrics['n']} instances): exact_match {metrics['exact_match']:.4f}  rougeL {metrics['rougeL']:.4f}"
          f"  (missing {metrics['missing_predictions']}) -> {out}")
    return str(out)


def run_superni(job: SuperNIJob) -> str:
    from evaluation import protocol, superni

    if job.predictions:
        return score_superni_file(job)
    if not job.model:
        raise TunaError("give --model (to generate) or --predictions (to score a file)", field="model")
    run = EvalRun(job, "superni")
    # resolve the data
    references = job.references or references_default()
    data = job.data
    if data is None:
        data = data_file("superni/superni_test_slice.jsonl.gz", None)
        log.info("Super-NI: the 8-task slice (%s); --data full evaluates all 119 test tasks", data)
    data = superni.resolve_data(data, references=references)
    rows = superni.load_instances(data, limit=job.limit, tasks=job.tasks,
                                  references=references if superni.is_checkout(data) else None)
    n_pos = job.num_pos_examples
    run.start({"benchmark": "superni", "model": job.model, "data": str(data), "n_instances": len(rows), "limit": job.limit,
               "tasks": job.tasks, "num_pos_examples": n_pos, "max_source_length": job.max_source_length,
               "postprocess": job.postprocess, "prompt_format": "tk-instruct"})
    # generate
    budget = run.budget()
    built = [superni.tk_instruct_source(r["definition"], r["input"], r.get("positive_examples"), num_pos_examples=n_pos,
                                        tokenizer=budget.tokenizer, max_source_length=job.max_source_length) for r in rows]
    prompts = run.render([b[0] for b in built])
    preds = run.generate([{"id": r["id"], "task": r["task"], "prompt": p} for r, p in zip(rows, prompts)], "superni")
    # score
    post = superni.strip_prediction if job.postprocess == "first_paragraph" else (lambda s: s)
    metrics, per = superni.compute_metrics(rows, {k: post(v["prediction"]) for k, v in preds.items()})
    # record the protocol
    ids = [r["id"] for r in rows]
    fields = {"items": len(rows), "items_digest": superni.items_digest(ids), "tasks": len({r["task"] for r in rows}),
              "scope": "full" if (len(rows), superni.items_digest(ids)) == superni.OFFICIAL_ITEMS else "slice",
              "num_pos_examples": n_pos, "prompt_format": "tk-instruct (ni_collator.py)",
              "max_source_length": job.max_source_length, **run.protocol_decoding(), "postprocess": job.postprocess}
    tfields, textra = protocol.template_fields(job.template, job.model)
    proto = protocol.make("superni", {**fields, **tfields}, **textra, tokenizer=run.runtime.tokenizer or job.model,
                          truncated_sources=sum(b[2] for b in built),
                          demonstrations_dropped=sum(min(n_pos, len(r.get("positive_examples") or [])) - b[1]
                                                     for r, b in zip(rows, built)),
                          approximate=False)
    # write
    path = run.finish(metrics, {"protocol": proto, "item_scores": {"file": "scores.jsonl", "unit": "instance", "id": "id",
                                                                   "values": ["rougeL", "exact_match"]}, **run.run_info()},
                      scores=per)
    print(f"Super-NI {job.model} [{proto['label']}] ({metrics['n']} instances): rougeL {metrics['rougeL']:.2f}  "
          f"exact_match {metrics['exact_match']:.2f} -> {path}")
    return str(path)


@dataclass(kw_only=True)
class LMentryJob(EvalJob):
    """LMentry: 25 tasks zero-shot, official regex scorers; accuracy, 4 robustness aspects and the LMentry score.
    --limit counts examples per task (spread over the 3 templates; robustness is then approximate)."""

    data: str | None = None
    """lmentry_tasks.json[.gz] (all 41 task files merged); default: the shared data's copy."""
    tasks: list[str] | None = None
    """Only these tasks (the score needs all 25 + the 16 subset files)."""
    robustness_subsets: bool = True
    """Also run the 16 argument-content subset files (needed for robustness)."""
    truncate: bool = False
    """Cut predictions at the first newline and '.' (upstream does this for base LMs only)."""
    generation: GenerationConfig = field(default_factory=lambda: greedy(50))
    """Decoding of the answers (upstream predict.py: greedy, max_length 50)."""


def run_lmentry(job: LMentryJob) -> str:
    from evaluation import lmentry, protocol
    from evaluation.lmentry_scorers import CORE_TASKS
    from evaluation.superni import items_digest

    run = EvalRun(job, "lmentry")
    data = data_file("lmentry/lmentry_tasks.json.gz", job.data)
    all_tasks = lmentry.load_tasks(data)
    names = list(job.tasks) if job.tasks else [*CORE_TASKS, *(lmentry.SUBSET_TASKS if job.robustness_subsets else [])]
    unknown = [t for t in names if t not in all_tasks]
    if unknown:
        raise TunaError(f"unknown LMentry tasks: {', '.join(unknown)}", field="tasks")
    run.start({"benchmark": "lmentry", "model": run.model, "data": str(data), "limit": job.limit, "tasks": names,
               "truncate": job.truncate})
    items = [{"id": f"{t}/{eid}", "input": ex["input"]} for t in names for eid, ex in lmentry.select_examples(all_tasks[t], job.limit)]
    for it, p in zip(items, run.render([it["input"] for it in items])):
        it["prompt"] = p
    preds = run.generate(items, "lmentry")
    metrics, per = lmentry.score_rows(all_tasks, preds, truncate=job.truncate)
    metrics["approximate"] = bool(job.limit) or not metrics["complete"]
    if metrics["approximate"]:
        metrics["note"] = ("limited or partial run: accuracies are over the evaluated examples only and robustness "
                           "is an approximation of the full-benchmark value")
    full = not job.limit and metrics["complete"] and len(names) == len(CORE_TASKS) + len(lmentry.SUBSET_TASKS)
    fields = {"items": len(items), "items_digest": items_digest(it["id"] for it in items), "scope": "full" if full else "slice",
              "limit": job.limit, **run.protocol_decoding(), "truncate": job.truncate, "aggregation": "lmentry analysis @ 463763d"}
    tfields, textra = protocol.template_fields(job.template, job.model)
    proto = protocol.make("lmentry", {**fields, **tfields}, **textra, approximate=metrics["approximate"])
    path = run.finish(metrics, {"protocol": proto,
                                "item_scores": {"file": "scores.jsonl", "unit": "example", "id": "id", "values": ["score"],
                                                "strata": ["task", "template_id"]}, **run.run_info()}, scores=per)
    print(f"LMentry {job.model} [{proto['label']}]: accuracy {metrics['accuracy']}  robustness {metrics['robustness']}  "
          f"LMentry score {metrics['lmentry_score']}{'  (approximate)' if metrics['approximate'] else ''} -> {path}")
    return str(path)


def vicuna_reviewer() -> JudgeConfig:
    """`tuna eval vicuna`'s reviewer: a pinned GPT-4 snapshot (FastChat called gpt-4, then gpt-4-0314, now retired)."""
    return JudgeConfig(model="gpt-4-0613", backend="openai")


@dataclass(kw_only=True)
class VicunaJob(EvalJob):
    """Vicuna QA (80 questions): pairwise review with FastChat's original reviewer prompts (2023 protocol).
    --limit takes the first n questions."""

    answers: str | None = None
    """Use this answers JSONL ({"question_id", "text"}) or run directory instead of generating."""
    opponent: str = "gpt35"
    """A model of FastChat's answer table (gpt35, bard, alpaca-13b, llama-13b, vicuna-13b, ...), an answers JSONL or
    another run directory."""
    data: str | None = None
    """The vicuna_qa folder (question.jsonl, prompt.jsonl, reviewer.jsonl, old_eval_answers.jsonl.gz)."""
    orders: str = "single"
    """single (FastChat 2023: one review, the opponent as Assistant 1, the model as Assistant 2) | both (also the
    swapped review; the position-bias-controlled result is reported beside the single-order one)."""
    judge: JudgeConfig = field(default_factory=vicuna_reviewer)
    # The review uses the judge's endpoint (model, backend, URL, keys, concurrency, retries, budget, cache: default
    # <out_root>/judge_cache), its mode (sync | batch), server seed and `constrain` (rank_grammar: the review's first
    # line must be "s1 s2", a GBNF grammar for weak local judges); the request itself is FastChat's reviewer's.
    """The reviewer: the same config as contextual ranking's judge (docs/evaluation.md, Vicuna QA)."""
    review_max_tokens: int | None = None
    """Override the reviewer's max_tokens (FastChat reviewer.jsonl: 1024)."""
    strict_parse: bool = False
    """Parse the first line exactly as eval_gpt_review.py (else lenient; see docs)."""
    generation: GenerationConfig = field(default_factory=lambda: greedy(1024))
    # FastChat get_model_answer.py samples at T=0.7; greedy here, so that answers are reproducible
    """Decoding of the answers (FastChat get_model_answer.py: 1024 new tokens; greedy here)."""


def vicuna_answers(job: VicunaJob, run: EvalRun, questions: list[dict[str, Any]], data: Any) -> tuple[str, dict[int, str], dict[str, Any], dict[str, Any]]:
    """The answers reviewed: generated (cached per settings) or read from --answers. Returns the model's label,
    {question_id: answer}, the run folder's settings and the protocol's answer fields."""
    from evaluation import protocol, vicuna

    if job.answers:
        label, mine = vicuna.resolve_opponent(job.answers, data)
        run.start({"benchmark": "vicuna", "answers": str(job.answers)}, generates=False, model=job.model or label)
        return job.model or label, mine, run.settings, {"answers": "answers file (decoding not known)"}
    if not job.model:
        raise TunaError("give --model (to generate answers) or --answers", field="model")
    run.start({"benchmark": "vicuna", "model": job.model, "limit": job.limit})
    prompts = run.render([q["text"] for q in questions])
    items = [{"id": str(q["question_id"]), "question_id": q["question_id"], "prompt": p} for q, p in zip(questions, prompts)]
    rows = run.generate(items, "vicuna answers")
    fields = {"answers": "generated", **run.protocol_decoding(), **protocol.template_fields(job.template, job.model)[0]}
    return job.model, {int(k): v["prediction"] for k, v in rows.items()}, run.settings, fields


def run_vicuna(job: VicunaJob) -> str:
    from evaluation import protocol, vicuna
    from evaluation.predictions import settings_hash
    from tuna.feedback.client import ChatRequest, open_client
    from tuna.records import atomic_write_json, atomic_write_text

    if job.orders not in vicuna.ORDERS:
        raise TunaError(f"orders must be single | both, got {job.orders!r}", field="orders")
    if job.judge.constrain not in ("none", "rank_grammar"):
        raise TunaError(f"constrain must be none | rank_grammar, got {job.judge.constrain!r}", field="judge.constrain")
    run = EvalRun(job, "vicuna")
    data = data_file("vicuna_qa", job.data)
    questions = vicuna.load_questions(data)[:job.limit] if job.limit else vicuna.load_questions(data)
    reviewers = vicuna.load_reviewers(data)
    model_ref, mine, ans_settings, ans_fields = vicuna_answers(job, run, questions, data)
    opp_label, theirs = vicuna.resolve_opponent(job.opponent, data)
    qids = [int(q["question_id"]) for q in questions]
    opp_rows = [{"question_id": q, "text": theirs[q]} for q in qids if q in theirs]
    reqs = vicuna.judge_requests(questions, mine, theirs, reviewers, orders=job.orders)
    grammar_name = "score_grammar" if job.judge.constrain == "rank_grammar" else "none"
    grammar = vicuna.SCORE_GRAMMAR if grammar_name == "score_grammar" else None
    with contextlib.ExitStack() as stack:  # the reviewer's client (and a llamacpp reviewer's server) until the reviews are in
        client = open_client(job.judge, stack, cache_dir=str(Path(job.out_root) / "judge_cache"), seed=job.judge.seed)
        # what the reviews were asked of, as the client sends them (a local server's name and URL)
        judge_settings = {"opponent": opp_label, "opponent_ref": job.opponent, "judge_model": client.model,
                          "judge_backend": client.backend, "judge_base_url": client.base_url, "strict_parse": job.strict_parse,
                          "judge_max_tokens": job.review_max_tokens,
                          **({"judge_grammar": grammar_name} if grammar_name != "none" else {}),
                          "questions": [q["question_id"] for q in questions],
                          "reviewer_prompts": "fastchat/eval prompt.jsonl+reviewer.jsonl", "orders": job.orders}
        assert run.dir is not None
        jd = run.dir / f"vs-{opp_label}-{settings_hash(judge_settings)}"
        jd.mkdir(parents=True, exist_ok=True)
        atomic_write_json(jd / "settings.json", judge_settings)
        atomic_write_text(jd / "opponent_answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in opp_rows))
        chat = [ChatRequest(messages=r["messages"], temperature=r["temperature"], max_tokens=job.review_max_tokens or r["max_tokens"],
                            grammar=grammar) for r in reqs]
        if job.judge.mode == "batch":  # OpenAI's Batch API at half the price; state in the run's batch/ folder, resumable
            from tuna.feedback.reask import ask

            replies, _, ledger = ask(job.judge, chat, cache_dir=job.judge.cache_dir or str(Path(job.out_root) / "judge_cache"),
                                     state_dir=jd / "batch", desc="vicuna review",
                                     accept=lambda r, t: vicuna.parse_review(t, strict=job.strict_parse) is not None)
        else:
            replies = client.complete_many(chat, desc="vicuna review")
            ledger = client.ledger
    judgments = []
    for r, rep in zip(reqs, replies):
        scores = vicuna.parse_review(rep.text, strict=job.strict_parse) if rep.error is None else None
        err = rep.error or (None if scores is not None else vicuna.NO_VERDICT)
        judgments.append({"question_id": r["question_id"], "category": r["category"], "order": r["order"], "reviewer_id": r["reviewer_id"],
                          "scores": list(scores) if scores else None, "error": err, "review": rep.text, "cached": rep.cached})
    atomic_write_text(jd / "judgments.jsonl", "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
    metrics = vicuna.combine(judgments, orders=job.orders)
    metrics["judge_ledger"] = ledger
    jm = judge_settings["judge_model"]
    fields = {"questions": len(qids), "questions_digest": protocol.digest(qids), "opponent": opp_label,
              "opponent_digest": protocol.digest(opp_rows), "judge_model": jm,
              "judge_grammar": grammar_name, "judge_max_tokens": job.review_max_tokens,
              "reviewer_prompts_digest": protocol.digest(reviewers), "orders": job.orders,
              "parse": "strict" if job.strict_parse else "lenient", **ans_fields}
    jb = judge_settings["judge_backend"]
    proto = protocol.make("vicuna", fields, approximate=False,
                          judge={"model": jm, "backend": jb, "base_url": judge_settings["judge_base_url"],
                                 "snapshot_pinned": jb != "openai" or bool(re.search(r"-\d{4}(-\d{2}-\d{2})?$", jm))},
                          opponent_answers="opponent_answers.jsonl")
    item_scores = {"inline": "metrics.per_question", "unit": "question", "id": "question_id", "values": ["result"]}
    path = run.finish(metrics, {"protocol": proto, "item_scores": item_scores, **(run.run_info() if not job.answers else {})},
                      model=model_ref, tags={**(job.tags or {}), "opponent": opp_label}, directory=jd,
                      settings={**ans_settings, **judge_settings})
    both = metrics.get("both_orders")
    print(f"Vicuna {model_ref} vs {opp_label} [{proto['label']}]: win {metrics['win']} tie {metrics['tie']} lose {metrics['lose']} "
          f"error {metrics['error']}" + (f"; both orders: {both['win']}/{both['tie']}/{both['lose']} error {both['error']}" if both else "")
          + f" -> {path}")
    return str(path)


def report(
    runs: str = "runs/eval",
    name: str = "main",
    out: str = "results",
    paper: str | None = "experiments/paper_numbers.example.yaml",
    ablation: str | None = None,
    series: str | None = None,
    baseline: str | None = None,
    resamples: int | None = None,
    seed: int | None = None,
    evidence: str | None = None,
) -> str:
    """Collect results.json files into the paper's tables and plots.

    Markdown + LaTeX tables with 95 % bootstrap intervals and n, and PNG plots, under <out>/<name>/. Columns are keyed by evaluation protocol: runs with different protocols never
    share a column. With --evidence DIR: rebuild the verifiable experiment's tables in DIR from its committed
    per-item files (evaluation.evidence) instead.

    Args:
        runs: Folder searched recursively for results.json.
        name: Report name (sub-folder of out).
        out: Output root.
        paper: YAML with the paper's numbers (null = not available); empty string to leave the column out.
        ablation: A knob (a tags key or settings key): adds an ablation table (rows = its values) and plots.
        series: A second knob: plots each metric against `ablation` with one line per value of this one.
        baseline: A row (model name) every other row is compared with by a paired bootstrap over the same items.
        resamples: Bootstrap resamples per interval (default: evaluation.stats.RESAMPLES, 2000).
        seed: Bootstrap seed, so tables are reproducible (default: evaluation.stats.SEED, 0).
        evidence: A folder written by `tuna evidence-export` (items/, runs.json): its tables and plots are rebuilt
            there, with two-way (seeds x item clusters) intervals and Holm's correction; the other arguments but
            resamples and seed are not used.
    """
    from evaluation.report import make_report

    if evidence:
        from evaluation.evidence import RESAMPLES, SEED, make_evidence_report

        rep = make_evidence_report(evidence, resamples=resamples or RESAMPLES, seed=SEED if seed is None else seed)
        print(f"evidence tables: {len(rep['comparisons'])} comparisons over {rep['items']} held-out items -> {evidence}/main.md")
        return str(evidence)

    if paper == "experiments/paper_numbers.example.yaml" and not Path(paper).exists():
        paper = None  # the default only applies inside the repository
    boot = {k: v for k, v in (("resamples", resamples), ("seed", seed)) if v is not None}
    d = make_report(runs, Path(out) / name, paper=paper or None, ablation=ablation, series=series, baseline=baseline, **boot)
    print(f"report -> {d}")
    return str(d)


COMMANDS = {"eval": {"superni": SuperNIJob, "lmentry": LMentryJob, "vicuna": VicunaJob}, "report": report}
RUNNERS = {SuperNIJob: run_superni, LMentryJob: run_lmentry, VicunaJob: run_vicuna}
