"""``tuna verifiable-data``, ``tuna rank``, ``tuna eval verifiable`` and ``tuna eval pairs`` (see evaluation.verifiable)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluation import protocol
from evaluation.config import BenchmarkJob, EvalJob, RuntimeConfig, greedy
from evaluation.flow import EvalRun
from evaluation.verifiable import SplitSizes
from tuna.errors import EmptyOutputError, TunaError
from tuna.generation import GenerationConfig
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


@dataclass(kw_only=True)
class VerifiableJob(EvalJob):
    """Greedy answers on a verifiable split (e.g. heldout.jsonl), scored by each item's own verifier.

    --limit takes the first n records."""

    data: str
    """Instruction records from `tuna verifiable-data`."""
    by: str = "task"
    """task | rouge_l (see `tuna rank`)."""
    split: str | None = None
    """The split's name (heldout | val), recorded in the protocol and the column label."""
    generation: GenerationConfig = field(default_factory=lambda: greedy(48))
    """Decoding of the answers."""
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(batch_size=16))
    """Where the model runs."""


def run_verifiable(job: VerifiableJob) -> str:
    from evaluation.verifiable import item_scores, summarise_items
    from tuna.records import read_records

    run = EvalRun(job, "verifiable")
    records = read_records(job.data)[:job.limit] if job.limit else read_records(job.data)
    run.start({"benchmark": "verifiable", "model": run.model, "data": str(job.data), "data_hash": file_hash(job.data),
               "n": len(records), "by": job.by})
    # the prompts are short instructions: no tokenizer is loaded to check that they fit
    prompts = run.render([r.instruction for r in records], budget=False)
    preds = run.generate([{"id": r.id, "prompt": p} for r, p in zip(records, prompts)], "verifiable", budget=False)
    rows = item_scores(records, {k: v["prediction"] for k, v in preds.items()}, job.by)  # type: ignore[arg-type]
    metrics = summarise_items(rows)
    fields = {"items": len(records), "data": run.settings["data_hash"], "by": job.by, "max_new_tokens": job.generation.max_new_tokens,
              "decoding": run.protocol_decoding()["decoding"], **protocol.template_fields(job.template, job.model)[0],
              **({"split": job.split} if job.split else {})}
    path = run.finish(metrics, {"protocol": protocol.make("verifiable", fields),
                                "item_scores": {"file": "scores.jsonl", "unit": "item", "id": "id", "values": ["score"]}},
                      scores=rows)
    per = ", ".join(f"{k} {v['score']:.2f} (n={v['n']})" for k, v in metrics["per_benchmark"].items())
    print(f"verifiable {job.model}: {metrics['score']:.2f} over {metrics['n']} items ({per}) -> {path}")
    return str(path)


@dataclass(kw_only=True)
class PairsJob(BenchmarkJob):
    """Held-out pair accuracy: how often the model's likelihood orders a ranked set's candidates as the ranking does.

    The share of a ranked set's untied candidate pairs whose order by the model's length-normalised log-likelihood
    matches the ranking (the most direct measure that a ranking was learned).
    --template: the one training used; --limit: the first n records; --runtime.batch_size: records per forward pass."""

    data: str
    """Ranked sets the model never trained on (e.g. `tuna rank` on held-out samples)."""
    max_length: int = 512
    """Token limit per prompt + response (as in training)."""
    logprob_mode: str = "chunked"
    """chunked | full | packed | prefix_shared (all give the same scores; tested)."""
    split: str | None = None
    """The split's name (heldout | val), recorded in the protocol and the column label."""
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(backend="hf", dtype="float32", batch_size=4))
    """Where the model runs (a forward pass in process: backend hf; dtype float32 by default, for exact comparisons)."""


def run_pairs(job: PairsJob) -> str:
    from evaluation.verifiable import model_pair_outcomes, summarise_pairs
    from tuna.models import load_model, load_tokenizer
    from tuna.records import read_records

    run = EvalRun(job, "pairs")
    records = read_records(job.data, kind="ranked")
    records = records[:job.limit] if job.limit else records
    run.start({"benchmark": "pairs", "model": run.model, "data": str(job.data), "data_hash": file_hash(job.data),
               "n": len(records), "template": job.template, "max_length": job.max_length, "dtype": run.runtime.dtype},
              generates=False)
    tok = load_tokenizer(run.model)
    lm = load_model(run.model, dtype=run.runtime.dtype, tokenizer=tok).to(run.runtime.device)
    rows = model_pair_outcomes(lm, tok, records, template=job.template, max_length=job.max_length,
                               batch_size=run.runtime.batch_size, logprob_mode=job.logprob_mode)
    metrics = summarise_pairs(rows)
    fields = {"sets": len(records), "data": run.settings["data_hash"], "max_length": job.max_length,
              **protocol.template_fields(job.template, job.model)[0], **({"split": job.split} if job.split else {})}
    path = run.finish(metrics, {"protocol": protocol.make("pairs", fields),
                                "item_scores": {"file": "scores.jsonl", "unit": "ranked set", "id": "id", "values": ["right", "pairs"]}},
                      scores=rows)
    print(f"pair accuracy {job.model}: {metrics['pair_accuracy']} over {metrics['pairs']} pairs in {metrics['n']} sets "
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
            "eval": {"verifiable": VerifiableJob, "pairs": PairsJob}}
RUNNERS = {VerifiableJob: run_verifiable, PairsJob: run_pairs}
