"""The judge through OpenAI's Batch API (files + batches endpoints): half the price, answered within 24 hours.

:class:`BatchClient` has :class:`tuna.feedback.client.JudgeClient`'s ``complete_many`` (same requests, replies,
reply cache and ledger), so ``tuna judge`` and the Vicuna reviewer switch with ``mode: batch``:

1. **Build**: the requests not in the reply cache are written, streaming, into batch input files
   (``parts/pNNNN.jsonl``) of at most ``max_requests`` lines and ``max_bytes`` bytes (the API's limits: 50,000
   requests, 200 MB). ``custom_id`` = the request's cache key (SHA-256 of model, messages and sampling settings), so
   the same request always has the same id and duplicates are asked once.
2. **Intent before action**: each file is fsync'ed, then its SHA-256, size and count are appended to ``state.jsonl``
   (one fsync'ed line per event) *before* it is uploaded; the batch is created with metadata ``tuna_state`` (this
   state's random id), ``tuna_part`` and ``tuna_sha256``, and its id is recorded before the first poll. A restart
   that finds an intent without a batch id first lists the account's batches and adopts the one with that metadata,
   so a SIGKILL between ``batches.create`` and the record never makes a second batch.
3. **Poll** every live batch with back-off (``poll_interval`` x1.5 while nothing changes, up to
   ``poll_max_interval``), with a progress line (requests done, rate, ETA) per change.
4. **Join**: output and error files are downloaded to disk (streamed) and read line by line: each reply is appended
   (fsync'ed per file) to ``replies.jsonl``, cached when the caller accepts it, priced at batch prices and delivered.
   A request that failed (error file, non-200), expired, or whose line is malformed or missing is submitted again
   in a new file (at most ``max_submits`` times in all); a cancelled batch's unanswered requests come back as errors
   (the next run asks again). A request is never in two live batches.

Memory stays flat in the size of the requests and replies: files are written and read one line at a time; what is
held per request is its id (and the caller's own request objects). ``benchmarks/judge_batch.py`` measures it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.feedback.client import ChatReply, ChatRequest, cache_key, keyed_openai
from tuna.feedback.config import UNREACHABLE_TIMEOUT
from tuna.feedback.prices import price_per_1k
from tuna.records import repair_jsonl

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000
"""Requests per batch input file (OpenAI: "up to 50,000 requests")."""
MAX_BYTES = 200_000_000
"""Bytes per batch input file (OpenAI: "up to 200 MB")."""
TERMINAL = ("completed", "expired", "failed", "cancelled")
STATUSES = ("validating", "in_progress", "finalizing", "cancelling") + TERMINAL


@dataclass
class BatchSettings:
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES
    poll_interval: float = 30.0
    poll_max_interval: float = 600.0
    max_submits: int = 3
    completion_window: str = "24h"

    def check(self) -> None:
        if not 1 <= self.max_requests <= MAX_REQUESTS:
            raise TunaError(f"must be in 1..{MAX_REQUESTS}, got {self.max_requests}", field="batch_max_requests")
        if not 1024 <= self.max_bytes <= MAX_BYTES:
            raise TunaError(f"must be in 1024..{MAX_BYTES}, got {self.max_bytes}", field="batch_max_bytes")
        if self.max_submits < 1:
            raise TunaError(f"must be at least 1, got {self.max_submits}", field="batch_max_submits")
        if self.poll_interval <= 0 or self.poll_max_interval < self.poll_interval:
            raise TunaError("need 0 < batch_poll_interval <= batch_poll_max_interval", field="batch_poll_interval")


# ----------------------------------------------------------------------------------------------- files


def request_body(model: str, req: ChatRequest) -> dict[str, Any]:
    """The chat-completions body, as the synchronous client sends it."""
    body: dict[str, Any] = {"model": model, "messages": req.messages, "temperature": req.temperature,
                            "max_tokens": req.max_tokens, "top_p": req.top_p}
    if req.seed is not None:
        body["seed"] = req.seed
    if req.grammar:
        body["grammar"] = req.grammar
    return body


def request_line(custom_id: str, model: str, req: ChatRequest) -> bytes:
    """One line of a batch input file."""
    obj = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": request_body(model, req)}
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass
class PartInfo:
    part: str
    path: str
    n: int
    bytes: int
    sha256: str


class PartWriter:
    """Writes request lines into numbered files within the limits, hashing as it goes; a file is fsync'ed and
    renamed into place when closed, so a file on disk under its final name is always whole."""

    def __init__(self, directory: Path, first: int, max_requests: int, max_bytes: int):
        self.dir, self.next, self.max_requests, self.max_bytes = directory, first, max_requests, max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: list[PartInfo] = []
        self._f: Any = None

    @property
    def part(self) -> str:
        """The part the last line went to."""
        return self._part

    def _open(self) -> None:
        self._part = f"p{self.next:04d}"
        self.next += 1
        self._tmp = self.dir / f".{self._part}.jsonl.tmp"
        self._f = open(self._tmp, "wb")
        self._h = hashlib.sha256()
        self._n = self._bytes = 0

    def _close(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        path = self.dir / f"{self._part}.jsonl"
        os.replace(self._tmp, path)
        self.done.append(PartInfo(self._part, str(path), self._n, self._bytes, self._h.hexdigest()))

    def write(self, custom_id: str, line: bytes) -> None:
        if len(line) > self.max_bytes:
            raise TunaError(f"one request is {len(line)} bytes, over the batch file limit of {self.max_bytes}",
                            field=f"request {custom_id}")
        if self._f is not None and (self._n >= self.max_requests or self._bytes + len(line) > self.max_bytes):
            self._close()
        if self._f is None:
            self._open()
        self._f.write(line)
        self._h.update(line)
        self._n += 1
        self._bytes += len(line)

    def close(self) -> list[PartInfo]:
        self._close()
        return self.done


_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([^"\\]{1,200})"')


def iter_custom_ids(path: str | os.PathLike) -> Iterator[str]:
    """The custom_id of each line of a batch file, streaming (a line without one is skipped)."""
    with open(path, "rb") as f:
        for line in f:
            m = _CUSTOM_ID.search(line)
            if m:
                yield m.group(1).decode("utf-8", "replace")


@dataclass
class ResultLine:
    custom_id: str | None
    text: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    malformed: str | None = None
    """Why the line could not be read (the request is then asked again)."""


def parse_result_line(raw: bytes) -> ResultLine:
    """One line of a batch output or error file: ``{"custom_id", "response": {"status_code", "body"}, "error"}``."""
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        m = _CUSTOM_ID.search(raw)
        return ResultLine(m.group(1).decode("utf-8", "replace") if m else None, malformed=f"not JSON ({type(e).__name__})")
    cid = obj.get("custom_id")
    if not isinstance(cid, str):
        return ResultLine(None, malformed="no custom_id")
    err = obj.get("error")
    resp = obj.get("response")
    if err:
        code = err.get("code") if isinstance(err, dict) else None
        msg = err.get("message") if isinstance(err, dict) else str(err)
        return ResultLine(cid, error=f"{code or 'error'}: {str(msg)[:200]}")
    if not isinstance(resp, dict):
        return ResultLine(cid, malformed="no response")
    status, body = resp.get("status_code"), resp.get("body")
    if status != 200:
        detail = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) else ""
        return ResultLine(cid, error=f"http {status}: {str(detail)[:200]}")
    try:
        text = body["choices"][0]["message"]["content"]
        usage = body.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        return ResultLine(cid, malformed=f"not a chat completion ({type(e).__name__})")
    if not isinstance(text, str) or not text.strip():
        return ResultLine(cid, error="empty reply", prompt_tokens=pt, completion_tokens=ct)
    return ResultLine(cid, text=text, prompt_tokens=pt, completion_tokens=ct)


# ----------------------------------------------------------------------------------------------- state


class StateLog:
    """``state.jsonl``: one fsync'ed JSON line per event (init, part, uploaded, created, finished, joined); a line torn
    by a crash is cut on open. The log is the only truth about what was submitted."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(path)
        self.events: list[dict[str, Any]] = []
        if path.exists():
            with open(path, "rb") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            self.events.append(json.loads(line))
                        except json.JSONDecodeError:
                            raise TunaError("batch state line is not JSON (edited by hand?)", path=path, line=i) from None

    def append(self, ev: dict[str, Any]) -> None:
        ev = {"t": round(time.time(), 3), **ev}
        with open(self.path, "ab") as f:
            f.write((json.dumps(ev, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self.events.append(ev)

    def parts(self) -> dict[str, dict[str, Any]]:
        """Part id -> its merged events (``sha256``, ``n``, ``file_id``, ``batch_id``, ``status``, ``joined``...)."""
        out: dict[str, dict[str, Any]] = {}
        for ev in self.events:
            p = ev.get("part")
            if p is None:
                continue
            d = out.setdefault(p, {"part": p})
            kind = ev.get("ev")
            d.update({k: v for k, v in ev.items() if k not in ("ev", "t")})
            if kind == "part":
                d["t_intent"] = ev.get("t")
            elif kind == "joined":
                d["joined"] = True
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fmt_s(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ----------------------------------------------------------------------------------------------- the client


class BatchClient:
    """``complete_many`` through the Batch API; state under ``state_dir`` (resumable across restarts and days)."""

    def __init__(
        self,
        model: str,
        state_dir: str | os.PathLike,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | None = None,
        cache_dir: str | None = None,
        max_retries: int = 6,
        timeout: float = 120.0,
        unreachable_timeout: float = UNREACHABLE_TIMEOUT,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        max_cost: float | None = None,
        settings: BatchSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.model = model
        self.settings = settings or BatchSettings()
        self.settings.check()
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = StateLog(self.dir / "state.jsonl")
        init = next((e for e in self.state.events if e.get("ev") == "init"), None)
        if init is None:
            init = {"ev": "init", "uid": secrets.token_hex(8), "model": model, "endpoint": ENDPOINT}
            self.state.append(init)
        elif init.get("model") != model:
            raise TunaError(f"this batch state is for model {init.get('model')!r}, not {model!r} (use another batch_dir)",
                            path=self.dir / "state.jsonl", line=1, field="model")
        self.uid: str = init["uid"]
        self.price_p, self.price_c, self.price_source = price_per_1k(model, "batch", price_per_1k_prompt, price_per_1k_completion)
        self.sync_p, self.sync_c, _ = price_per_1k(model, "sync", price_per_1k_prompt, price_per_1k_completion)
        self.max_cost = max_cost
        self._sleep = sleep
        self._client, self.health = keyed_openai(base_url, api_key_env, api_key_file, max_retries=max_retries,
                                                 timeout=timeout, unreachable_timeout=unreachable_timeout)
        self._cache = None
        if cache_dir:
            import diskcache

            self._cache = diskcache.Cache(cache_dir)
        self._ledger: dict[str, Any] = {
            "mode": "batch", "calls": 0, "cached": 0, "stored": 0, "failed": 0, "budget_skipped": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cost": 0.0, "cost_at_sync_prices": 0.0, "price_source": self.price_source,
            "batches_created": 0, "batches_adopted": 0, "files_uploaded": 0, "resubmitted": 0, "malformed_lines": 0,
            "seconds": 0.0}
        self.replies_path = self.dir / "replies.jsonl"

    # ------------------------------------------------------------------------------------------- ledger

    @property
    def ledger(self) -> dict[str, Any]:
        d = dict(self._ledger)
        d["calls_per_s"] = d["calls"] / d["seconds"] if d["seconds"] > 0 else 0.0
        return d

    def _price(self, pt: float, ct: float) -> float:
        return pt / 1000 * self.price_p + ct / 1000 * self.price_c

    # ------------------------------------------------------------------------------------------- remote calls

    def _find_remote(self, part: dict[str, Any]) -> Any | None:
        """The batch this state created for ``part``, looked up by its metadata (newest first; older than the intent
        by more than a day ends the search)."""
        since = (part.get("t_intent") or 0) - 86400
        for b in self._client.batches.list(limit=100):
            md = getattr(b, "metadata", None) or {}
            if md.get("tuna_state") == self.uid and md.get("tuna_part") == part["part"] and md.get("tuna_sha256") == part["sha256"]:
                return b
            if (getattr(b, "created_at", 0) or 0) < since:
                break
        return None

    def _find_file(self, part: dict[str, Any]) -> str | None:
        name = self._filename(part)
        for f in self._client.files.list(purpose="batch"):
            if getattr(f, "filename", None) == name and getattr(f, "bytes", None) == part["bytes"]:
                return f.id
        return None

    def _filename(self, part: dict[str, Any]) -> str:
        return f"tuna-{self.uid}-{part['part']}.jsonl"

    def _submit(self, part: dict[str, Any]) -> None:
        """Upload and create the batch for an intent, unless it exists (adopted). A refusal (e.g. the organisation's
        enqueued-token limit) stops the run with one line; the intent stays, and the same command resumes."""
        import openai

        try:
            self._submit_once(part)
        except openai.APIStatusError as e:
            raise TunaError(f"the Batch API refused batch file {part['part']} ({part['n']} requests): http {e.status_code}: "
                            f"{str(e)[:300]}; re-run the same command to resume", path=self.dir / part["path"]) from None

    def _submit_once(self, part: dict[str, Any]) -> None:
        found = self._find_remote(part)
        if found is not None:
            self.state.append({"ev": "created", "part": part["part"], "batch_id": found.id, "adopted": True})
            part["batch_id"] = found.id
            self._ledger["batches_adopted"] += 1
            log.info("batch %s: adopted %s (created before a restart)", part["part"], found.id)
            return
        file_id = part.get("file_id") or self._find_file(part)
        if file_id is None:
            with open(self.dir / part["path"], "rb") as fh:
                f = self._client.files.create(file=(self._filename(part), fh), purpose="batch")
            file_id = f.id
            self._ledger["files_uploaded"] += 1
        if part.get("file_id") != file_id:
            self.state.append({"ev": "uploaded", "part": part["part"], "file_id": file_id})
            part["file_id"] = file_id
        b = self._client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window=self.settings.completion_window,
                                        metadata={"tuna_state": self.uid, "tuna_part": part["part"], "tuna_sha256": part["sha256"]})
        self.state.append({"ev": "created", "part": part["part"], "batch_id": b.id})
        part["batch_id"] = b.id
        self._ledger["batches_created"] += 1
        log.info("batch %s: created %s (%d requests, %.1f MB)", part["part"], b.id, part["n"], part["bytes"] / 1e6)

    def _download(self, file_id: str | None, dest: Path) -> Path | None:
        if not file_id:
            return None
        if dest.exists():
            return dest
        tmp = dest.with_name("." + dest.name + ".tmp")
        with self._client.files.with_streaming_response.content(file_id) as r:
            with open(tmp, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, dest)
        return dest

    # ------------------------------------------------------------------------------------------- stored replies

    def _stored_index(self) -> dict[str, int]:
        """custom_id -> byte offset of its line in replies.jsonl (a torn last line is cut)."""
        idx: dict[str, int] = {}
        if not self.replies_path.exists():
            return idx
        repair_jsonl(self.replies_path)
        with open(self.replies_path, "rb") as f:
            off = 0
            for line in f:
                m = _CUSTOM_ID.search(line)
                if m:
                    idx[m.group(1).decode()] = off
                off += len(line)
        return idx

    def _stored(self, off: int) -> dict[str, Any]:
        with open(self.replies_path, "rb") as f:
            f.seek(off)
            return json.loads(f.readline())

    # ------------------------------------------------------------------------------------------- the pass

    def complete_many(
        self,
        requests: Sequence[ChatRequest],
        *,
        desc: str = "judge",
        on_reply: Callable[[ChatRequest, ChatReply], None] | None = None,
        cache_if: Callable[[ChatRequest, str], bool] | None = None,
    ) -> list[ChatReply] | None:
        """One reply per request (``on_reply`` as each arrives; a list in request order only when no ``on_reply`` is
        given, so a caller that streams holds no replies). Cached and stored replies come first, then batches."""
        from tqdm.auto import tqdm

        from tuna.feedback.client import progress_enabled

        t0 = time.monotonic()
        collected: list[ChatReply | None] | None = [None] * len(requests) if on_reply is None else None
        where: dict[str, list[int] | int] = {}
        for i, r in enumerate(requests):
            k = cache_key(self.model, r)
            prev = where.get(k)
            if prev is None:
                where[k] = i
            elif isinstance(prev, list):
                prev.append(i)
            else:
                where[k] = [prev, i]
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress_enabled(), dynamic_ncols=True)

        def first(k: str) -> ChatRequest:
            idx = where[k]
            return requests[idx[0] if isinstance(idx, list) else idx]

        def deliver(k: str, rep: ChatReply) -> None:
            idx = where.pop(k, None)
            if idx is None:
                return
            for i in idx if isinstance(idx, list) else [idx]:
                if collected is not None:
                    collected[i] = rep
                if on_reply is not None:
                    on_reply(requests[i], rep)
                bar.update(1)

        # 1. the reply cache and replies this state already holds
        stored = self._stored_index()
        for k in list(where):
            hit = self._cache.get(k) if self._cache is not None else None
            if hit is not None:
                self._ledger["cached"] += 1
                deliver(k, ChatReply(hit["text"], None, True, hit["prompt_tokens"], hit["completion_tokens"], 0.0))
            elif k in stored:
                s = self._stored(stored[k])
                self._ledger["stored"] += 1
                if s.get("text") is not None and self._cache is not None and (cache_if is None or cache_if(first(k), s["text"])):
                    self._cache.set(k, {"text": s["text"], "prompt_tokens": s["prompt_tokens"],
                                        "completion_tokens": s["completion_tokens"], "price_mode": "batch", "cost": s.get("cost", 0.0)})
                deliver(k, ChatReply(s.get("text"), None, True, s.get("prompt_tokens", 0), s.get("completion_tokens", 0), 0.0))
        del stored

        # 2. what an earlier run submitted and is still in flight (each run gives a request max_submits submissions:
        #    a request that failed for good in an earlier run is asked again by the next one, like the sync judge)
        parts = self.state.parts()
        submits: Counter = Counter()
        in_flight: dict[str, str] = {}  # custom_id -> part
        for p in parts.values():
            path = self.dir / p["path"]
            if p.get("joined") or not path.exists():
                continue
            for k in iter_custom_ids(path):
                if k in where:
                    submits[k] += 1
                    in_flight[k] = p["part"]
        last_error: dict[str, str] = {}
        next_part = 1 + max((int(p[1:]) for p in parts), default=0)
        committed: dict[str, float] = Counter()  # part -> estimated cost of its requests while it is live (budget)

        def settle_failures() -> None:
            for k in [k for k in where if k not in in_flight and submits[k] >= self.settings.max_submits]:
                self._ledger["failed"] += 1
                deliver(k, ChatReply(None, f"batch: failed after {submits[k]} submission(s): {last_error.get(k, 'no reply')}",
                                     False, 0, 0, 0.0))

        def build() -> list[str]:
            nonlocal next_part
            todo = [k for k in where if k not in in_flight]
            if not todo:
                return []
            resub = sum(1 for k in todo if submits[k])
            self._ledger["resubmitted"] += resub
            writer = PartWriter(self.dir / "parts", next_part, self.settings.max_requests, self.settings.max_bytes)
            todo_set = set(todo)
            over_budget: list[str] = []
            for k in todo:
                idx = where[k]
                req = requests[idx[0] if isinstance(idx, list) else idx]
                if self.max_cost is not None:
                    chars = sum(len(str(m.get("content", ""))) for m in req.messages)
                    est = self._price(chars / 4, req.max_tokens / 4)
                    if self._ledger["cost"] + sum(committed.values()) + est > self.max_cost:
                        over_budget.append(k)
                        continue
                writer.write(k, request_line(k, self.model, req))
                if self.max_cost is not None:
                    committed[writer.part] += est
            infos = writer.close()
            next_part = writer.next
            for k in over_budget:
                todo_set.discard(k)
                self._ledger["budget_skipped"] += 1
                deliver(k, ChatReply(None, "budget", False, 0, 0, 0.0))
            _fsync_dir(self.dir / "parts")
            new = []
            for info in infos:
                ev = {"ev": "part", "part": info.part, "path": f"parts/{Path(info.path).name}", "n": info.n, "bytes": info.bytes, "sha256": info.sha256}
                self.state.append(ev)
                parts[info.part] = {**{k: v for k, v in ev.items() if k != "ev"}, "t_intent": self.state.events[-1]["t"]}
                new.append(info.part)
            for k in todo_set:
                in_flight[k] = "?"
                submits[k] += 1
            for p in new:  # fill in which part each request went to
                for k in iter_custom_ids(self.dir / parts[p]["path"]):
                    in_flight[k] = p
            if infos:
                log.info("%s: %d requests in %d batch file(s)%s", desc, sum(i.n for i in infos), len(infos),
                         f" ({resub} resubmitted)" if resub else "")
            return new

        def join(p: dict[str, Any], batch: Any) -> None:
            status = batch.status
            out = self._download(getattr(batch, "output_file_id", None), self.dir / "parts" / f"{p['part']}.output.jsonl")
            err = self._download(getattr(batch, "error_file_id", None), self.dir / "parts" / f"{p['part']}.errors.jsonl")
            seen: set[str] = set()
            counts = Counter()
            mine = set(iter_custom_ids(self.dir / p["path"]))  # this file's requests (at most max_requests ids)
            with open(self.replies_path, "ab") as store:
                for path in (out, err):
                    if path is None:
                        continue
                    with open(path, "rb") as f:
                        for raw in f:
                            if not raw.strip():
                                continue
                            r = parse_result_line(raw)
                            k = r.custom_id
                            if r.malformed is not None:
                                counts["malformed"] += 1
                                self._ledger["malformed_lines"] += 1
                                log.warning("%s: line of %s unreadable (%s); that request is asked again", p["part"], path.name, r.malformed)
                                if k is not None:
                                    last_error[k] = f"malformed line: {r.malformed}"
                                continue
                            if k is None or k in seen or k not in mine:
                                continue
                            seen.add(k)
                            asked_now = in_flight.get(k) == p["part"]  # else: a request of an earlier call (e.g. a
                            # re-ask round a kill interrupted): stored and paid for, found by the call that asks it
                            if r.text is None:
                                counts["error"] += 1
                                if asked_now:
                                    last_error[k] = r.error or "error"
                                if r.prompt_tokens or r.completion_tokens:
                                    self._charge(r.prompt_tokens, r.completion_tokens)
                                continue
                            cost = self._charge(r.prompt_tokens, r.completion_tokens)
                            self._ledger["calls"] += 1
                            store.write((json.dumps({"custom_id": k, "text": r.text, "prompt_tokens": r.prompt_tokens,
                                                     "completion_tokens": r.completion_tokens, "cost": cost}, ensure_ascii=False) + "\n").encode())
                            counts["ok"] += 1
                            if not asked_now:
                                continue
                            if self._cache is not None and (cache_if is None or cache_if(first(k), r.text)):
                                self._cache.set(k, {"text": r.text, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                                                    "price_mode": "batch", "cost": cost})
                            in_flight.pop(k, None)
                            deliver(k, ChatReply(r.text, None, False, r.prompt_tokens, r.completion_tokens, cost))
                store.flush()
                os.fsync(store.fileno())
            # what the files did not answer: asked again (a cancelled batch: reported, the next run asks again)
            left = [k for k, q in in_flight.items() if q == p["part"]]
            for k in left:
                in_flight.pop(k)
                if k not in seen and k not in last_error:
                    last_error[k] = f"no line in the batch's files (batch {status})"
                if status == "cancelled":
                    self._ledger["failed"] += 1
                    deliver(k, ChatReply(None, f"batch cancelled: {last_error[k]}", False, 0, 0, 0.0))
            counts["missing"] = sum(1 for k in left if k not in seen)
            self.state.append({"ev": "joined", "part": p["part"], "status": status, **dict(counts)})
            p["joined"] = True
            committed.pop(p["part"], None)
            if status != "completed" or len(left):
                log.warning("batch %s (%s) %s: %d replies, %d to ask again%s", p["part"], p.get("batch_id"), status, counts["ok"],
                            len(left) if status != "cancelled" else 0,
                            f"; batch errors: {self._batch_errors(batch)}" if status == "failed" else "")

        try:
            settle_failures()
            # every batch not yet joined is waited for, even one with none of this call's requests (a later call's:
            # its replies are stored, never lost or paid twice)
            pending = [p for p in parts.values() if not p.get("joined")]
            pending += [parts[q] for q in build()]
            interval = self.settings.poll_interval
            last_view: dict[str, tuple] = {}
            first_seen: dict[str, tuple[float, int]] = {}
            while pending:
                for p in pending:
                    if not p.get("batch_id"):
                        self._submit(p)
                changed = False
                still = []
                for p in pending:
                    b = self._client.batches.retrieve(p["batch_id"])
                    rc = getattr(b, "request_counts", None)
                    done_n = (rc.completed + rc.failed) if rc is not None else 0
                    view = (b.status, done_n)
                    if view != last_view.get(p["part"]):
                        changed = True
                        last_view[p["part"]] = view
                        t_first, n_first = first_seen.setdefault(p["part"], (time.monotonic(), done_n))
                        rate = (done_n - n_first) / max(time.monotonic() - t_first, 1e-9)
                        total = rc.total if rc is not None and rc.total else p["n"]
                        eta = f", ETA {_fmt_s((total - done_n) / rate)}" if rate > 0 and done_n < total else ""
                        log.info("batch %s (%s): %s, %d/%d requests done%s", p["part"], p["batch_id"], b.status, done_n, total, eta)
                    if b.status in TERMINAL:
                        self.state.append({"ev": "finished", "part": p["part"], "status": b.status,
                                           "output_file_id": getattr(b, "output_file_id", None), "error_file_id": getattr(b, "error_file_id", None)})
                        join(p, b)
                        changed = True
                    else:
                        still.append(p)
                if changed:
                    settle_failures()
                    new = build()
                    still += [parts[q] for q in new]
                    interval = self.settings.poll_interval
                pending = still
                if pending:
                    bar.set_postfix(batches=len(pending), status=",".join(sorted({v[0] for v in last_view.values()})), refresh=False)
                    self._sleep(interval)
                    interval = min(interval * 1.5, self.settings.poll_max_interval)
            settle_failures()
        finally:
            self._ledger["seconds"] += time.monotonic() - t0
            bar.close()
        for k in list(where):  # cannot happen: every request is delivered above; never lose one silently
            deliver(k, ChatReply(None, "batch: no reply (internal)", False, 0, 0, 0.0))
        return collected  # type: ignore[return-value]

    def _charge(self, pt: int, ct: int) -> float:
        cost = self._price(pt, ct)
        self._ledger["prompt_tokens"] += pt
        self._ledger["completion_tokens"] += ct
        self._ledger["cost"] += cost
        self._ledger["cost_at_sync_prices"] += pt / 1000 * self.sync_p + ct / 1000 * self.sync_c
        return cost

    @staticmethod
    def _batch_errors(batch: Any) -> str:
        errs = getattr(batch, "errors", None)
        data = getattr(errs, "data", None) or []
        return "; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in data[:3]) or "none given"

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        self._client.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
