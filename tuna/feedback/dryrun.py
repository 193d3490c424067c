"""A judge pass priced before anything is sent: requests, estimated input and output tokens, batch files, and the price
in both modes (``tuna judge --dry_run true``; any caller with a list of requests can use :func:`estimate`).

Estimates, said as such: input tokens = characters / 4 (OpenAI's rule of thumb for English text) + 4 per message
+ 3 per request (the chat format's overhead); output tokens = ``expected_completion_tokens`` when given, else what
the paper's request asks for: a score line per response and the rank list (~100 tokens) plus a "Response 4" as long
as the candidates (their mean characters / 4), capped at ``max_tokens``. Batch files are counted by building every
request line (streaming, nothing kept) against the file limits. Prices: :mod:`tuna.feedback.prices`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tuna.feedback.client import ChatRequest
from tuna.feedback.config import JudgeConfig
from tuna.feedback.prices import BATCH_DISCOUNT, PRICES_DATE, PRICES_SOURCE, price_per_1k

RATINGS_TOKENS = 100
"""Output tokens the paper's reply spends besides its own Response 4: "Response k: s" lines and "rank: [...]"."""


def prompt_tokens(req: ChatRequest) -> int:
    return sum(len(str(m.get("content", ""))) // 4 + 4 for m in req.messages) + 3


def estimate(requests: Iterable[ChatRequest], cfg: JudgeConfig, *, candidates_chars: Sequence[float] | None = None,
             model: str | None = None) -> dict[str, Any]:
    """The figures of a pass over ``requests`` with the judge ``cfg`` (both modes). ``candidates_chars``: per request,
    the mean characters of its candidates (for the output estimate; else a quarter of ``max_tokens``)."""
    from tuna.feedback.batch import request_line

    model = model or cfg.model
    n = pt = ct = 0
    files = 1
    cur_n = cur_b = 0
    total_bytes = 0
    for i, req in enumerate(requests):
        n += 1
        pt += prompt_tokens(req)
        if cfg.expected_completion_tokens is not None:
            c = cfg.expected_completion_tokens
        elif candidates_chars is not None:
            c = RATINGS_TOKENS + int(candidates_chars[i] / 4)
        else:
            c = req.max_tokens // 4
        ct += min(c, req.max_tokens)
        size = len(request_line("0" * 64, model, req))  # custom_id = a 64-hex cache key
        total_bytes += size
        if cur_n and (cur_n >= cfg.batch_max_requests or cur_b + size > cfg.batch_max_bytes):
            files += 1
            cur_n = cur_b = 0
        cur_n += 1
        cur_b += size
    sp, sc, src = price_per_1k(model, "sync", cfg.price_per_1k_prompt, cfg.price_per_1k_completion)
    bp, bc, _ = price_per_1k(model, "batch", cfg.price_per_1k_prompt, cfg.price_per_1k_completion)
    sync = pt / 1000 * sp + ct / 1000 * sc
    batch = pt / 1000 * bp + ct / 1000 * bc
    return {"model": model, "requests": n, "prompt_tokens": pt, "completion_tokens": ct,
            "batch_files": files if n else 0, "batch_bytes": total_bytes,
            "limits": {"requests_per_file": cfg.batch_max_requests, "bytes_per_file": cfg.batch_max_bytes},
            "price_sync": round(sync, 2), "price_batch": round(batch, 2), "batch_discount": BATCH_DISCOUNT,
            "price_source": src, "prices": {"sync_per_1k": [sp, sc], "batch_per_1k": [bp, bc]},
            "prices_table": f"{PRICES_SOURCE}, checked {PRICES_DATE}", "reasks_worst_case_factor": 1 + cfg.reasks,
            "mode": cfg.mode}


def print_estimate(est: dict[str, Any], *, title: str) -> None:
    mb = est["batch_bytes"] / 1e6
    print(title)
    print(f"  model {est['model']} ({est['price_source']}; {est['prices_table']})")
    print(f"  requests               {est['requests']:,}")
    print(f"  input tokens (est.)    {est['prompt_tokens']:,}")
    print(f"  output tokens (est.)   {est['completion_tokens']:,}")
    print(f"  batch files            {est['batch_files']} ({mb:,.1f} MB; limits {est['limits']['requests_per_file']:,} requests, "
          f"{est['limits']['bytes_per_file'] / 1e6:,.0f} MB per file)")
    print(f"  price, synchronous     ${est['price_sync']:,.2f}")
    print(f"  price, Batch API       ${est['price_batch']:,.2f}  (x{est['batch_discount']})")
    print(f"  mode {est['mode']}; unparseable replies re-asked at most {est['reasks_worst_case_factor'] - 1} more time(s) "
          f"(worst case x{est['reasks_worst_case_factor']} on the replies re-asked); nothing was sent")
