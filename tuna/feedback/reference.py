"""Reference log-likelihoods for the objectives with a frozen reference model (DPO, IPO), computed once.

The reference model scores every candidate of a ranked set in one pass and the sums are stored in the records
(``ref_logprob``, ``ref_tokens``, ``ref_model`` on each candidate), so training holds one model in memory.

They must be sums over exactly the tokens training scores, so the candidates are tokenised by the training data
module's own :func:`tuna.data.tokenize_record` (same template, truncation, EOS) and scored by
:func:`tuna.forward.response_token_logprobs`, in any of its layouts (``chunked``, ``full``, ``packed``,
``prefix_shared``). Training checks the stored token counts against its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tuna.config import DataConfig
from tuna.errors import TunaError
from tuna.records import Record


def reference_logprobs(
    model: Any, tokenizer: Any, records: list[Record], data: DataConfig, *, batch_size: int = 4,
    logprob_mode: str = "auto", device: str = "cpu", source: str = "<memory>",
) -> list[list[tuple[float, int]]]:
    """Per record, per candidate: ``(summed log-prob, number of response tokens)`` under ``model``, on the tokens
    the training data module gives it with the data settings ``data`` (every candidate, whatever
    ``data.num_candidates``)."""
    import torch

    from tuna.data import collate_padded, tokenize_record
    from tuna.forward import response_token_logprobs
    from tuna.records import line_of_id

    data = replace(data, num_candidates=None)
    items = []
    for rec in records:
        try:
            items.append(tokenize_record(rec.model_dump(), tokenizer, data, mode="rank", with_gold=False))
        except TunaError as e:
            raise TunaError(e.message, path=source, line=line_of_id(source, rec.id), field=e.field) from None
    out: list[list[tuple[float, int]]] = [[] for _ in records]
    order = sorted(range(len(items)), key=lambda i: items[i]["length"])  # similar lengths together: less padding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start : start + batch_size]
            batch = collate_padded([items[i] for i in chunk], pad)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logps, mask = response_token_logprobs(model, batch, mode=logprob_mode)
            sums, counts = logps.sum(-1).float().cpu(), mask.sum(-1).cpu()  # masked positions hold 0
            for row, i in enumerate(chunk):
                out[i] = [(float(sums[row, k]), int(counts[row, k])) for k in range(items[i]["n_rank"])]
    return out


def with_reference(rec: Record, values: list[tuple[float, int]], model_name: str) -> Record:
    """The record with each candidate's ``ref_logprob``, ``ref_tokens`` and ``ref_model`` set."""
    cands = [c.model_copy(update={"ref_logprob": lp, "ref_tokens": n, "ref_model": model_name})
             for c, (lp, n) in zip(rec.candidates, values, strict=True)]
    return rec.model_copy(update={"candidates": cands})


def score_reference(records: list[Record], out: str, model: str, data: DataConfig, *, logprob_mode: str = "auto",
                    batch_size: int = 4, chunk_size: int = 32, device: str = "auto", dtype: str = "float32",
                    autocast_bf16: bool = False, source: str = "<memory>") -> str:
    """Write each ranked set of ``records`` not yet in ``out`` with its candidates' reference log-probs under
    ``model`` (``tuna reference``; the pipeline's reference step for dpo / ipo)."""
    import logging
    import os
    import time

    import torch
    from tqdm.auto import tqdm

    from tuna.feedback.sampling import chunks, set_threads_from_env
    from tuna.models import load_model, load_tokenizer
    from tuna.precision import device_type, resolve_dtype
    from tuna.records import JsonlAppender

    log = logging.getLogger(__name__)
    t0 = time.monotonic()
    with JsonlAppender(out) as app:
        todo = [r for r in records if r.id not in app.done_ids]
        log.info("reference: %d records, %d already in %s, %d to do", len(records), len(records) - len(todo), out, len(todo))
        if todo:
            set_threads_from_env()
            device = device_type(device)
            tok = load_tokenizer(model)
            lm = load_model(model, dtype=resolve_dtype(dtype, device), tokenizer=tok).to(device).eval()
            bar = tqdm(total=len(todo), desc="reference", unit="rec", disable=os.environ.get("TUNA_PROGRESS", "1") == "0")
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast_bf16):
                for chunk in chunks(todo, chunk_size):
                    values = reference_logprobs(lm, tok, chunk, data, batch_size=batch_size, logprob_mode=logprob_mode,
                                                device=device, source=source)
                    for rec, v in zip(chunk, values, strict=True):
                        app.write(with_reference(rec, v, model))
                    bar.update(len(chunk))
            bar.close()
    dt = time.monotonic() - t0
    print(f"reference log-probs of {len(todo)} records ({len(records) - len(todo)} already done) under {model} "
          f"in {dt:.1f} s -> {out}")
    return out
