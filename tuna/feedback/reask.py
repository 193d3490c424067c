"""Bounded re-asking of unreadable judge replies, and the one entry point that runs judge requests in either mode.

* :func:`complete_with_reask`: each request is asked; a reply the caller cannot read (``accept(text)`` false) is asked
  again, up to ``reasks`` more times (knob ``reasks``, default 2), each attempt a new draw: the attempt number is part
  of the cache key and local judges get another seed. Every attempt is returned to the caller (recorded with the
  record); a request fails only when every attempt failed. Unreadable replies are never cached, so the next run asks
  again instead of finding a transient bad reply stored as the answer. An API error (after the client's retries) ends
  the request's attempts: it is not the judge's answer, and the next run asks again.
* :func:`open_client`: a :class:`tuna.feedback.client.JudgeClient` (``mode: sync``) or a
  :class:`tuna.feedback.batch.BatchClient` (``mode: batch``) from a :class:`tuna.feedback.config.JudgeConfig`.
* :func:`ask`: both together, for callers that hold their requests in a list (the Vicuna reviewer).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.feedback.client import ChatReply, ChatRequest
from tuna.feedback.config import JudgeConfig

RESEED = 104_729
"""Seed step between attempts for judges that are sent a seed (a prime, far from the shuffles' seed + j)."""


def reask_request(req: ChatRequest, attempt: int) -> ChatRequest:
    """The request as attempt ``attempt`` (0 = itself): a new cache key, and a new seed where one is sent."""
    if attempt == 0:
        return req
    return dataclasses.replace(req, attempt=attempt, seed=None if req.seed is None else req.seed + RESEED * attempt)


def complete_with_reask(
    client: Any,
    requests: Sequence[ChatRequest],
    *,
    accept: Callable[[ChatRequest, str], bool],
    reasks: int = 2,
    desc: str = "judge",
    on_final: Callable[[int, list[ChatReply]], None] | None = None,
) -> list[list[ChatReply]] | None:
    """Ask ``requests`` through ``client.complete_many`` (sync or batch), re-asking unreadable replies. ``on_final(i,
    attempts)`` runs once per request when it is settled (accepted, an error, or out of attempts); without it the
    attempts of every request are returned in order."""
    if reasks < 0:
        raise TunaError(f"must be >= 0, got {reasks}", field="reasks")
    out: list[list[ChatReply]] | None = [] if on_final is None else None
    attempts: dict[int, list[ChatReply]] = {}
    todo = list(range(len(requests)))

    def ok(req: ChatRequest, text: str) -> bool:
        return bool(text) and accept(req, text)

    def settle(i: int) -> None:
        reps = attempts.pop(i)
        if on_final is not None:
            on_final(i, reps)
        else:
            final[i] = reps

    final: dict[int, list[ChatReply]] = {}
    for a in range(reasks + 1):
        if not todo:
            break
        reqs = [reask_request(requests[i], a) for i in todo]
        pos = {id(r): i for r, i in zip(reqs, todo)}
        again: list[int] = []

        def on_reply(req: ChatRequest, rep: ChatReply, a: int = a, again: list[int] = again, pos: dict = pos) -> None:
            i = pos[id(req)]
            attempts.setdefault(i, []).append(rep)
            if rep.error is None and not ok(req, rep.text or "") and a < reasks:
                again.append(i)
            else:
                settle(i)

        client.complete_many(reqs, desc=desc if a == 0 else f"{desc} (re-ask {a})", on_reply=on_reply, cache_if=ok)
        todo = sorted(again)
    if out is not None:
        out.extend(final[i] for i in range(len(requests)))
    return out


def default_batch_dir(out: str | os.PathLike) -> Path:
    """``<out>.batch/`` next to the output."""
    p = Path(out)
    name = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(name + ".batch")


def open_client(cfg: JudgeConfig, *, cache_dir: str, state_dir: str | os.PathLike | None = None, model: str | None = None,
                base_url: str | None = None) -> Any:
    """The client ``cfg.mode`` asks for. ``model`` / ``base_url`` override the config's (a server started for the run)."""
    from tuna.feedback.client import JudgeClient

    model = model or cfg.model
    base_url = base_url if base_url is not None else cfg.base_url
    if cfg.mode == "batch":
        from tuna.feedback.batch import BatchClient, BatchSettings

        if cfg.backend != "openai":
            raise TunaError(f"mode batch needs backend openai (the Batch API), got {cfg.backend!r}", field="mode")
        if state_dir is None and cfg.batch_dir is None:
            raise TunaError("mode batch needs a batch_dir", field="batch_dir")
        return BatchClient(model, cfg.batch_dir or state_dir, base_url=base_url, api_key_env=cfg.api_key_env,  # type: ignore[arg-type]
                           api_key_file=cfg.api_key_file, cache_dir=cache_dir, max_retries=cfg.max_retries, timeout=cfg.timeout,
                           unreachable_timeout=cfg.unreachable_timeout, price_per_1k_prompt=cfg.price_per_1k_prompt,
                           price_per_1k_completion=cfg.price_per_1k_completion, max_cost=cfg.max_cost,
                           settings=BatchSettings(max_requests=cfg.batch_max_requests, max_bytes=cfg.batch_max_bytes,
                                                  poll_interval=cfg.batch_poll_interval, poll_max_interval=cfg.batch_poll_max_interval,
                                                  max_submits=cfg.batch_max_submits))
    if cfg.mode != "sync":
        raise TunaError(f"mode must be sync | batch, got {cfg.mode!r}", field="mode")
    return JudgeClient(model, base_url=base_url, api_key_env=cfg.api_key_env, api_key_file=cfg.api_key_file, cache_dir=cache_dir,
                       concurrency=cfg.concurrency, max_retries=cfg.max_retries, timeout=cfg.timeout,
                       price_per_1k_prompt=cfg.price_per_1k_prompt, price_per_1k_completion=cfg.price_per_1k_completion,
                       max_cost=cfg.max_cost, backend="hf" if cfg.backend == "hf" else "openai",
                       assistant_prefix=cfg.assistant_prefix, unreachable_timeout=cfg.unreachable_timeout)


def ask(cfg: JudgeConfig, requests: Sequence[ChatRequest], *, cache_dir: str, state_dir: str | os.PathLike | None = None,
        accept: Callable[[ChatRequest, str], bool] | None = None, desc: str = "judge", model: str | None = None,
        base_url: str | None = None) -> tuple[list[ChatReply], list[list[ChatReply]], dict[str, Any]]:
    """Run ``requests`` in ``cfg.mode`` (sync or batch), re-asking what ``accept`` rejects (``cfg.reasks`` times).
    Returns the final reply per request (the last attempt), every attempt, and the client's ledger."""
    with open_client(cfg, cache_dir=cache_dir, state_dir=state_dir, model=model, base_url=base_url) as client:
        attempts = complete_with_reask(client, requests, accept=accept or (lambda r, t: True), reasks=cfg.reasks if accept else 0,
                                       desc=desc)
        ledger = client.ledger
    assert attempts is not None
    return [a[-1] for a in attempts], attempts, ledger
