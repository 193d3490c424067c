"""A chat-completion client for LLM judges: persistent cache, bounded concurrency, retries, a cost ledger.

Shared by ``tuna judge`` and the evaluation package (Vicuna QA judge).

* **Cache**: ``diskcache`` keyed by a SHA-256 of (model, messages, temperature, max_tokens, top_p, seed). Only
  successful replies are stored, so a failed call is retried by the next run (unlike alpaca_eval #340).
* **Retries**: the ``openai`` client's own back-off (``max_retries``): 429 (honours ``Retry-After``), 408/409,
  5xx, timeouts and connection resets. Whatever still fails comes back as ``ChatReply(error=...)``.
* **The endpoint watch** (:mod:`tuna.feedback.endpoint`): a server tuna started for ``base_url`` that dies is
  restarted once and the request sent again; a second death, or an endpoint that refuses every connection for
  ``unreachable_timeout`` seconds, raises :class:`tuna.feedback.endpoint.EndpointDown` out of ``complete_many``
  (after the replies already in flight are delivered). It is never a ``ChatReply`` error: nothing is written as a
  failed record or cached for the requests it stopped.
* **Budget**: with ``max_cost`` set, a request is not sent when the money spent plus the estimated cost of
  the calls in flight and of this call would pass it; it comes back with ``error="budget"``. Cached replies
  are free and always returned.
* **Callbacks**: ``on_reply`` runs in the calling thread as each reply arrives, so callers can append
  results to a crash-safe file without locks.
* ``backend="hf"``: the reply is generated in-process by a local transformers chat model (same cache,
  ledger and interface; for the embedded default and tests without a server).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tuna.errors import TunaError
from tuna.feedback.config import UNREACHABLE_TIMEOUT, EndpointConfig
from tuna.feedback.endpoint import EndpointDown, EndpointHealth, watched_openai
from tuna.feedback.keys import read_api_key

log = logging.getLogger(__name__)


@dataclass
class ChatRequest:
    messages: list[dict]
    temperature: float = 0.0
    max_tokens: int = 1024
    top_p: float = 1.0
    seed: int | None = None
    key: str | None = None
    """The caller's record id (not part of the cache key)."""
    grammar: str | None = None
    """A GBNF grammar the reply must follow, sent as the ``grammar`` field that llama.cpp servers accept (part of
    the cache key when set)."""
    attempt: int = 0
    """Re-ask number (0 = the first ask). Part of the cache key when > 0, so a re-ask of an unparseable reply is a
    new draw, never the cached reply again."""
    draw: int = 0
    """Repeat number of the same request asked on purpose several times (judge reliability); part of the cache key
    when > 0."""


@dataclass
class ChatReply:
    text: str | None
    error: str | None
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    cost: float


def cache_key(model: str, req: ChatRequest) -> str:
    payload = {"model": model, "messages": req.messages, "temperature": req.temperature, "max_tokens": req.max_tokens,
               "top_p": req.top_p, "seed": req.seed}
    if req.grammar:  # only when set, so the keys of unconstrained requests stay as they were
        payload["grammar"] = req.grammar
    if req.attempt:  # likewise: first asks keep their keys
        payload["attempt"] = req.attempt
    if req.draw:
        payload["draw"] = req.draw
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def progress_enabled() -> bool:
    """Progress bars on (``TUNA_PROGRESS=0`` turns them off)."""
    return os.environ.get("TUNA_PROGRESS", "1") != "0"




class _HFChat:
    """In-process chat replies from a local transformers model (greedy at temperature 0)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", assistant_prefix: str = ""):
        from tuna.feedback.generators import HFGenerator

        self.prefix = assistant_prefix
        self.gen = HFGenerator(model, device=device, dtype=dtype, batch_size=1)
        self.lock = threading.Lock()  # one generate at a time: torch already uses all cores

    def __call__(self, req: ChatRequest) -> tuple[str, int, int, str]:
        from tuna.generation import GenerationConfig

        tok = self.gen.tokenizer
        # A prefilled start of the reply (e.g. "rank: [") steers a weak local judge into the parseable format.
        prompt = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False) + self.prefix
        params = GenerationConfig(n=1, temperature=req.temperature, top_p=req.top_p, top_k=0,  # like an API judge
                                max_new_tokens=req.max_tokens, seed=req.seed or 0)
        with self.lock:
            g = self.gen.generate([prompt], params)[0][0]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        return self.prefix + g.text, n_prompt, g.num_tokens, g.finish_reason


def keyed_openai(base_url: str | None, api_key_env: str, api_key_file: str | None, *, max_retries: int, timeout: float,
                 unreachable_timeout: float) -> tuple[Any, EndpointHealth]:
    """An OpenAI client with the key from the environment (or a file) and the endpoint watch. The client does the
    retrying (exponential back-off with jitter, Retry-After honoured); the watch stops the run when the endpoint is
    gone. A local server (``base_url``) needs no key."""
    key = read_api_key(api_key_env, api_key_file)
    if not key and base_url is None:
        raise TunaError(f"environment variable {api_key_env} is not set and no api_key_file given (needed for the OpenAI API)")
    return watched_openai(base_url=base_url, api_key=key or "none", max_retries=max_retries, timeout=timeout,
                          unreachable_timeout=unreachable_timeout)


class JudgeClient:
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | None = None,
        concurrency: int = 4,
        max_retries: int = 6,
        timeout: float = 120.0,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        max_cost: float | None = None,
        *,
        backend: str = "openai",
        hf_device: str = "auto",
        hf_dtype: str = "auto",
        assistant_prefix: str = "",
        api_key_file: str | None = None,
        unreachable_timeout: float = UNREACHABLE_TIMEOUT,
    ):
        self.model, self.base_url = model, base_url
        self.concurrency = max(1, concurrency)
        self.price_p, self.price_c = price_per_1k_prompt, price_per_1k_completion
        self.max_cost = max_cost
        self.backend = backend
        self._key_model = model
        self._lock = threading.Lock()
        self._ledger = {"calls": 0, "cached": 0, "failed": 0, "budget_skipped": 0, "prompt_tokens": 0,
                        "completion_tokens": 0, "cost": 0.0, "seconds": 0.0}
        self._cache = None
        if cache_dir:
            import diskcache

            self._cache = diskcache.Cache(cache_dir)
        self.health: EndpointHealth | None = None
        if backend == "openai":
            self._client, self.health = keyed_openai(base_url, api_key_env, api_key_file, max_retries=max_retries,
                                                     timeout=timeout, unreachable_timeout=unreachable_timeout)
            self._hf = None
            if assistant_prefix:
                raise TunaError("assistant_prefix needs backend hf (chat APIs cannot prefill the reply)", field="assistant_prefix")
        elif backend == "hf":
            self._key_model = f"{model}|prefix={assistant_prefix}" if assistant_prefix else model
            self._client = None
            self._hf = _HFChat(model, device=hf_device, dtype=hf_dtype, assistant_prefix=assistant_prefix)
            self.concurrency = 1
        else:
            raise TunaError(f"unknown judge backend {backend!r} (openai | hf)", field="backend")

    # ------------------------------------------------------------------------------------------- ledger

    @property
    def ledger(self) -> dict[str, Any]:
        with self._lock:
            d = dict(self._ledger)
        d["calls_per_s"] = d["calls"] / d["seconds"] if d["seconds"] > 0 else 0.0
        return d

    def _price(self, prompt_tokens: float, completion_tokens: float) -> float:
        return prompt_tokens / 1000 * self.price_p + completion_tokens / 1000 * self.price_c

    def _estimate(self, req: ChatRequest) -> float:
        """A call's expected cost before sending it: ~4 characters per prompt token; completions as long as the
        average so far (or a quarter of max_tokens before the first reply)."""
        chars = sum(len(str(m.get("content", ""))) for m in req.messages)
        with self._lock:
            done = self._ledger["calls"] - self._ledger["failed"]
            avg_c = self._ledger["completion_tokens"] / done if done else req.max_tokens / 4
        return self._price(chars / 4, avg_c)

    # ------------------------------------------------------------------------------------------- calls

    def _send(self, req: ChatRequest) -> ChatReply:
        import openai

        try:
            if self._hf is not None:
                text, pt, ct, _ = self._hf(req)
            else:
                kw: dict[str, Any] = {}
                if req.seed is not None:
                    kw["seed"] = req.seed
                if req.grammar:
                    kw["extra_body"] = {"grammar": req.grammar}
                r = self._client.chat.completions.create(model=self.model, messages=req.messages, temperature=req.temperature,
                                                         max_tokens=req.max_tokens, top_p=req.top_p, **kw)
                try:
                    text = r.choices[0].message.content if r.choices else None
                    pt = (r.usage.prompt_tokens or 0) if r.usage else 0
                    ct = (r.usage.completion_tokens or 0) if r.usage else 0
                except (AttributeError, IndexError, KeyError, TypeError) as e:  # a 200 whose JSON is not a chat completion
                    return ChatReply(None, f"malformed reply: {type(e).__name__}: {str(e)[:200]}", False, 0, 0, 0.0)
                if not isinstance(text, str) or not text.strip():
                    # An empty reply is a server fault, not an answer: reported as an error, so it is not cached
                    # and the next run asks again.
                    return ChatReply(None, "empty reply", False, pt, ct, self._price(pt, ct))
        except EndpointDown:
            raise  # the step stops: not a failure of this request
        except openai.APIStatusError as e:
            return ChatReply(None, f"http {e.status_code}: {str(e)[:200]}", False, 0, 0, 0.0)
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            if self.health is not None:
                self.health.raise_if_down()  # openai releases that wrap the watch's error as a connection error
            return ChatReply(None, f"{type(e).__name__}: {str(e)[:200]}", False, 0, 0, 0.0)
        except openai.OpenAIError as e:
            return ChatReply(None, f"{type(e).__name__}: {str(e)[:200]}", False, 0, 0, 0.0)
        except ValueError as e:  # a 200 whose body is not JSON (json.JSONDecodeError): the openai client raises it as is
            if self._hf is not None:
                raise
            return ChatReply(None, f"malformed reply: {type(e).__name__}: {str(e)[:200]}", False, 0, 0, 0.0)
        return ChatReply(text, None, False, pt, ct, self._price(pt, ct))

    def complete_many(
        self,
        requests: list[ChatRequest],
        *,
        desc: str = "judge",
        on_reply: Callable[[ChatRequest, ChatReply], None] | None = None,
        cache_if: Callable[[ChatRequest, str], bool] | None = None,
    ) -> list[ChatReply]:
        """One reply per request, in request order. Cached ones come back first, then calls as they finish.
        ``cache_if(request, text)``: only replies it accepts are cached (a reply the caller cannot read is never stored, so the
        next run asks again)."""
        from tqdm.auto import tqdm

        replies: list[ChatReply | None] = [None] * len(requests)
        keys = [cache_key(self._key_model, r) for r in requests]
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress_enabled(), dynamic_ncols=True)

        def deliver(i: int, rep: ChatReply) -> None:
            replies[i] = rep
            if on_reply is not None:
                on_reply(requests[i], rep)
            bar.update(1)
            with self._lock:
                led = dict(self._ledger)
            bar.set_postfix(calls=led["calls"], cached=led["cached"], failed=led["failed"], cost=f"{led['cost']:.4f}", refresh=False)

        todo: list[int] = []
        for i, k in enumerate(keys):
            hit = self._cache.get(k) if self._cache is not None else None
            if hit is not None:
                with self._lock:
                    self._ledger["cached"] += 1
                deliver(i, ChatReply(hit["text"], None, True, hit["prompt_tokens"], hit["completion_tokens"], 0.0))
            else:
                todo.append(i)

        in_flight_cost = 0.0
        pending: dict[Future, tuple[int, float, float]] = {}
        down: EndpointDown | None = None
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            it = iter(todo)
            exhausted = False
            while pending or not (exhausted or down):
                while not exhausted and down is None and len(pending) < self.concurrency:
                    i = next(it, None)
                    if i is None:
                        exhausted = True
                        break
                    est = self._estimate(requests[i]) if self.max_cost is not None else 0.0
                    with self._lock:
                        spent = self._ledger["cost"]
                    if self.max_cost is not None and spent + in_flight_cost + est > self.max_cost:
                        with self._lock:
                            self._ledger["budget_skipped"] += 1
                        deliver(i, ChatReply(None, "budget", False, 0, 0, 0.0))
                        continue
                    in_flight_cost += est
                    pending[pool.submit(self._send, requests[i])] = (i, est, time.monotonic())
                if not pending:
                    continue
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    i, est, _start = pending.pop(fut)
                    in_flight_cost -= est
                    try:
                        rep = fut.result()
                    except EndpointDown as e:
                        # Send nothing more; the replies still in flight are delivered (nothing computed is lost).
                        down = down or e
                        continue
                    with self._lock:
                        self._ledger["calls"] += 1
                        self._ledger["prompt_tokens"] += rep.prompt_tokens
                        self._ledger["completion_tokens"] += rep.completion_tokens
                        self._ledger["cost"] += rep.cost
                        if rep.error:
                            self._ledger["failed"] += 1
                    if rep.error is None and self._cache is not None and (cache_if is None or cache_if(requests[i], rep.text or "")):
                        self._cache.set(keys[i], {"text": rep.text, "prompt_tokens": rep.prompt_tokens,
                                                  "completion_tokens": rep.completion_tokens})
                    deliver(i, rep)
        with self._lock:
            self._ledger["seconds"] += time.monotonic() - t0
        bar.close()
        if down is not None:
            raise down
        return [r for r in replies if r is not None] if all(r is not None for r in replies) else replies  # type: ignore[return-value]

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_client(cfg: EndpointConfig, stack: contextlib.ExitStack, *, cache_dir: str | None = None, seed: int = 0,
                assistant_prefix: str = "") -> JudgeClient:
    """The client of the endpoint ``cfg`` describes, closed with ``stack``. A ``llamacpp`` endpoint gets a local
    server first, on ``stack`` too (stopped after the client closes; while it runs, the client's watch restarts it
    once if it dies: :mod:`tuna.feedback.endpoint`): the one place a judge's server is started, for ``tuna judge``,
    the pipeline's judge and the Vicuna reviewer alike.

    ``cache_dir``: the reply cache when ``cfg.cache_dir`` is unset (default ``$TUNA_CACHE/judge_cache``); ``seed``:
    the server's sampling seed; ``assistant_prefix``: prefill of each reply (backend hf)."""
    if cfg.backend not in ("openai", "llamacpp", "hf"):
        raise TunaError(f"unknown backend {cfg.backend!r} (openai | llamacpp | hf)", field="backend")
    model, url = cfg.model, cfg.base_url
    if cfg.backend == "llamacpp":
        from tuna.feedback.server import LlamaCppServer

        server = stack.enter_context(LlamaCppServer(cfg.model, n_ctx=cfg.n_ctx, seed=seed))
        model, url = server.model, server.base_url
    if cache_dir is None and cfg.cache_dir is None:
        from tuna.models import cache_root

        cache_dir = str(cache_root() / "judge_cache")
    client = JudgeClient(model, base_url=url, api_key_env=cfg.api_key_env, api_key_file=cfg.api_key_file,
                         cache_dir=cfg.cache_dir or cache_dir, concurrency=cfg.concurrency, max_retries=cfg.max_retries,
                         timeout=cfg.timeout, price_per_1k_prompt=cfg.price_per_1k_prompt,
                         price_per_1k_completion=cfg.price_per_1k_completion, max_cost=cfg.max_cost,
                         backend="hf" if cfg.backend == "hf" else "openai", assistant_prefix=assistant_prefix,
                         unreachable_timeout=cfg.unreachable_timeout)
    return stack.enter_context(client)
