"""``tuna sample``, ``tuna score``, ``tuna judge`` and ``tuna reference``: candidate sets, teacher ranking, judge
ranking, and the reference log-probs of the DPO-family objectives.

Every command appends to its output with :class:`tuna.records.JsonlAppender` (one fsync'ed line per record)
and skips ids already there, so a killed run resumes where it stopped and never duplicates a record.
torch and transformers are imported only inside the commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.importers import load_inputs
from tuna.records import JsonlAppender, Record, atomic_write_json

log = logging.getLogger(__name__)

ALPACA_STOP = ["\n### Instruction", "\n### Input", "\n### Response"]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _quiet_http_logs() -> None:
    # One INFO line per request from the HTTP client drowns the progress bar.
    for name in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _set_threads() -> None:
    import torch

    n = int(os.environ.get("TUNA_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------- sample


def sample(
    input: str,
    out: str,
    model: str = "gemma3-270m",
    backend: str = "hf",
    input_format: str = "auto",
    limit: int | None = None,
    offset: int = 0,
    template: str = "alpaca",
    system_prompt: str | None = None,
    n: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 50,
    max_new_tokens: int = 256,
    seed: int = 0,
    logprobs: bool = True,
    stop: list[str] | None = None,
    dedup: bool = True,
    rouge_threshold: float = 0.8,
    temperature_increment: float = 0.1,
    max_trials: int = 3,
    chunk_size: int = 8,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    api_key_file: str | None = None,
    mode: str = "completions",
    concurrency: int = 4,
    n_ctx: int = 2048,
) -> str:
    """Sample N candidate responses per instruction (candidate sets, ranking null).

    Args:
        input: Tuna records (JSONL) or Alpaca JSON/JSONL.
        out: Output JSONL; existing ids are skipped (resume).
        model: Model name/path (hf/vllm) or the served model name (openai).
        backend: hf | openai | vllm | llamacpp (a local llama.cpp server for an embedded name or .gguf; no log-probs).
        input_format: auto | tuna | alpaca.
        limit: Use at most this many input records.
        offset: Skip this many input records first.
        template: Prompt template: alpaca | chat | raw.
        system_prompt: System message for template chat.
        n: Candidates per instruction.
        temperature: Sampling temperature (0 = greedy).
        top_p: Nucleus sampling.
        top_k: Top-k sampling, 0 = off (50: Hugging Face generate's default, which the released sampler used; not sent
            to OpenAI-compatible servers).
        max_new_tokens: Response length limit.
        seed: Base seed (each chunk uses seed + its first input index).
        logprobs: Store per-token log-probs of the sampled tokens (needed by `tuna score --method sampling`).
        stop: Stop strings (default for template alpaca: a new "### Instruction/Input/Response" header).
        dedup: Resample sets with a pair of ROUGE-L >= rouge_threshold at temperature + increment (paper §5.1).
        rouge_threshold: ROUGE-L F1 threshold for near-duplicates.
        temperature_increment: Temperature added per resampling trial.
        max_trials: Samplings per set in all, the first included.
        chunk_size: Records per chunk; a kill loses at most the chunk in flight.
        batch_size: Prompts per generate call (hf).
        device: auto | cpu | cuda (hf; auto: cuda when available).
        dtype: Weights dtype for hf/vllm: auto | float32 | bfloat16 | float16 (auto: bf16 only where the device computes it natively).
        base_url: OpenAI-compatible server URL (openai), e.g. http://127.0.0.1:8000/v1.
        api_key_env: Environment variable holding the API key (never logged).
        api_key_file: A file whose first line is the API key (instead of api_key_env; never logged or written).
        mode: completions | chat (openai).
        concurrency: Parallel requests (openai).
        n_ctx: Context size of the local llama.cpp server (llamacpp).
    """
    from tuna.feedback.dedup import set_diversity
    from tuna.feedback.generators import SamplingParams, make_generator, with_seed
    from tuna.prompts import render_prompt
    from tuna.records import Candidate

    _quiet_http_logs()
    records = load_inputs(input, fmt=input_format, limit=limit, offset=offset)
    index = {r.id: i for i, r in enumerate(records)}
    if stop is None and template == "alpaca":
        stop = ALPACA_STOP
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(JsonlAppender(out))
        todo = [r for r in records if r.id not in app.done_ids]
        log.info("sample: %d records, %d already in %s, %d to do", len(records), len(records) - len(todo), out, len(todo))
        if not todo:
            return out
        if backend == "hf":
            _set_threads()
            gen = make_generator("hf", model, device=device, dtype=dtype, batch_size=batch_size)
        elif backend == "openai":
            gen = make_generator("openai", model, base_url=base_url, api_key_env=api_key_env, api_key_file=api_key_file,
                                 mode=mode, concurrency=concurrency)
        elif backend == "llamacpp":
            if logprobs:
                raise TunaError("backend llamacpp samples without token log-probs (llama-cpp-python sorts the whole vocabulary in "
                                "Python for each token's log-prob: far too slow for a 262k vocabulary); sample with "
                                "--logprobs false and rank with `tuna score --method forced --model <the same model>`",
                                field="logprobs")
            from tuna.feedback.server import LlamaCppServer

            # llama.cpp decodes a GGUF on the CPU several times faster than transformers where bf16 is not native.
            server = stack.enter_context(LlamaCppServer(model, n_ctx=n_ctx, seed=seed))
            gen = make_generator("openai", server.model, base_url=server.base_url, mode="completions", concurrency=1,
                                 send_top_k=True)
            gen.name = model
        else:
            gen = make_generator(backend, model, dtype=dtype)
        tok = getattr(gen, "tokenizer", None)
        if template == "chat" and tok is None:
            from tuna.models import load_tokenizer

            tok = load_tokenizer(model)
        base = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed,
                              logprobs=logprobs, stop=stop)
        t0, n_tok, n_done = time.monotonic(), 0, 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sample", unit="rec", disable=os.environ.get("TUNA_PROGRESS", "1") == "0")
        for chunk in _chunks(todo, chunk_size):
            prompts = [render_prompt(r.instruction, r.input, template=template, tokenizer=tok, system_prompt=system_prompt,
                                     prompt=r.prompt) for r in chunk]
            chunk_seed = seed + index[chunk[0].id]
            best: list[tuple[float, float, list, int, float]] = [(float("inf"), 1.0, [], 0, temperature)] * len(chunk)
            need = list(range(len(chunk)))
            for trial in range(max_trials if dedup else 1):
                temp = temperature + trial * temperature_increment
                res = gen.generate([prompts[i] for i in need], with_seed(base, chunk_seed + 1000 * trial, temp))
                again = []
                for i, gens in zip(need, res):
                    n_tok += sum(g.num_tokens for g in gens)
                    mean_r, max_r = set_diversity([g.text for g in gens])
                    if mean_r < best[i][0] or not best[i][2]:
                        best[i] = (mean_r, max_r, gens, trial + 1, temp)
                    else:
                        best[i] = (*best[i][:3], trial + 1, best[i][4])
                    if max_r >= rouge_threshold:
                        again.append(i)
                need = again
                if not need or temperature <= 0:  # greedy sets cannot be diversified by temperature
                    break
            for rec, (mean_r, max_r, gens, trials, temp) in zip(chunk, best):
                cands = [Candidate(text=g.text, token_logprobs=g.token_logprobs, source=gen.name) for g in gens]
                prov = dict(rec.provenance)
                prov["sampler"] = {"model": gen.name, "backend": backend, "template": template, "n": n, "temperature": temp,
                                   "top_p": top_p, "top_k": top_k if backend != "openai" else None,
                                   "max_new_tokens": max_new_tokens, "seed": chunk_seed,
                                   "finish_reasons": [g.finish_reason for g in gens], "num_tokens": [g.num_tokens for g in gens]}
                if dedup:
                    prov["rouge"] = mean_r  # the released code's field: mean pairwise ROUGE-L of the kept set
                    prov["rouge_max"] = max_r
                    prov["trials"] = trials
                app.write(rec.model_copy(update={"candidates": cands, "ranking": None, "provenance": prov}))
            n_done += len(chunk)
            bar.update(len(chunk))
        bar.close()
        dt = time.monotonic() - t0
        print(f"sampled {n_done} records ({n_done * n} candidates, {n_tok} tokens incl. resamples) in {dt:.1f} s: "
              f"{n_tok / dt:.1f} tok/s, {dt / max(n_done, 1):.2f} s/record -> {out}")
    return out


# ----------------------------------------------------------------------------------------------- score


def score(
    input: str,
    out: str,
    method: str = "sampling",
    beta: float = 1.0,
    model: str | None = None,
    template: str = "alpaca",
    system_prompt: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    batch_size: int = 8,
    chunk_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    autocast_bf16: bool = False,
    max_length: int = 1024,
) -> str:
    """Rank candidate sets by the teacher's length-normalised log-likelihood sum(logp)/len**beta.

    Args:
        input: Candidate sets (tuna records JSONL), e.g. from `tuna sample`.
        out: Output JSONL of ranked sets; existing ids are skipped (resume).
        method: sampling (use the candidates' own token_logprobs) | forced (teacher-force under `model`).
        beta: Length-penalty exponent (1.0 = mean token log-prob, as the paper's avg_token_prob).
        model: The teacher for method forced (name or path); a label for method sampling.
        template: Prompt template for method forced: alpaca | chat | raw.
        system_prompt: System message for template chat.
        limit: Use at most this many records.
        offset: Skip this many records first.
        batch_size: Sequences per forward pass (forced).
        chunk_size: Records per chunk written together (forced).
        device: auto | cpu | cuda (forced).
        dtype: Weights dtype (forced): auto | float32 | bfloat16 | float16.
        autocast_bf16: bf16 autocast for the forward pass (forced).
        max_length: Longest prompt+response in tokens (the prompt's head is cut first).
    """
    from tuna.feedback.scoring import ForcedScorer, score_sampling

    if method not in ("sampling", "forced"):
        raise TunaError(f"unknown method {method!r} (sampling | forced)", field="method")
    records = load_inputs(input, fmt="tuna", limit=limit, offset=offset)
    t0 = time.monotonic()
    with JsonlAppender(out) as app:
        todo = [r for r in records if r.id not in app.done_ids]
        if method == "sampling":
            for r in todo:
                app.write(score_sampling(r, beta=beta, model=model))
        elif todo:
            if not model:
                raise TunaError("method forced needs a teacher model", field="model")
            _set_threads()
            from tuna.models import load_model, load_tokenizer

            tok = load_tokenizer(model)
            from tuna.precision import device_type, resolve_dtype

            device = device_type(device)
            lm = load_model(model, dtype=resolve_dtype(dtype, device), tokenizer=tok).to(device).eval()
            scorer = ForcedScorer(lm, tok, template=template, system_prompt=system_prompt, batch_size=batch_size,
                                  autocast_bf16=autocast_bf16, device=device, max_length=max_length)
            for chunk in _chunks(todo, chunk_size):
                for r in scorer.score(chunk, beta=beta, model_name=model):
                    app.write(r)
    dt = time.monotonic() - t0
    print(f"scored {len(todo)} records ({len(records) - len(todo)} already done) by {method} in {dt:.1f} s -> {out}")
    return out


# ----------------------------------------------------------------------------------------------- reference


def reference(
    input: str,
    out: str,
    model: str,
    template: str = "alpaca",
    system_prompt: str | None = None,
    max_length: int = 512,
    min_response_tokens: int = 8,
    overlong: str = "truncate",
    logprob_mode: str = "auto",
    batch_size: int = 4,
    chunk_size: int = 32,
    device: str = "auto",
    dtype: str = "float32",
    autocast_bf16: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> str:
    """Score every candidate of ranked sets under a frozen reference model, once, for loss.objective dpo | ipo.

    Writes the ranked sets with each candidate's ref_logprob (summed over the response tokens training scores, EOS
    included), ref_tokens and ref_model. Give the data settings training uses (template, max_length, ...): the
    candidates are tokenised by the training data module, and training checks the token counts.

    Args:
        input: Ranked sets (tuna records JSONL).
        out: Output JSONL; existing ids are skipped (resume).
        model: The reference model (usually the model the stage starts from), name or path.
        template: As the training's data.template: alpaca | chat | raw.
        system_prompt: As the training's data.system_prompt.
        max_length: As the training's data.max_length.
        min_response_tokens: As the training's data.min_response_tokens.
        overlong: As the training's data.overlong: truncate | error.
        logprob_mode: auto | full | chunked | packed | prefix_shared (as model.logprob_mode; all give the same sums).
        batch_size: Records per forward pass (each with all its candidates).
        chunk_size: Records written together; a kill loses at most the chunk in flight.
        device: auto | cpu | cuda.
        dtype: Weights dtype: float32 (as training's default model.dtype) | bfloat16 | float16 | auto.
        autocast_bf16: bf16 autocast for the forward pass (as training with trainer.precision bf16-mixed).
        limit: Use at most this many records.
        offset: Skip this many records first.
    """
    import typing

    import torch
    from tqdm.auto import tqdm

    from tuna.config import DataConfig, LogprobMode
    from tuna.feedback.reference import reference_logprobs, with_reference
    from tuna.models import load_model, load_tokenizer
    from tuna.precision import device_type, resolve_dtype

    modes = typing.get_args(LogprobMode)
    if logprob_mode not in modes:
        raise TunaError(f"unknown logprob_mode {logprob_mode!r} ({' | '.join(modes)})", field="logprob_mode")
    if overlong not in ("truncate", "error"):
        raise TunaError(f"overlong must be truncate | error, got {overlong!r}", field="overlong")
    data = DataConfig(template=template, system_prompt=system_prompt, max_length=max_length,  # type: ignore[arg-type]
                      min_response_tokens=min_response_tokens, overlong=overlong)  # type: ignore[arg-type]
    records = load_inputs(input, fmt="tuna", limit=limit, offset=offset, kind="ranked")
    t0 = time.monotonic()
    with JsonlAppender(out) as app:
        todo = [r for r in records if r.id not in app.done_ids]
        log.info("reference: %d records, %d already in %s, %d to do", len(records), len(records) - len(todo), out, len(todo))
        if todo:
            _set_threads()
            device = device_type(device)
            tok = load_tokenizer(model)
            lm = load_model(model, dtype=resolve_dtype(dtype, device), tokenizer=tok).to(device).eval()
            bar = tqdm(total=len(todo), desc="reference", unit="rec", disable=os.environ.get("TUNA_PROGRESS", "1") == "0")
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast_bf16):
                for chunk in _chunks(todo, chunk_size):
                    values = reference_logprobs(lm, tok, chunk, data, batch_size=batch_size, logprob_mode=logprob_mode,
                                                device=device, source=input)
                    for rec, v in zip(chunk, values, strict=True):
                        app.write(with_reference(rec, v, model))
                    bar.update(len(chunk))
            bar.close()
    dt = time.monotonic() - t0
    print(f"reference log-probs of {len(todo)} records ({len(records) - len(todo)} already done) under {model} "
          f"in {dt:.1f} s -> {out}")
    return out


# ----------------------------------------------------------------------------------------------- judge


def _failed_path(out: str) -> Path:
    p = Path(out)
    name = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(name + ".failed.jsonl")


def judge(
    input: str,
    out: str,
    model: str = "smollm2-135m-instruct",
    backend: str = "llamacpp",
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    api_key_file: str | None = None,
    template: str | None = None,
    instruction_format: str = "alpaca",
    system_prompt: str | None = "You are a professional and experienced data annotator.",
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 2048,
    parser: str = "robust",
    request_seed: bool | None = None,
    reference: str = "drop",
    missing: str = "last",
    shuffles: int = 0,
    fallback_scores: bool = False,
    assistant_prefix: str = "",
    constrain: str = "none",
    seed: int = 0,
    limit: int | None = None,
    offset: int = 0,
    concurrency: int = 4,
    max_retries: int = 6,
    timeout: float = 120.0,
    cache_dir: str | None = None,
    max_cost: float | None = None,
    price_per_1k_prompt: float = 0.0,
    price_per_1k_completion: float = 0.0,
    n_ctx: int = 4096,
    summary: str | None = None,
) -> str:
    """Rank candidate sets with an LLM judge (the paper's contextual ranking prompt by default).

    Args:
        input: Candidate sets (tuna records JSONL).
        out: Output JSONL of ranked sets; existing ids are skipped; failures go to <out>.failed.jsonl.
        model: Judge model: the served name (openai), or an embedded name / .gguf (llamacpp) / HF model (hf).
        backend: openai (any OpenAI-compatible URL) | llamacpp (start a local llama.cpp server) | hf (in-process).
        base_url: Server URL for backend openai (None = api.openai.com).
        api_key_env: Environment variable holding the API key (never logged or written).
        api_key_file: A file whose first line is the API key (instead of api_key_env; never logged or written).
        template: A prompt file with {instruction} and {responses} placeholders (default: the paper's prompt).
        instruction_format: alpaca (the full Alpaca prompt, as the paper) | plain.
        system_prompt: System message (the paper's by default, gpt-eval.py L42; null for none).
        temperature: Judge temperature (gpt-eval.py: 1.0).
        top_p: Nucleus sampling (gpt-eval.py: 1.0).
        max_tokens: Reply length limit (gpt-eval.py: 2048).
        parser: robust (the last rank list in the reply, markdown and echoes handled) | released (gpt-eval.py's:
            every integer after the first "rank:").
        request_seed: Send a seed with each request (None: only to local judges, llamacpp and hf, so their runs
            repeat; the request to an API judge is then the released one, which has no seed).
        reference: drop | include: the judge's own "Response 4".
        missing: last | drop: candidates the judge left out (duplicates).
        shuffles: 0 = one call in sampling order (paper); k = k calls with seeded shuffles, Borda-aggregated.
        fallback_scores: If no rank list, rank by the "Response k: score" lines.
        assistant_prefix: backend hf only: prefill the start of the reply, e.g. "rank: [" (steers weak judges).
        constrain: none | rank_grammar: the reply must be "rank: [...]" with a permutation of the candidates (a GBNF
            grammar; llamacpp servers, or openai with a server that accepts llama.cpp's `grammar` field).
        seed: Seed for shuffles and the request seed.
        limit: Use at most this many records.
        offset: Skip this many records first.
        concurrency: Parallel requests.
        max_retries: Retries per request (429/5xx/timeouts, exponential back-off).
        timeout: Seconds per request.
        cache_dir: Reply cache (default $TUNA_CACHE/judge_cache).
        max_cost: Stop sending requests before this cost would be passed; the rest is retried next run.
        price_per_1k_prompt: Price per 1000 prompt tokens.
        price_per_1k_completion: Price per 1000 completion tokens.
        n_ctx: Context size of the local llama.cpp server.
        summary: Where to write the JSON summary (default <out>.summary.json).
    """
    from tuna.feedback.client import ChatReply, ChatRequest, JudgeClient
    from tuna.feedback.judge import (
        PAPER_TEMPLATE,
        PARSERS,
        JudgePolicy,
        build_prompt,
        judge_instruction,
        rank_grammar,
        rank_record,
        shuffle_orders,
    )
    from tuna.feedback.server import LlamaCppServer
    from tuna.models import cache_root
    from tuna.records import atomic_write_text

    if reference not in ("drop", "include"):
        raise TunaError(f"reference must be drop | include, got {reference!r}", field="reference")
    if missing not in ("last", "drop"):
        raise TunaError(f"missing must be last | drop, got {missing!r}", field="missing")
    if backend not in ("openai", "llamacpp", "hf"):
        raise TunaError(f"unknown backend {backend!r} (openai | llamacpp | hf)", field="backend")
    if parser not in ("robust", "released"):
        raise TunaError(f"parser must be robust | released, got {parser!r}", field="parser")
    if constrain not in ("none", "rank_grammar"):
        raise TunaError(f"constrain must be none | rank_grammar, got {constrain!r}", field="constrain")
    if constrain != "none" and backend == "hf":
        raise TunaError("constrain needs a server that accepts a GBNF grammar (backend llamacpp); "
                        "with backend hf use assistant_prefix", field="constrain")
    tmpl = PAPER_TEMPLATE
    method = "paper_prompt"
    if template:
        tp = Path(template)
        if not tp.exists():
            raise TunaError("template file does not exist", path=tp)
        tmpl = tp.read_text(encoding="utf-8")
        if "{responses}" not in tmpl or "{instruction}" not in tmpl:
            raise TunaError("template needs {instruction} and {responses} placeholders", path=tp)
        method = f"template:{tp.name}"
    _quiet_http_logs()
    policy = JudgePolicy(reference=reference, missing=missing)
    records = load_inputs(input, fmt="tuna", limit=limit, offset=offset, min_candidates=2)
    failed_path = _failed_path(out)
    previously_failed = 0
    if failed_path.exists():
        previously_failed = sum(1 for line in failed_path.read_text(encoding="utf-8").splitlines() if line.strip())
    app = JsonlAppender(out)
    todo = [r for r in records if r.id not in app.done_ids]
    if constrain == "rank_grammar":
        method += "+rank_grammar"
    if parser == "released":
        method += "+released_parser"
    if any(len(r.candidates) != 4 for r in todo) and not template:
        log.warning("the paper's prompt is written for 4 candidates (Response 0/1/2/3, reference = Response 4)")
    fail_app: JsonlAppender | None = None

    send_seed = backend in ("llamacpp", "hf") if request_seed is None else request_seed
    requests: list[ChatRequest] = []
    plan: dict[str, tuple[Record, list[list[int]]]] = {}
    for rec in todo:
        perms = shuffle_orders(len(rec.candidates), shuffles, seed, rec.id)
        plan[rec.id] = (rec, perms)
        instr = judge_instruction(rec, instruction_format)
        for j, perm in enumerate(perms):
            msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": build_prompt(tmpl, instr, [rec.candidates[k].text for k in perm])}]
            grammar = rank_grammar(len(perm)) if constrain == "rank_grammar" else None
            requests.append(ChatRequest(messages=msgs, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                        seed=seed + j if send_seed else None, key=f"{rec.id}\x00{j}", grammar=grammar))

    got: dict[str, dict[int, ChatReply]] = {}
    stats: Counter = Counter()
    taus: list[float] = []

    def on_reply(req: ChatRequest, rep: ChatReply) -> None:
        rid, j = req.key.split("\x00")  # type: ignore[union-attr]
        got.setdefault(rid, {})[int(j)] = rep
        rec, perms = plan[rid]
        if len(got[rid]) < len(perms):
            return
        reps = [got[rid][k] for k in range(len(perms))]
        errors = [r.error for r in reps if r.error]
        parse = PARSERS[parser]
        parsed = [parse(r.text or "", len(rec.candidates) + 1, **({"fallback_scores": fallback_scores} if parser == "robust" else {}))
                  for r in reps]
        for p in parsed:
            if p.order is not None and not any(k < len(rec.candidates) for k in p.order):
                # e.g. 'rank: [4]': only the judge's own response; nothing to train on (the importer skips these too)
                p.order, p.reason = None, "rank list names only the judge's own response"
        ok = [p for p in parsed if p.order is not None]
        if not ok:
            reason = ("budget" if "budget" in errors else f"error: {errors[0]}") if errors else f"unparseable: {parsed[0].reason}"
            stats[reason.split(":")[0]] += 1
            # fail_app is opened before the first call
            fail_app.write({"id": rid, "reason": reason, "replies": [r.text for r in reps], "errors": errors or None})  # type: ignore[union-attr]
        else:
            ranked = rank_record(rec, perms, parsed, judge_model=model, method=method, policy=policy,
                                 replies=[r.text or "" for r in reps])
            stats["ranked"] += 1
            if "kendall_tau" in ranked.ranking.details:  # type: ignore[union-attr]
                taus.append(ranked.ranking.details["kendall_tau"])  # type: ignore[union-attr]
            stats["parsed_calls"] += len(ok)
            app.write(ranked)
        stats["calls_total"] += len(reps)
        del got[rid]

    server = None
    t0 = time.monotonic()
    try:
        if backend == "llamacpp" and requests:
            server = LlamaCppServer(model, n_ctx=n_ctx, seed=seed).start()
            client_url, client_model = server.base_url, server.model
        else:
            client_url, client_model = base_url, model
        client = JudgeClient(client_model, base_url=client_url, api_key_env=api_key_env, api_key_file=api_key_file,
                             cache_dir=cache_dir or str(cache_root() / "judge_cache"), concurrency=concurrency,
                             max_retries=max_retries, timeout=timeout, price_per_1k_prompt=price_per_1k_prompt,
                             price_per_1k_completion=price_per_1k_completion, max_cost=max_cost,
                             backend="hf" if backend == "hf" else "openai", assistant_prefix=assistant_prefix)
        # This run's failures (a re-run retries everything not yet in `out` anyway). Cleared only once the
        # client is set up, so a run that cannot start leaves the previous list as it was.
        atomic_write_text(failed_path, "")
        fail_app = JsonlAppender(failed_path)
        with client:
            client.complete_many(requests, desc="judge", on_reply=on_reply)
            ledger = client.ledger
    finally:
        if server is not None:
            server.stop()
        app.close()
        if fail_app is not None:
            fail_app.close()
    dt = time.monotonic() - t0
    n_failed = sum(v for k, v in stats.items() if k not in ("ranked", "parsed_calls", "calls_total"))
    summ = {
        "records": len(records), "already_done": len(records) - len(todo), "ranked": stats["ranked"], "failed": n_failed,
        "failed_by_reason": {k: v for k, v in stats.items() if k not in ("ranked", "parsed_calls", "calls_total")},
        "previously_failed": previously_failed,
        "parse_rate_calls": stats["parsed_calls"] / max(stats["calls_total"], 1),
        "mean_kendall_tau_between_orders": sum(taus) / len(taus) if taus else None,
        "ledger": ledger if requests else {}, "seconds": dt,
        "records_per_s": len(todo) / dt if dt > 0 else 0.0,
    }
    atomic_write_json(summary or str(Path(out).with_suffix("")) + ".summary.json", summ)
    led = summ["ledger"] or {}
    print(f"judge: {summ['ranked']} ranked, {n_failed} failed {summ['failed_by_reason'] or ''} "
          f"({summ['already_done']} already done) | calls {led.get('calls', 0)}, cache hits {led.get('cached', 0)}, "
          f"tokens {led.get('prompt_tokens', 0)}+{led.get('completion_tokens', 0)}, cost {led.get('cost', 0.0):.4f}, "
          f"{led.get('calls_per_s', 0.0):.2f} calls/s, {dt:.1f} s -> {out}" + (f"; failures in {failed_path}" if n_failed else ""))
    return out


COMMANDS = {"sample": sample, "score": score, "reference": reference, "judge": judge}
