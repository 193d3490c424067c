"""``tuna eval superni|lmentry|vicuna`` and ``tuna report`` (registered by :mod:`tuna_recipes.cli` through ``COMMANDS``).

Heavy imports (torch, transformers, rouge_score, matplotlib) happen inside the functions."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from evaluation.predictions import generation_settings
from tuna.errors import TunaError
from tuna.feedback.config import UNREACHABLE_TIMEOUT
from tuna.paths import data_dir, data_file

log = logging.getLogger("tuna.eval")


def _references_default() -> str | None:
    p = data_dir() / "superni" / "test_references.jsonl.gz"
    return str(p) if p.exists() else None


def _write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

    from tuna.records import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in rows))


def eval_superni(
    model: str | None = None,
    predictions: str | None = None,
    references: str | None = None,
    data: str | None = None,
    limit: int | None = None,
    tasks: list[str] | None = None,
    num_pos_examples: int = 2,
    template: str = "alpaca",
    postprocess: str = "none",
    backend: str = "auto",
    max_new_tokens: int = 128,
    max_source_length: int = 1024,
    batch_size: int = 8,
    dtype: str = "auto",
    device: str = "auto",
    base_url: str | None = None,
    tokenizer: str | None = None,
    max_model_len: int | None = None,
    out_root: str = "runs/eval",
    tags: dict[str, Any] | None = None,
) -> str:
    """Super-NaturalInstructions test set (119 tasks x 100): ROUGE-L and exact match, overall/per category/per task.

    Args:
        model: Student to generate with (an embedded name, a HF folder or hub id). Omit with --predictions.
        predictions: Score an existing predictions JSONL ({"id", "prediction"}) against --references; no model.
        references: The official answer key (test_references.jsonl[.gz]); default: the shared data's copy. A
            natural-instructions checkout is checked against it.
        data: full (the 119 test tasks, downloaded once into $TUNA_CACHE/natural-instructions), a natural-instructions
            checkout, or a JSONL slice; default: the shared data's 8-task slice (reported as a slice).
        limit: Instances per task (the official set is the first 100).
        tasks: Only these task names.
        num_pos_examples: Positive examples after the definition (Tk-Instruct eval_tk_instruct.sh: 2); 0 = definition only.
        template: How the student sees the Tk-Instruct text: alpaca | chat | raw.
        postprocess: none (score the generated text as is, like the official script) | first_paragraph.
        backend: auto (vllm on a GPU where installed, else hf) | hf | openai | vllm.
        max_new_tokens: Generation length (Tk-Instruct: 128).
        max_source_length: Tokens of the Tk-Instruct source (model's tokenizer): demonstrations are added only while
            it fits, and a longer source is cut to this length, as Tk-Instruct's collator does (1024).
        batch_size: Prompts per generation batch.
        dtype: Model weights dtype: auto (bf16 only where the device computes it natively) | float32 | bfloat16 | float16.
        device: auto (cuda when available) | cpu | cuda.
        base_url: OpenAI-compatible server for backend openai.
        tokenizer: The served model's tokenizer (a folder or hub id) when --model is a server's model name.
        max_model_len: The context window prompts must fit in (default: the model config's).
        out_root: Where runs go: <out_root>/superni/<model>/<settings hash>/.
        tags: Free labels stored in results.json (e.g. {"name": "Tuna", "lambda": 0.5}) for `tuna report`.
    """
    from evaluation import protocol, superni
    from evaluation.predictions import Timer, generate_cached, prompt_budget, render, start_run, write_results

    timer = Timer()
    if predictions:
        key = references or data_file("superni/test_references.jsonl.gz", None)
        metrics = superni.score_prediction_file(predictions, key, tasks=tasks)
        out = Path(predictions).with_suffix(".metrics.json")
        from tuna.records import atomic_write_json

        settings = {"benchmark": "superni", "predictions": str(predictions), "references": str(key), "tasks": tasks}
        metrics["wall_time_s"] = round(timer(), 3)
        from evaluation.predictions import provenance

        atomic_write_json(out, {"benchmark": "superni", "settings": settings, **provenance(None), "metrics": metrics})
        print(f"Super-NI ({metrics['n']} instances): exact_match {metrics['exact_match']:.4f}  rougeL {metrics['rougeL']:.4f}"
              f"  (missing {metrics['missing_predictions']}) -> {out}")
        return str(out)
    if not model:
        raise TunaError("give --model (to generate) or --predictions (to score a file)", field="model")
    references = references or _references_default()
    if data is None:
        data = data_file("superni/superni_test_slice.jsonl.gz", None)
        log.info("Super-NI: the 8-task slice (%s); --data full evaluates all 119 test tasks", data)
    data = superni.resolve_data(data, references=references)
    rows = superni.load_instances(data, limit=limit, tasks=tasks, references=references if superni.is_checkout(data) else None)
    gen = generation_settings(backend, template, max_new_tokens, batch_size, dtype, device, base_url, tokenizer=tokenizer, max_model_len=max_model_len)
    settings = {"benchmark": "superni", "model": model, "data": str(data), "n_instances": len(rows), "limit": limit,
                "tasks": tasks, "num_pos_examples": num_pos_examples, "max_source_length": max_source_length,
                "postprocess": postprocess, "prompt_format": "tk-instruct", **gen.hashed()}
    d = start_run(out_root, "superni", model, settings)
    budget = prompt_budget(model, gen)
    built = [superni.tk_instruct_source(r["definition"], r["input"], r.get("positive_examples"), num_pos_examples=num_pos_examples,
                                        tokenizer=budget.tokenizer, max_source_length=max_source_length) for r in rows]
    prompts = render([b[0] for b in built], template, model, tokenizer=budget.tokenizer)
    items = [{"id": r["id"], "task": r["task"], "prompt": p} for r, p in zip(rows, prompts)]
    preds = generate_cached(items, d / "predictions.jsonl", model=model, gen=gen, budget=budget, desc="superni")
    post = superni.strip_prediction if postprocess == "first_paragraph" else (lambda s: s)
    metrics, per = superni.compute_metrics(rows, {k: post(v["prediction"]) for k, v in preds.items()})
    _write_scores(d / "scores.jsonl", per)
    ids = [r["id"] for r in rows]
    n_tasks = len({r["task"] for r in rows})
    fields = {"items": len(rows), "items_digest": superni.items_digest(ids), "tasks": n_tasks,
              "scope": "full" if (len(rows), superni.items_digest(ids)) == superni.OFFICIAL_ITEMS else "slice",
              "num_pos_examples": num_pos_examples, "prompt_format": "tk-instruct (ni_collator.py)",
              "max_source_length": max_source_length, **gen.decoding(), "postprocess": postprocess}
    tfields, textra = protocol.template_fields(template, model)
    proto = protocol.make("superni", {**fields, **tfields}, **textra, tokenizer=gen.tokenizer or model,
                          truncated_sources=sum(b[2] for b in built),
                          demonstrations_dropped=sum(min(num_pos_examples, len(r.get("positive_examples") or [])) - b[1]
                                                     for r, b in zip(rows, built)),
                          approximate=False)
    path = write_results(d, benchmark="superni", model=model, settings=settings, metrics=metrics, wall_time_s=timer(), tags=tags,
                         extra={"protocol": proto, "item_scores": {"file": "scores.jsonl", "unit": "instance", "id": "id",
                                                                    "values": ["rougeL", "exact_match"]},
                                "run": {"device": gen.device, "dtype": gen.dtype, "backend": gen.backend}})
    print(f"Super-NI {model} [{proto['label']}] ({metrics['n']} instances): rougeL {metrics['rougeL']:.2f}  "
          f"exact_match {metrics['exact_match']:.2f} -> {path}")
    return str(path)


def eval_lmentry(
    model: str,
    data: str | None = None,
    limit: int | None = None,
    tasks: list[str] | None = None,
    robustness_subsets: bool = True,
    template: str = "alpaca",
    truncate: bool = False,
    backend: str = "auto",
    max_new_tokens: int = 50,
    batch_size: int = 8,
    dtype: str = "auto",
    device: str = "auto",
    base_url: str | None = None,
    tokenizer: str | None = None,
    max_model_len: int | None = None,
    out_root: str = "runs/eval",
    tags: dict[str, Any] | None = None,
) -> str:
    """LMentry: 25 tasks zero-shot, official regex scorers; accuracy, 4 robustness aspects and the LMentry score.

    Args:
        model: Student to generate with.
        data: lmentry_tasks.json[.gz] (all 41 task files merged); default: the shared data's copy.
        limit: Examples per task (spread over the 3 templates); robustness is then approximate.
        tasks: Only these tasks (the score needs all 25 + the 16 subset files).
        robustness_subsets: Also run the 16 argument-content subset files (needed for robustness).
        template: alpaca | chat | raw.
        truncate: Cut predictions at the first newline and '.' (upstream does this for base LMs only).
        backend: auto (vllm on a GPU where installed, else hf) | hf | openai | vllm.
        max_new_tokens: Generation length (upstream predict.py: max_length 50).
        batch_size: Prompts per generation batch.
        dtype: Model weights dtype: auto (bf16 only where the device computes it natively) | float32 | bfloat16 | float16.
        device: auto (cuda when available) | cpu | cuda.
        base_url: OpenAI-compatible server for backend openai.
        tokenizer: The served model's tokenizer (a folder or hub id) when --model is a server's model name.
        max_model_len: The context window prompts must fit in (default: the model config's).
        out_root: Where runs go.
        tags: Free labels stored in results.json.
    """
    from evaluation import lmentry, protocol
    from evaluation.lmentry_scorers import CORE_TASKS
    from evaluation.predictions import Timer, generate_cached, prompt_budget, render, start_run, write_results
    from evaluation.superni import items_digest

    timer = Timer()
    data = data_file("lmentry/lmentry_tasks.json.gz", data)
    all_tasks = lmentry.load_tasks(data)
    names = list(tasks) if tasks else [*CORE_TASKS, *(lmentry.SUBSET_TASKS if robustness_subsets else [])]
    unknown = [t for t in names if t not in all_tasks]
    if unknown:
        raise TunaError(f"unknown LMentry tasks: {', '.join(unknown)}", field="tasks")
    gen = generation_settings(backend, template, max_new_tokens, batch_size, dtype, device, base_url, tokenizer=tokenizer, max_model_len=max_model_len)
    settings = {"benchmark": "lmentry", "model": model, "data": str(data), "limit": limit, "tasks": names, "truncate": truncate, **gen.hashed()}
    d = start_run(out_root, "lmentry", model, settings)
    items = []
    for t in names:
        for eid, ex in lmentry.select_examples(all_tasks[t], limit):
            items.append({"id": f"{t}/{eid}", "input": ex["input"]})
    budget = prompt_budget(model, gen)
    prompts = render([it["input"] for it in items], template, model, tokenizer=budget.tokenizer)
    for it, p in zip(items, prompts):
        it["prompt"] = p
    preds = generate_cached(items, d / "predictions.jsonl", model=model, gen=gen, budget=budget, desc="lmentry")
    metrics, per = lmentry.score_rows(all_tasks, preds, truncate=truncate)
    metrics["approximate"] = bool(limit) or not metrics["complete"]
    if metrics["approximate"]:
        metrics["note"] = ("limited or partial run: accuracies are over the evaluated examples only and robustness "
                           "is an approximation of the full-benchmark value")
    _write_scores(d / "scores.jsonl", per)
    full = not limit and metrics["complete"] and len(names) == len(CORE_TASKS) + len(lmentry.SUBSET_TASKS)
    fields = {"items": len(items), "items_digest": items_digest(it["id"] for it in items), "scope": "full" if full else "slice",
              "limit": limit, **gen.decoding(), "truncate": truncate, "aggregation": "lmentry analysis @ 463763d"}
    tfields, textra = protocol.template_fields(template, model)
    proto = protocol.make("lmentry", {**fields, **tfields}, **textra, approximate=metrics["approximate"])
    path = write_results(d, benchmark="lmentry", model=model, settings=settings, metrics=metrics, wall_time_s=timer(), tags=tags,
                         extra={"protocol": proto,
                                "item_scores": {"file": "scores.jsonl", "unit": "example", "id": "id", "values": ["score"],
                                                "strata": ["task", "template_id"]},
                                "run": {"device": gen.device, "dtype": gen.dtype, "backend": gen.backend}})
    print(f"LMentry {model} [{proto['label']}]: accuracy {metrics['accuracy']}  robustness {metrics['robustness']}  "
          f"LMentry score {metrics['lmentry_score']}{'  (approximate)' if metrics['approximate'] else ''} -> {path}")
    return str(path)


def eval_vicuna(
    model: str | None = None,
    answers: str | None = None,
    opponent: str = "gpt35",
    data: str | None = None,
    limit: int | None = None,
    orders: str = "single",
    judge_model: str = "gpt-4-0613",
    judge_backend: str = "openai",
    judge_base_url: str | None = None,
    judge_api_key_env: str = "OPENAI_API_KEY",
    judge_api_key_file: str | None = None,
    judge_concurrency: int = 4,
    judge_timeout: float = 120.0,
    judge_max_retries: int = 6,
    judge_unreachable_timeout: float = UNREACHABLE_TIMEOUT,
    judge_max_tokens: int | None = None,
    judge_grammar: str = "none",
    judge_mode: str = "sync",
    max_cost: float | None = None,
    price_per_1k_prompt: float = 0.0,
    price_per_1k_completion: float = 0.0,
    cache_dir: str | None = None,
    strict_parse: bool = False,
    template: str = "alpaca",
    backend: str = "auto",
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    batch_size: int = 8,
    dtype: str = "auto",
    device: str = "auto",
    base_url: str | None = None,
    tokenizer: str | None = None,
    max_model_len: int | None = None,
    out_root: str = "runs/eval",
    tags: dict[str, Any] | None = None,
) -> str:
    """Vicuna QA (80 questions): pairwise review with FastChat's original reviewer prompts (2023 protocol).

    Args:
        model: Student whose answers are generated (cached per settings).
        answers: Use this answers JSONL ({"question_id", "text"}) or run directory instead of generating.
        opponent: A model of FastChat's answer table (gpt35, bard, alpaca-13b, llama-13b, vicuna-13b, ...),
            an answers JSONL or another run directory.
        data: The vicuna_qa folder (question.jsonl, prompt.jsonl, reviewer.jsonl, old_eval_answers.jsonl.gz).
        limit: First n questions.
        orders: single (FastChat 2023: one review, the opponent as Assistant 1, the model as Assistant 2) | both
            (also the swapped review; the position-bias-controlled result is reported beside the single-order one).
        judge_model: The reviewer model, a pinned snapshot (FastChat called gpt-4, then gpt-4-0314, now retired).
        judge_backend: openai (any OpenAI-compatible server) | hf (a local model, for tests and demos).
        judge_base_url: Server URL for an OpenAI-compatible judge (e.g. a llama.cpp server).
        judge_api_key_env: Environment variable holding the judge's API key.
        judge_api_key_file: A file whose first line is the judge's API key (instead of judge_api_key_env).
        judge_grammar: none | score_grammar: force the review's first line to "s1 s2" (scores 1-10) by a GBNF
            grammar (servers that accept llama.cpp's `grammar` field; for weak local judges).
        judge_concurrency: Parallel judge requests.
        judge_timeout: Seconds per judge request.
        judge_max_retries: Retries per judge request (429/5xx/timeouts, exponential back-off).
        judge_unreachable_timeout: Stop when no connection to the judge has succeeded for this many seconds.
        judge_max_tokens: Override the reviewer's max_tokens (1024).
        judge_mode: sync | batch (OpenAI's Batch API at half the price; state in the run's batch/ folder, resumable).
        max_cost: Stop sending judge requests beyond this many dollars.
        price_per_1k_prompt: Judge price per 1k prompt tokens (for the ledger / budget).
        price_per_1k_completion: Judge price per 1k completion tokens.
        cache_dir: Judge reply cache (default <out_root>/judge_cache).
        strict_parse: Parse the first line exactly as eval_gpt_review.py (else lenient; see docs).
        template: alpaca | chat | raw.
        backend: auto (vllm on a GPU where installed, else hf) | hf | openai | vllm.
        max_new_tokens: Answer length (FastChat get_model_answer.py: 1024).
        temperature: Answer sampling temperature; 0 = greedy (FastChat sampled at 0.7; greedy answers are reproducible).
        batch_size: Prompts per generation batch.
        dtype: Model weights dtype: auto (bf16 only where the device computes it natively) | float32 | bfloat16 | float16.
        device: auto (cuda when available) | cpu | cuda.
        base_url: OpenAI-compatible server for the student (backend openai).
        tokenizer: The served model's tokenizer (a folder or hub id) when --model is a server's model name.
        max_model_len: The context window prompts must fit in (default: the model config's).
        out_root: Where runs go.
        tags: Free labels stored in results.json.
    """
    import json

    from evaluation import protocol, vicuna
    from evaluation.predictions import Timer, generate_cached, prompt_budget, render, settings_hash, start_run, write_results
    from tuna.records import atomic_write_json, atomic_write_text

    if orders not in vicuna.ORDERS:
        raise TunaError(f"orders must be single | both, got {orders!r}", field="orders")

    timer = Timer()
    data = data_file("vicuna_qa", data)
    questions = vicuna.load_questions(data)[:limit] if limit else vicuna.load_questions(data)
    reviewers = vicuna.load_reviewers(data)
    if answers:
        label, mine = vicuna.resolve_opponent(answers, data)
        model_ref = model or label
        ans_settings: dict[str, Any] = {"benchmark": "vicuna", "answers": str(answers)}
        ans_fields: dict[str, Any] = {"answers": "answers file (decoding not known)"}
        gen = None
    else:
        if not model:
            raise TunaError("give --model (to generate answers) or --answers", field="model")
        model_ref = model
        gen = generation_settings(backend, template, max_new_tokens, batch_size, dtype, device, base_url, temperature=temperature,
                   tokenizer=tokenizer, max_model_len=max_model_len)
        ans_settings = {"benchmark": "vicuna", "model": model, "limit": limit, **gen.hashed()}
        ans_fields = {"answers": "generated", **gen.decoding(), **protocol.template_fields(template, model)[0]}
    d = start_run(out_root, "vicuna", model_ref, ans_settings)
    if gen is not None:
        budget = prompt_budget(model, gen)  # type: ignore[arg-type]
        prompts = render([q["text"] for q in questions], template, model, tokenizer=budget.tokenizer)  # type: ignore[arg-type]
        items = [{"id": str(q["question_id"]), "question_id": q["question_id"], "prompt": p} for q, p in zip(questions, prompts)]
        rows = generate_cached(items, d / "predictions.jsonl", model=model, gen=gen, budget=budget, desc="vicuna answers")  # type: ignore[arg-type]
        mine = {int(k): v["prediction"] for k, v in rows.items()}
    opp_label, theirs = vicuna.resolve_opponent(opponent, data)
    judge_settings = {"opponent": opp_label, "opponent_ref": opponent, "judge_model": judge_model, "judge_backend": judge_backend,
                      "judge_base_url": judge_base_url, "strict_parse": strict_parse, "judge_max_tokens": judge_max_tokens,
                      **({"judge_grammar": judge_grammar} if judge_grammar != "none" else {}),
                      "questions": [q["question_id"] for q in questions], "reviewer_prompts": "fastchat/eval prompt.jsonl+reviewer.jsonl",
                      "orders": orders}
    jd = d / f"vs-{opp_label}-{settings_hash(judge_settings)}"
    jd.mkdir(parents=True, exist_ok=True)
    atomic_write_json(jd / "settings.json", judge_settings)
    qids = [int(q["question_id"]) for q in questions]
    opp_rows = [{"question_id": q, "text": theirs[q]} for q in qids if q in theirs]
    atomic_write_text(jd / "opponent_answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in opp_rows))
    reqs = vicuna.judge_requests(questions, mine, theirs, reviewers, orders=orders)
    from tuna.feedback.client import ChatRequest, JudgeClient

    client_kwargs: dict[str, Any] = dict(base_url=judge_base_url, api_key_env=judge_api_key_env, api_key_file=judge_api_key_file,
                                         cache_dir=cache_dir or str(Path(out_root) / "judge_cache"),
                                         concurrency=judge_concurrency, timeout=judge_timeout, max_retries=judge_max_retries,
                                         unreachable_timeout=judge_unreachable_timeout,
                                         price_per_1k_prompt=price_per_1k_prompt,
                                         price_per_1k_completion=price_per_1k_completion, max_cost=max_cost)
    if judge_backend != "openai":
        client_kwargs["backend"] = judge_backend
    if judge_grammar not in ("none", "score_grammar"):
        raise TunaError(f"judge_grammar must be none | score_grammar, got {judge_grammar!r}", field="judge_grammar")
    grammar = vicuna.SCORE_GRAMMAR if judge_grammar == "score_grammar" else None
    chat = [ChatRequest(messages=r["messages"], temperature=r["temperature"], max_tokens=judge_max_tokens or r["max_tokens"],
                        grammar=grammar) for r in reqs]
    if judge_mode == "batch":
        from tuna.feedback.config import JudgeConfig
        from tuna.feedback.reask import ask

        jcfg = JudgeConfig(model=judge_model, backend=judge_backend, base_url=judge_base_url, api_key_env=judge_api_key_env,
                           api_key_file=judge_api_key_file, max_retries=judge_max_retries, timeout=judge_timeout,
                           unreachable_timeout=judge_unreachable_timeout, max_cost=max_cost, price_per_1k_prompt=price_per_1k_prompt,
                           price_per_1k_completion=price_per_1k_completion, mode="batch")
        replies, _, judge_ledger = ask(jcfg, chat, cache_dir=client_kwargs["cache_dir"], state_dir=jd / "batch", desc="vicuna review",
                                       accept=lambda r, t: vicuna.parse_review(t, strict=strict_parse) is not None)
    else:
        client = JudgeClient(judge_model, **client_kwargs)
        with client:  # closes the reply cache
            replies = client.complete_many(chat, desc="vicuna review")
        judge_ledger = client.ledger
    judgments = []
    for r, rep in zip(reqs, replies):
        scores = vicuna.parse_review(rep.text, strict=strict_parse) if rep.error is None else None
        err = rep.error or (None if scores is not None else "unparseable first line")
        judgments.append({"question_id": r["question_id"], "category": r["category"], "order": r["order"], "reviewer_id": r["reviewer_id"],
                          "scores": list(scores) if scores else None, "error": err, "review": rep.text, "cached": rep.cached})
    atomic_write_text(jd / "judgments.jsonl", "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
    metrics = vicuna.combine(judgments, orders=orders)
    metrics["judge_ledger"] = judge_ledger
    settings = {**ans_settings, **judge_settings}
    fields = {"questions": len(qids), "questions_digest": protocol.digest(qids), "opponent": opp_label,
              "opponent_digest": protocol.digest(opp_rows), "judge_model": judge_model,
              "judge_grammar": judge_grammar, "judge_max_tokens": judge_max_tokens,
              "reviewer_prompts_digest": protocol.digest(reviewers), "orders": orders,
              "parse": "strict" if strict_parse else "lenient", **ans_fields}
    proto = protocol.make("vicuna", fields, approximate=False,
                          judge={"model": judge_model, "backend": judge_backend, "base_url": judge_base_url,
                                 "snapshot_pinned": judge_backend != "openai" or bool(re.search(r"-\d{4}(-\d{2}-\d{2})?$", judge_model))},
                          opponent_answers="opponent_answers.jsonl")
    item_scores = {"inline": "metrics.per_question", "unit": "question", "id": "question_id", "values": ["result"]}
    path = write_results(jd, benchmark="vicuna", model=model_ref, settings=settings, metrics=metrics, wall_time_s=timer(),
                         tags={**(tags or {}), "opponent": opp_label},
                         extra={"protocol": proto, "item_scores": item_scores,
                                **({"run": {"device": gen.device, "dtype": gen.dtype, "backend": gen.backend}} if gen else {})})
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
    """Collect results.json files into the paper's tables (Markdown + LaTeX, with 95 % bootstrap intervals and n) and
    PNG plots under <out>/<name>/. Columns are keyed by evaluation protocol: runs with different protocols never
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


COMMANDS = {"eval": {"superni": eval_superni, "lmentry": eval_lmentry, "vicuna": eval_vicuna}, "report": report}
