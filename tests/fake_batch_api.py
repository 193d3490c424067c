"""A local fake of OpenAI's Files + Batches API on loopback, for the Batch-mode tests (no network, no key).

Endpoints (as the ``openai`` client calls them): ``POST /v1/files`` (multipart upload, purpose batch),
``GET /v1/files`` (list), ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``GET /v1/batches`` (newest first, cursor ``after``), ``POST /v1/batches/{id}/cancel``.

A batch goes ``validating -> in_progress -> finalizing -> completed`` one step per ``retrieve`` (so a test sees every
status), or ends ``failed`` (input over ``max_requests`` lines or ``max_bytes`` bytes, or a bad line: the real
validation errors), ``expired`` (``expire_after`` requests answered, the rest written to the error file with code
``batch_expired``, as the API does) or ``cancelled`` (by the cancel endpoint or ``cancel_batches``; partial output).

Faults per request, chosen by the test: ``error_if(custom_id, body, seen)`` -> an HTTP status for the error file
(500, 429 ...); ``malformed_if(custom_id, seen)`` -> the output line is cut in half; ``reply(body, seen)`` -> the
reply text (default: a valid ``rank: [...]`` permutation for ranking prompts, "8 7\\n..." for reviews), where
``seen`` counts how many times the same request body was answered before (a re-ask draws again).

``kill_pid`` + ``kill_at`` ("create" or "retrieve:N") SIGKILL a client process at that point: on ``create`` the batch
exists server-side and the client never gets its id (the crash window the intent log guards). Counters: ``creates``
(per batch metadata part), ``uploads``, ``retrieves``, ``lists``; ``batches``, ``files`` hold the state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

_RESP = re.compile(r"###\s*Response (\d+):")


def default_reply(body: dict[str, Any], seen: int) -> str:
    text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    n = len(set(_RESP.findall(text)))
    if n:
        h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        order = sorted(range(n), key=lambda k: (h >> (4 * k)) & 0xF)
        return "Response 0: 10\nrank: [" + ", ".join(map(str, order)) + "]"
    return "8 7\nAssistant 1 was more detailed."


class FakeBatchAPI:
    def __init__(self, *, max_requests: int = 50_000, max_bytes: int = 200_000_000,
                 reply: Callable[[dict[str, Any], int], str] = default_reply,
                 error_if: Callable[[str, dict[str, Any], int], int | None] | None = None,
                 malformed_if: Callable[[str, int], bool] | None = None,
                 expire_after: dict[int, int] | None = None, cancel_batches: set[int] | None = None,
                 in_progress_polls: int = 1):
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.reply, self.error_if, self.malformed_if = reply, error_if, malformed_if
        self.expire_after = expire_after or {}  # batch number (1-based, creation order) -> requests answered before expiry
        self.cancel_batches = cancel_batches or set()
        self.in_progress_polls = in_progress_polls
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.creates: Counter = Counter()
        self.uploads = self.retrieves = self.lists = 0
        self.seen_bodies: Counter = Counter()
        self.refuse_creates = 0  # this many batches.create calls answer 400 (the organisation's enqueued-token limit)
        self.kill_pid: int | None = None
        self.kill_at: str | None = None
        self.lock = threading.Lock()
        self._n = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, obj: Any = None, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # a client the test SIGKILLed
                    self.close_connection = True

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self) -> None:  # noqa: N802
                u = urlparse(self.path)
                q = parse_qs(u.query)
                parts = u.path.rstrip("/").split("/")[2:]  # after /v1
                with fake.lock:
                    if parts == ["files"]:
                        data = [f["meta"] for f in fake.files.values() if f["meta"]["purpose"] == q.get("purpose", ["batch"])[0]]
                        return self._send(200, {"object": "list", "data": data, "has_more": False})
                    if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                        f = fake.files.get(parts[1])
                        return self._send(200, raw=f["content"]) if f else self._send(404, {"error": {"message": "no such file"}})
                    if parts == ["batches"]:
                        fake.lists += 1
                        ids = list(reversed(fake.order))
                        if "after" in q:
                            ids = ids[ids.index(q["after"][0]) + 1:]
                        lim = int(q.get("limit", ["20"])[0])
                        page = [fake.batches[i] for i in ids[:lim]]
                        return self._send(200, {"object": "list", "data": page, "has_more": len(ids) > lim,
                                                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})
                    if len(parts) == 2 and parts[0] == "batches":
                        fake.retrieves += 1
                        fake._maybe_kill(f"retrieve:{fake.retrieves}")
                        b = fake.batches.get(parts[1])
                        if b is None:
                            return self._send(404, {"error": {"message": "no such batch"}})
                        fake._advance(b)
                        return self._send(200, b)
                self._send(404, {"error": {"message": f"no route {u.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                u = urlparse(self.path)
                parts = u.path.rstrip("/").split("/")[2:]
                body = self._body()
                with fake.lock:
                    if parts == ["files"]:
                        fields = _multipart(body, self.headers.get("Content-Type", ""))
                        fid = fake._id("file")
                        name, content = fields["file"]
                        meta = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                "filename": name, "purpose": fields["purpose"][1].decode(), "status": "processed"}
                        fake.files[fid] = {"meta": meta, "content": content}
                        fake.uploads += 1
                        return self._send(200, meta)
                    if parts == ["batches"]:
                        req = json.loads(body)
                        if req["input_file_id"] not in fake.files:
                            return self._send(400, {"error": {"message": "input file not found"}})
                        if fake.refuse_creates > 0:
                            fake.refuse_creates -= 1
                            return self._send(400, {"error": {"message": "Enqueued token limit reached for gpt-4-0613.",
                                                              "type": "invalid_request_error", "code": "token_limit_exceeded"}})
                        bid = fake._id("batch")
                        now = int(time.time())
                        b = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                             "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                             "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
                             "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
                             "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": req.get("metadata"),
                             "_n": len(fake.order) + 1, "_polls": 0}
                        fake.batches[bid] = b
                        fake.order.append(bid)
                        fake.creates[(req.get("metadata") or {}).get("tuna_part")] += 1
                        fake._maybe_kill("create")
                        return self._send(200, b)
                    if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
                        b = fake.batches[parts[1]]
                        if b["status"] not in ("completed", "failed", "expired", "cancelled"):
                            b["status"] = "cancelling"
                        return self._send(200, b)
                self._send(404, {"error": {"message": f"no route {u.path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------------------------------- helpers

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}-fake{self._n:05d}"

    def _maybe_kill(self, point: str) -> None:
        if self.kill_pid is not None and self.kill_at == point:
            pid, self.kill_pid = self.kill_pid, None
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def _add_file(self, lines: list[bytes], name: str) -> str:
        fid = self._id("file")
        content = b"".join(lines)
        self.files[fid] = {"meta": {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                    "filename": name, "purpose": "batch_output", "status": "processed"}, "content": content}
        return fid

    def _advance(self, b: dict[str, Any]) -> None:
        """One status step per retrieve; the outcome is decided when the batch finalizes."""
        b["_polls"] += 1
        st = b["status"]
        if st in ("completed", "failed", "expired", "cancelled"):
            return
        now = int(time.time())
        if st == "finalizing":
            b.update(status="completed", completed_at=now, **b.pop("_files"))
            return
        content = self.files[b["input_file_id"]]["content"]
        lines = [ln for ln in content.split(b"\n") if ln.strip()]
        if st == "validating":
            errs = []
            if len(lines) > self.max_requests:
                errs.append({"code": "too_many_requests", "message": f"{len(lines)} requests, limit {self.max_requests}", "line": None, "param": None})
            if len(content) > self.max_bytes:
                errs.append({"code": "file_too_large", "message": f"{len(content)} bytes, limit {self.max_bytes}", "line": None, "param": None})
            ids = set()
            for i, ln in enumerate(lines, 1):
                try:
                    o = json.loads(ln)
                    assert o["method"] == "POST" and o["url"] == b["endpoint"] and isinstance(o["body"], dict)
                    assert o["custom_id"] not in ids
                    ids.add(o["custom_id"])
                except Exception:  # noqa: BLE001
                    errs.append({"code": "invalid_request", "message": "bad line", "line": i, "param": None})
                    break
            b["request_counts"]["total"] = len(lines)
            if errs:
                b.update(status="failed", failed_at=now, errors={"object": "list", "data": errs})
                return
            b.update(status="in_progress", in_progress_at=now)
            return
        if st == "in_progress" and b["_polls"] <= 1 + self.in_progress_polls:
            b["request_counts"]["completed"] = len(lines) // 2
            return
        if st == "in_progress" and b["_n"] in self.cancel_batches:
            b["status"] = "cancelling"
            return
        if st in ("in_progress", "cancelling") and b["status"] != "finalizing":
            self._finish(b, lines, now)

    def _finish(self, b: dict[str, Any], lines: list[bytes], now: int) -> None:
        cancelled = b["status"] == "cancelling"
        limit = self.expire_after.get(b["_n"])
        if cancelled:
            limit = len(lines) // 2
        out, err = [], []
        done = failed = 0
        for i, ln in enumerate(lines):
            o = json.loads(ln)
            cid, body = o["custom_id"], o["body"]
            if limit is not None and i >= limit:
                if not cancelled:
                    err.append(json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": None,
                                           "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}).encode() + b"\n")
                    failed += 1
                continue
            key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            seen = self.seen_bodies[key]
            self.seen_bodies[key] += 1
            code = self.error_if(cid, body, seen) if self.error_if else None
            if code:
                err.append(json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": {"status_code": code, "request_id": f"req_{i}",
                                       "body": {"error": {"message": "injected", "type": "server_error"}}}, "error": None}).encode() + b"\n")
                failed += 1
                continue
            text = self.reply(body, seen)
            line = json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": {"status_code": 200, "request_id": f"req_{i}", "body": {
                "id": f"chatcmpl-{i}", "object": "chat.completion", "created": now, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}}, "error": None}).encode()
            if self.malformed_if and self.malformed_if(cid, seen):
                line = line[: len(line) // 2]
            out.append(line + b"\n")
            done += 1
        b["request_counts"].update(completed=done, failed=failed)
        files = {"output_file_id": self._add_file(out, f"{b['id']}_output.jsonl") if out else None,
                 "error_file_id": self._add_file(err, f"{b['id']}_error.jsonl") if err else None}
        if cancelled:
            b.update(status="cancelled", cancelled_at=now, **files)
        elif limit is not None:
            b.update(status="expired", expired_at=now, **files)
        else:
            b.update(status="finalizing", finalizing_at=now, _files=files)

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> FakeBatchAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeBatchAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str, bytes]]:
    """``{field: (filename, bytes)}`` of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise ValueError("no multipart boundary")
    out = {}
    for chunk in body.split(b"--" + m.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]+)"', head)
        fname = re.search(rb'filename="([^"]*)"', head)
        if name:
            out[name.group(1).decode()] = (fname.group(1).decode() if fname else "", data[:-2] if data.endswith(b"\r\n") else data)
    return out
