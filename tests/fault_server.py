"""A fault-injecting OpenAI-compatible chat server on loopback, for the reliability tests.

``FaultServer(rate=0.3)`` answers ``POST /v1/chat/completions`` like a judge would: a ``rank: [...]`` reply for
ranking prompts (``###Response k:`` blocks), a FastChat review (``"8 7\\n..."``) for Vicuna reviewer prompts, and
``"ok"`` otherwise. With probability ``rate`` a request gets one of the fault kinds instead:

* ``429``: Too Many Requests with ``Retry-After``;
* ``500``: an internal server error;
* ``reset``: the socket is closed with a TCP RST and no response at all;
* ``timeout``: no response for ``hang_s`` seconds (longer than the client's timeout), then the socket closes;
* ``malformed_json``: status 200 with a body that is not JSON;
* ``truncated``: status 200, a ``Content-Length`` of the whole body, half of it sent, then the socket closes;
* ``empty``: a well-formed reply whose content is the empty string;
* ``no_ranking``: a well-formed reply whose content has no ranking (no ``rank:`` list, no review scores).

Decisions are deterministic: a request's fault is drawn from ``random.Random(seed, digest of the request body,
how many times this body was seen)``, so the same run meets the same faults whatever the thread interleaving,
and a retry of a failed request draws again. ``injected`` counts the faults per kind, ``served_ok`` the good
replies, ``log`` holds one entry per request (kind, the record tags found in the prompt), ``auth_seen`` the
distinct ``Authorization`` header values (for the secrets test; never printed).

Everything is bounded and local: it binds 127.0.0.1 on a free port, reads at most ``max_body`` bytes per
request, every socket has a timeout, a hanging request wakes up when the server stops, and ``stop()`` (or the
``with`` block's end) shuts it down and joins its thread.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("429", "500", "reset", "timeout", "malformed_json", "truncated", "empty", "no_ranking")
TRANSPORT_KINDS = ("429", "500", "reset", "timeout", "malformed_json", "truncated", "empty")
"""Faults the client sees as a failed call (never cached; a re-run asks again). ``no_ranking`` is a successful
call whose content does not parse."""

_RESPONSE_BLOCK = re.compile(r"###\s*Response (\d+):")
_TAG = re.compile(r"\[\[rec:([A-Za-z0-9_.:-]+)\]\]")


def record_tags(text: str) -> list[str]:
    """Record ids the tests embed in candidate texts as ``[[rec:<id>]]`` (to see which records a request is for)."""
    return sorted(set(_TAG.findall(text)))


def send_json(handler: BaseHTTPRequestHandler, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    """One JSON response (also used by the scripted server of tests/test_feedback_unit.py)."""
    data = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # socket timeout for reading a request: a stuck client cannot hold a thread forever

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------------------------------- helpers

    def _send_json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        send_json(self, code, obj, headers)

    def _reset(self) -> None:
        """Close the socket with a TCP RST and no response."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _completion(self, model: str, content: str) -> dict[str, Any]:
        return {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}

    # ------------------------------------------------------------------------------------------- verbs

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            return self._send_json(200, {"object": "list", "data": [{"id": "fault-judge", "object": "model", "owned_by": "tests"}]})
        self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        srv = self.server.owner
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > srv.max_body:
            self.close_connection = True
            return self._send_json(413, {"error": {"message": "request too large"}})
        raw = self.rfile.read(length)
        auth = self.headers.get("Authorization")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._send_json(404, {"error": {"message": f"no route {self.path}"}})
        try:
            body = json.loads(raw)
            messages = body["messages"]
            text = "\n".join(str(m.get("content", "")) for m in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._send_json(400, {"error": {"message": "bad request"}})
        kind, digest = srv._decide(raw)
        srv._note(kind, record_tags(text), auth)
        if srv.latency_s:
            srv._stop.wait(srv.latency_s)
        model = str(body.get("model", "fault-judge"))
        if kind is None:
            return self._send_json(200, self._completion(model, srv.reply_for(messages, digest)))
        if kind == "429":
            return self._send_json(429, {"error": {"message": "rate limited (injected)", "type": "rate_limit"}},
                                   {"Retry-After": srv.retry_after})
        if kind == "500":
            return self._send_json(500, {"error": {"message": "internal error (injected)", "type": "server_error"}})
        if kind == "reset":
            return self._reset()
        if kind == "timeout":
            srv._stop.wait(srv.hang_s)
            self.close_connection = True
            return None
        if kind == "malformed_json":
            data = b'{"id": "chatcmpl-fault", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assis'
            data += b"<<not json>>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if kind == "truncated":
            data = json.dumps(self._completion(model, srv.reply_for(messages, digest))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if kind == "empty":
            return self._send_json(200, self._completion(model, ""))
        if kind == "no_ranking":
            return self._send_json(200, self._completion(model, srv.unparseable_for(messages)))
        raise AssertionError(kind)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or was SIGKILLed mid-reply is part of the game: count it, print nothing.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            with self.owner._lock:
                self.owner.client_gone += 1
            return
        super().handle_error(request, client_address)


class FaultServer:
    def __init__(self, rate: float = 0.3, *, kinds: tuple[str, ...] = KINDS, seed: int = 0, hang_s: float = 3.0,
                 retry_after: str = "1", latency_s: float = 0.0, max_body: int = 8 << 20):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.rate, self.kinds, self.seed = rate, tuple(kinds), seed
        self.hang_s, self.retry_after, self.latency_s, self.max_body = hang_s, retry_after, latency_s, max_body
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: Counter = Counter()
        self.injected: Counter = Counter()
        self.served_ok = 0
        self.requests = 0
        self.client_gone = 0
        self.log: list[dict[str, Any]] = []
        self.auth_seen: set[str] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- life cycle

    def start(self) -> FaultServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="fault-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes hanging "timeout" handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # ------------------------------------------------------------------------------------------- state

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = rate

    def reset_counts(self) -> None:
        with self._lock:
            self.injected = Counter()
            self.served_ok = self.requests = 0
            self.log = []

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "served_ok": self.served_ok, "injected": dict(sorted(self.injected.items())),
                    "injected_total": sum(self.injected.values())}

    def _decide(self, raw: bytes) -> tuple[str | None, str]:
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            attempt = self._seen[digest]
            self._seen[digest] += 1
            rate = self.rate
        rng = random.Random(f"{self.seed}:{digest}:{attempt}")
        kind = rng.choice(self.kinds) if rng.random() < rate and self.kinds else None
        return kind, digest

    def _note(self, kind: str | None, tags: list[str], auth: str | None) -> None:
        with self._lock:
            self.requests += 1
            if kind is None:
                self.served_ok += 1
            else:
                self.injected[kind] += 1
            self.log.append({"kind": kind, "records": tags})
            if auth:
                self.auth_seen.add(auth)

    # ------------------------------------------------------------------------------------------- replies

    @staticmethod
    def _is_review(messages: list[dict[str, Any]]) -> bool:
        text = "\n".join(str(m.get("content", "")) for m in messages)
        return "Assistant 1" in text and "Assistant 2" in text

    def reply_for(self, messages: list[dict[str, Any]], digest: str) -> str:
        """A valid judge reply, deterministic in the request."""
        rng = random.Random(f"reply:{digest}")
        if self._is_review(messages):
            a, b = rng.randint(1, 10), rng.randint(1, 10)
            return f"{a} {b}\nAssistant 1 scored {a} and Assistant 2 scored {b} (fault server review)."
        user = str(messages[-1].get("content", ""))
        ids = sorted({int(k) for k in _RESPONSE_BLOCK.findall(user)})
        if ids:
            order = list(ids)
            rng.shuffle(order)
            lines = [f"Response {k}: {rng.randint(0, 15)}" for k in ids]
            return "\n".join(lines) + f"\nrank: [{', '.join(map(str, order))}]"
        return "ok"

    def unparseable_for(self, messages: list[dict[str, Any]]) -> str:
        if self._is_review(messages):
            return "Both assistants did fine, I cannot pick scores.\nNo numbers here."
        return "All of the responses are reasonable; I would not rank them."


def serve(port: int, rate: float = 0.0, latency_s: float = 0.0, seed: int = 0) -> None:
    """Serve on 127.0.0.1:``port`` until killed: the fault server as a child process (tests of the endpoint watch
    kill it by its pid)."""
    srv = FaultServer(rate=rate, seed=seed, latency_s=latency_s)
    srv._httpd = _Server(("127.0.0.1", port), _Handler)
    srv._httpd.owner = srv
    print(f"fault server on {srv.base_url}", flush=True)
    srv._httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=serve.__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--latency_s", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    serve(a.port, a.rate, a.latency_s, a.seed)
