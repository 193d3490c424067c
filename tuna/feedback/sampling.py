"""Candidate sets: N sampled responses per instruction (``tuna sample``; the pipeline's teacher and student sampling).

Output is appended one fsync'ed record at a time and ids already there are skipped, so a killed run resumes where
it stopped and never duplicates a record. Each set keeps its sampler settings, seed and diversity statistics in
``provenance``. A set whose samples are all empty is not written: it goes to ``<out>.failed.jsonl`` (sampled again
by the next run), and a run after which the output holds nothing stops with the counts by reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from typing import Any

from tuna.errors import EmptyOutputError, TunaError
from tuna.feedback.config import GeneratorConfig, SamplingConfig
from tuna.records import Candidate, JsonlAppender, Record, atomic_write_text, failed_path_for

log = logging.getLogger(__name__)

ALPACA_STOP = ["\n### Instruction", "\n### Input", "\n### Response"]
"""The Alpaca template's section headers: a model that starts a new section has finished its response."""


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def quiet_http_logs() -> None:
    """One INFO line per request from the HTTP clients would drown the progress bar."""
    for name in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def set_threads_from_env() -> None:
    """``TUNA_THREADS`` (set by the pipeline's ``threads``) caps torch's CPU threads in this process."""
    import torch

    n = int(os.environ.get("TUNA_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def open_generator(gen: GeneratorConfig, stack: contextlib.ExitStack, *, logprobs: bool, seed: int = 0) -> Any:
    """The generator ``gen`` describes; a llama.cpp server it needs is started on ``stack`` and stopped with it."""
    from tuna.feedback.generators import make_generator

    if gen.backend == "hf":
        set_threads_from_env()
        return make_generator("hf", gen.model, device=gen.device, dtype=gen.dtype, batch_size=gen.batch_size)
    if gen.backend == "openai":
        return make_generator("openai", gen.model, base_url=gen.base_url, api_key_env=gen.api_key_env,
                              api_key_file=gen.api_key_file, mode=gen.mode, concurrency=gen.concurrency,
                              unreachable_timeout=gen.unreachable_timeout)
    if gen.backend == "llamacpp":
        if logprobs:
            raise TunaError("backend llamacpp samples without token log-probs (llama-cpp-python sorts the whole vocabulary in "
                            "Python for each token's log-prob: far too slow for a 262k vocabulary); sample with "
                            "--logprobs false and rank with `tuna score --method forced --model <the same model>`",
                            field="logprobs")
        from tuna.feedback.server import LlamaCppServer

        server = stack.enter_context(LlamaCppServer(gen.model, n_ctx=gen.n_ctx, seed=seed))
        g = make_generator("openai", server.model, base_url=server.base_url, mode="completions", concurrency=1, send_top_k=True,
                           unreachable_timeout=gen.unreachable_timeout)
        g.name = gen.model
        return g
    if gen.backend == "vllm":
        return make_generator("vllm", gen.model, dtype=gen.dtype, tensor_parallel_size=gen.tensor_parallel_size)
    raise TunaError(f"unknown generator backend {gen.backend!r} (hf | openai | vllm | llamacpp)", field="backend")


def sample_candidates(records: list[Record], out: str, gen: GeneratorConfig, cfg: SamplingConfig, *,
                      chunk_size: int = 8) -> str:
    """Sample ``cfg.n`` candidates for each record not yet in ``out`` (candidate sets: ``ranking`` null). Sets whose
    samples are all empty go to ``<out>.failed.jsonl`` instead; :class:`tuna.errors.EmptyOutputError` if ``out``
    holds nothing afterwards."""
    from tqdm.auto import tqdm

    from tuna.feedback.dedup import set_diversity
    from tuna.feedback.generators import with_seed
    from tuna.generation import decoding_of
    from tuna.prompts import render_prompt

    quiet_http_logs()
    index = {r.id: i for i, r in enumerate(records)}
    stop = ALPACA_STOP if cfg.stop is None and cfg.template == "alpaca" else cfg.stop
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(JsonlAppender(out))
        todo = [r for r in records if r.id not in app.done_ids]
        log.info("sample: %d records, %d already in %s, %d to do", len(records), len(records) - len(todo), out, len(todo))
        if not todo:
            if not app.done_ids:
                raise EmptyOutputError("sample", out=out, todo=0, noun="instructions", done="sampled", reasons={})
            return out
        generator = open_generator(gen, stack, logprobs=cfg.logprobs, seed=cfg.seed)
        failed_path = failed_path_for(out)
        atomic_write_text(failed_path, "")  # this run's failures (a re-run samples everything not yet in `out`)
        fail_app = stack.enter_context(JsonlAppender(failed_path))
        failed: Counter = Counter()
        tok = getattr(generator, "tokenizer", None)
        if cfg.template == "chat" and tok is None:
            from tuna.models import load_tokenizer

            tok = load_tokenizer(gen.model)
        base = decoding_of(cfg, stop=stop)
        t0, n_tok, n_done = time.monotonic(), 0, 0
        bar = tqdm(total=len(todo), desc="sample", unit="rec", disable=os.environ.get("TUNA_PROGRESS", "1") == "0")
        for chunk in chunks(todo, chunk_size):
            prompts = [render_prompt(r.instruction, r.input, template=cfg.template, tokenizer=tok,  # type: ignore[arg-type]
                                     system_prompt=cfg.system_prompt, prompt=r.prompt) for r in chunk]
            chunk_seed = cfg.seed + index[chunk[0].id]
            best: list[tuple[float, float, list, int, float]] = [(float("inf"), 1.0, [], 0, cfg.temperature)] * len(chunk)
            need = list(range(len(chunk)))
            for trial in range(cfg.max_trials if cfg.dedup else 1):
                temp = cfg.temperature + trial * cfg.temperature_increment
                res = generator.generate([prompts[i] for i in need], with_seed(base, chunk_seed + 1000 * trial, temp))
                again = []
                for i, gens in zip(need, res):
                    n_tok += sum(g.num_tokens for g in gens)
                    mean_r, max_r = set_diversity([g.text for g in gens])
                    if mean_r < best[i][0] or not best[i][2]:
                        best[i] = (mean_r, max_r, gens, trial + 1, temp)
                    else:
                        best[i] = (*best[i][:3], trial + 1, best[i][4])
                    if max_r >= cfg.rouge_threshold:
                        again.append(i)
                need = again
                if not need or cfg.temperature <= 0:  # greedy sets cannot be diversified by temperature
                    break
            for rec, (mean_r, max_r, gens, trials, temp) in zip(chunk, best):
                if not any(g.text.strip() for g in gens):
                    # Nothing to rank or train on: listed with the reason, sampled again by the next run.
                    reason = "all samples empty" if gens else "no samples returned"
                    failed[reason] += 1
                    fail_app.write({"id": rec.id, "reason": reason, "model": generator.name, "backend": gen.backend,
                                    "finish_reasons": [g.finish_reason for g in gens]})
                    continue
                cands = [Candidate(text=g.text, token_logprobs=g.token_logprobs, source=generator.name) for g in gens]
                prov = dict(rec.provenance)
                prov["sampler"] = {"model": generator.name, "backend": gen.backend, "template": cfg.template, "n": cfg.n,
                                   "temperature": temp, "top_p": cfg.top_p,
                                   "top_k": cfg.top_k if gen.backend != "openai" else None,
                                   "max_new_tokens": cfg.max_new_tokens, "seed": chunk_seed,
                                   "finish_reasons": [g.finish_reason for g in gens], "num_tokens": [g.num_tokens for g in gens]}
                if cfg.dedup:
                    prov["rouge"] = mean_r  # the released code's field: mean pairwise ROUGE-L of the kept set
                    prov["rouge_max"] = max_r
                    prov["trials"] = trials
                app.write(rec.model_copy(update={"candidates": cands, "ranking": None, "provenance": prov}))
            n_done += len(chunk)
            bar.update(len(chunk))
        bar.close()
        dt = time.monotonic() - t0
        n_failed = sum(failed.values())
        if not app.done_ids:
            raise EmptyOutputError("sample", out=out, todo=len(todo), noun="instructions", done="got a non-empty sample",
                                   reasons=dict(failed), failures=failed_path,
                                   hint=f"model {generator.name}, backend {gen.backend}")
        n_ok = n_done - n_failed
        print(f"sampled {n_ok} records ({n_ok * cfg.n} candidates, {n_tok} tokens incl. resamples) in {dt:.1f} s: "
              f"{n_tok / dt:.1f} tok/s, {dt / max(n_done, 1):.2f} s/record -> {out}"
              + (f"; {n_failed} sets with no non-empty sample ({dict(failed)}) in {failed_path}" if n_failed else ""))
    return out
