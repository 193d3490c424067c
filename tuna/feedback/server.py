"""Start and stop a local llama.cpp OpenAI-compatible server (``llama-cpp-python[server]``) on loopback.

    with LlamaCppServer(gguf_path) as srv:
        client = JudgeClient(model=srv.model, base_url=srv.base_url)

The server is a child process on a free 127.0.0.1 port; ``start`` waits until ``/v1/models`` answers and
``stop`` terminates (then kills) only that process. The server log goes to a file (``log_path``) so a
failed start can say why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tuna.errors import TunaError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gguf_for(model: str) -> Path:
    """An embedded model name (``smollm2-135m-instruct``, ``gemma3-270m``) or a ``.gguf`` path → the GGUF file."""
    from tuna.models import EMBEDDED, _embedded_gguf

    if model in EMBEDDED:
        return _embedded_gguf(model)
    p = Path(model).expanduser()
    if p.suffix != ".gguf" or not p.exists():
        raise TunaError(f"not a GGUF file or embedded model name (known: {', '.join(EMBEDDED)})", path=p)
    return p


class LlamaCppServer:
    """A ``python -m llama_cpp.server`` child process serving one GGUF on ``127.0.0.1:<free port>``."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        port: int | None = None,
        n_threads: int = 2,
        n_ctx: int = 2048,
        chat_format: str | None = None,
        alias: str | None = None,
        seed: int = 0,
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike | None = None,
        extra_args: list[str] | None = None,
    ):
        self.gguf = gguf_for(str(model))
        self.port = port or free_port()
        self.alias = alias or (str(model) if str(model) in _embedded_names() else self.gguf.stem)
        self.n_threads, self.n_ctx, self.chat_format, self.seed = n_threads, n_ctx, chat_format, seed
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="llama_server.", suffix=".log")[1])
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name to send in requests (the server's alias)."""
        return self.alias

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
               "--n_ctx", str(self.n_ctx), "--model_alias", self.alias, "--seed", str(self.seed), "--verbose", "False"]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd + self.extra_args

    def start(self) -> LlamaCppServer:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError:
            raise TunaError("the llama.cpp server needs llama-cpp-python[server]: pip install 'llama-cpp-python[server]'") from None
        from tuna.feedback.llamacpp_build import ensure_runnable

        ensure_runnable()  # a build this CPU cannot run is an error here, not a server that dies on its first request
        log = open(self.log_path, "wb")
        # A new session so that the server never receives the terminal's Ctrl-C before we stop it ourselves.
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise TunaError(f"llama.cpp server exited with status {self.proc.returncode} during start-up: {tail}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TunaError(f"llama.cpp server did not answer within {self.startup_timeout:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _embedded_names() -> set[str]:
    from tuna.models import EMBEDDED

    return set(EMBEDDED)
