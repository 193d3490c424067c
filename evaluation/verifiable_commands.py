"""``tuna verifiable-data``, ``tuna rank``, ``tuna eval verifiable`` and ``tuna eval pairs`` (see evaluation.verifiable)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from evaluation import protocol
from evaluation.verifiable import SplitSizes
from tuna.errors import EmptyOutputError, TunaError
from tuna.hashing import file_hash
from tuna.paths import data_file


def verifiable_data(
    out_dir: str = "runs/verifiable/data",
    superni_data: str | None = None,
    lmentry_data: str | None = None,
    sizes: SplitSizes | None = None,
    seed: int = 0,
) -> str:
    """Disjoint train / val / held-out instruction files from LMentry and the Super-NI slice, for verifiable feedback.

    Args:
        out_dir: Writes train.jsonl, val.jsonl and heldout.jsonl here.
        superni_data: Super-NI instances with inputs (default: the shared 8-task slice).
        lmentry_data: lmentry_tasks.json.gz (default: the shared copy).
        sizes: Items per task in each split (--sizes.lmentry_eval_per_task 12 ...; see SplitSizes).
        seed: Which LMentry examples outside the evaluation slice are drawn.
    """
    from evaluation.verifiable import make_splits
    from tuna.records import write_records

    splits = make_splits(superni_data=superni_data or data_file("superni/superni_test_slice.jsonl.gz", field="superni_data"),
                         lmentry_data=lmentry_data or data_file("lmentry/lmentry_tasks.json.gz", field="lmentry_data"),
                         sizes=sizes, seed=seed)
    out = Path(out_dir)
    for name, recs in splits.items():
        write_records(out / f"{name}.jsonl", recs)
    print("verifiable splits: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f" -> {out}/")
    return str(out)


def rank(input: str, out: str, by: str = "task", limit: int | None = None, offset: int = 0, flip: float = 0.0,
         seed: int = 0) -> str:
    """Rank candidate sets by a verifier (ranked sets with ranking.by = verifier); resumable.

    Args:
        input: Candidate sets (tuna records JSONL), e.g. from `tuna sample` on `tuna verifiable-data` instructions.
        out: Output JSONL of ranked sets; ids already there are skipped.
        by: task (the benchmark's own per-item scorer) | rouge_l (ROUGE-L F against the references or the gold response).
        limit: Use at most this many records.
        offset: Skip this many records first.
        flip: Degrade the verifier on purpose: any two candidates it orders swap with this probability (0 to 0.5;
            0.5 is a random ranking; evaluation.verifiable.degrade_scores).
        seed: Seeds the degradation (with each record's id).
    """
    from evaluation.verifiable import VERIFIERS, count_pairs, rank_by_verifier, ranker_agreement
    from tuna.importers import load_inputs
    from tuna.records import JsonlAppender

    if by not in VERIFIERS:
        raise TunaError(f"unknown verifier {by!r} ({' | '.join(VERIFIERS)})", field="by")
    records = load_inputs(input, fmt="tuna", limit=limit, offset=offset, min_candidates=2)
    t0 = time.monotonic()
    ordered = tied = 0
    with JsonlAppender(out) as app:
        todo = [r for r in records if r.id not in app.done_ids]
        ranked_now = []
        for r in todo:
            ranked = rank_by_verifier(r, by, flip=flip, seed=seed)  # type: ignore[arg-type]
            o, t = count_pairs([c.score or 0.0 for c in ranked.candidates])
            ordered, tied = ordered + o, tied + t
            app.write(ranked)
            ranked_now.append(ranked)
        if not app.done_ids:  # every set to do is written (or raises naming its record): only an empty slice gets here
            raise EmptyOutputError(f"rank ({by})", out=out, todo=len(todo), noun="candidate sets", done="ranked", reasons={})
    share = f"{100 * tied / (ordered + tied):.1f} %" if ordered + tied else "-"
    agreement = ""
    if flip:
        a = ranker_agreement(ranked_now)
        agreement = f", agreement with the verifier {a['agree']}/{a['pairs']} pairs" if a["pairs"] else ""
    print(f"rank ({by}{f', flip {flip:g}' if flip else ''}): {len(todo)} ranked ({len(records) - len(todo)} already done), "
          f"{ordered} ordered and {tied} tied candidate pairs ({share} tied){agreement} in {time.monotonic() - t0:.1f} s -> {out}")
    return out


def eval_verifiable(
    model: str,
    data: str,
    by: str = "task",
    limit: int | None = None,
    template: str = "alpaca",
    backend: str = "auto",
    max_new_tokens: int = 48,
    batch_size: int = 16,
    dtype: str = "auto",
    device: str = "auto",
    base_url: str | None = None,
    out_root: str = "runs/eval",
    tags: dict[str, Any] | None = None,
    split: str | None = None,
) -> str:
    """Greedy answers on a verifiable split (e.g. heldout.jsonl), scored by each item's own verifier.

    Args:
        model: The model to generate with.
        data: Instruction records from `tuna verifiable-data`.
        by: task | rouge_l (see `tuna rank`).
        limit: First n records.
        template: alpaca | chat | raw.
        backend: auto (vLLM on a GPU where installed, else HF) | hf | openai | vllm.
        max_new_tokens: Answer length.
        batch_size: Prompts per generation batch.
        dtype: auto | float32 | bfloat16 | float16.
        device: auto | cpu | cuda.
        base_url: OpenAI-compatible server (backend openai).
        out_root: Where runs go.
        tags: Free labels stored in results.json.
        split: The split's name (heldout | val), recorded in the protocol and the column label.
    """
    from evaluation.predictions import Timer, generate_cached, generation_settings, render, start_run, write_results
    from evaluation.verifiable import item_scores, summarise_items
    from tuna.records import atomic_write_text, read_records

    timer = Timer()
    records = read_records(data)[:limit] if limit else read_records(data)
    gen = generation_settings(backend, template, max_new_tokens, batch_size, dtype, device, base_url)
    settings = {"benchmark": "verifiable", "model": model, "data": str(data), "data_hash": file_hash(data), "n": len(records),
                "by": by, **gen.hashed()}
    d = start_run(out_root, "verifiable", model, settings)
    prompts = render([r.instruction for r in records], template, model)
    items = [{"id": r.id, "prompt": p} for r, p in zip(records, prompts)]
    preds = generate_cached(items, d / "predictions.jsonl", model=model, gen=gen, desc="verifiable")
    rows = item_scores(records, {k: v["prediction"] for k, v in preds.items()}, by)  # type: ignore[arg-type]
    atomic_write_text(d / "scores.jsonl", "".join(json.dumps(x) + "\n" for x in rows))
    metrics = summarise_items(rows)
    fields = {"items": len(records), "data": settings["data_hash"], "by": by, "max_new_tokens": max_new_tokens,
              "decoding": "greedy", **protocol.template_fields(template, model)[0], **({"split": split} if split else {})}
    path = write_results(d, benchmark="verifiable", model=model, settings=settings, metrics=metrics, wall_time_s=timer(), tags=tags,
                         extra={"protocol": protocol.make("verifiable", fields),
                                "item_scores": {"file": "scores.jsonl", "unit": "item", "id": "id", "values": ["score"]}})
    per = ", ".join(f"{k} {v['score']:.2f} (n={v['n']})" for k, v in metrics["per_benchmark"].items())
    print(f"verifiable {model}: {metrics['score']:.2f} over {metrics['n']} items ({per}) -> {path}")
    return str(path)


def eval_pairs(
    model: str,
    data: str,
    limit: int | None = None,
    template: str = "alpaca",
    max_length: int = 512,
    batch_size: int = 4,
    dtype: str = "float32",
    device: str = "auto",
    logprob_mode: str = "chunked",
    out_root: str = "runs/eval",
    tags: dict[str, Any] | None = None,
    split: str | None = None,
) -> str:
    """Held-out pair accuracy: how often the model's likelihood orders a ranked set's candidates as the ranking does.

    The share of a ranked set's untied candidate pairs whose order by the model's length-normalised log-likelihood
    matches the ranking (the most direct measure that a ranking was learned).

    Args:
        model: The model whose log-likelihoods are compared.
        data: Ranked sets the model never trained on (e.g. `tuna rank` on held-out samples).
        limit: First n records.
        template: The prompt template training used (alpaca | chat | raw).
        max_length: Token limit per prompt + response (as in training).
        batch_size: Records per forward pass.
        dtype: float32 (default: exact comparisons) | auto | bfloat16.
        device: auto | cpu | cuda.
        logprob_mode: chunked | full | packed | prefix_shared (all give the same scores; tested).
        out_root: Where runs go.
        tags: Free labels stored in results.json.
        split: The split's name (heldout | val), recorded in the protocol and the column label.
    """
    from evaluation.predictions import Timer, start_run, write_results
    from evaluation.verifiable import model_pair_outcomes, summarise_pairs
    from tuna.models import load_model, load_tokenizer
    from tuna.precision import device_type, resolve_dtype
    from tuna.records import atomic_write_text, read_records

    timer = Timer()
    records = read_records(data, kind="ranked")
    records = records[:limit] if limit else records
    device = device_type(device)
    dtype = resolve_dtype(dtype, device)
    settings = {"benchmark": "pairs", "model": model, "data": str(data), "data_hash": file_hash(data), "n": len(records),
                "template": template, "max_length": max_length, "dtype": dtype}
    d = start_run(out_root, "pairs", model, settings)
    tok = load_tokenizer(model)
    lm = load_model(model, dtype=dtype, tokenizer=tok).to(device)
    rows = model_pair_outcomes(lm, tok, records, template=template, max_length=max_length, batch_size=batch_size,
                               logprob_mode=logprob_mode)
    atomic_write_text(d / "scores.jsonl", "".join(json.dumps(x) + "\n" for x in rows))
    metrics = summarise_pairs(rows)
    fields = {"sets": len(records), "data": settings["data_hash"], "max_length": max_length,
              **protocol.template_fields(template, model)[0], **({"split": split} if split else {})}
    path = write_results(d, benchmark="pairs", model=model, settings=settings, metrics=metrics, wall_time_s=timer(), tags=tags,
                         extra={"protocol": protocol.make("pairs", fields),
                                "item_scores": {"file": "scores.jsonl", "unit": "ranked set", "id": "id", "values": ["right", "pairs"]}})
    print(f"pair accuracy {model}: {metrics['pair_accuracy']} over {metrics['pairs']} pairs in {metrics['n']} sets "
          f"({metrics['tied_pairs']} tied pairs not scored) -> {path}")
    return str(path)


def evidence_export(runs: str = "runs/verifiable", out: str = "results/verifiable", by: str = "task") -> str:
    """Export what every number of a verifiable sweep needs, small enough to commit.

    Per run and split: the items'
    scores, predictions and pair outcomes (gzipped JSONL), the items' metadata, runs.json (arms, seeds, chosen
    learning rates, wall times, versions, the ranker's measured agreement) and the constant-answer control. Then
    `tuna report --evidence <out>` rebuilds every table from these files alone.

    Args:
        runs: The sweep's run folder (holds sweep.json).
        out: Where items/, runs.json, selection.json and constant.json go.
        by: The verifier the constant-answer control is scored with (task | rouge_l).
    """
    from evaluation.evidence import export_constant, export_sweep

    data = export_sweep(runs, out)
    splits = sorted(Path(runs, "shared").glob("verifiable-*/train.jsonl"))
    if len(splits) != 1:
        raise TunaError(f"expected one verifiable split folder under {runs}/shared, found {len(splits)}", path=runs)
    export_constant(splits[0].parent, out, by=by)
    n_items = sum(s["items"] for r in data["runs"] for s in r["splits"].values())
    print(f"evidence: {len(data['runs'])} runs, {n_items} item rows -> {out}/items, {out}/runs.json")
    return out


COMMANDS = {"verifiable-data": verifiable_data, "rank": rank, "evidence-export": evidence_export,
            "eval": {"verifiable": eval_verifiable, "pairs": eval_pairs}}
