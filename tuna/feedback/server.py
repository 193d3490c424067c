"""Start and stop a local llama.cpp OpenAI-compatible server (``llama-cpp-python[server]``) on loopback.

    with LlamaCppServer(gguf_path) as srv:
        client = JudgeClient(model=srv.model, base_url=srv.base_url)

The server is a child process on a free 127.0.0.1 port; ``start`` waits until ``/v1/models`` answers and
``stop`` terminates (then kills) only that process. The server log goes to a file (``log_path``) so a
failed start, or a death, can say why. While it runs, every client of its URL watches the process
(:mod:`tuna.feedback.endpoint`): a death is restarted once, a second one stops the step with the exit status or
signal and the end of the log.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tuna.errors import TunaError
from tuna.feedback.endpoint import EndpointDown, unwatch_server, watch_server

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gguf_for(model: str) -> Path:
    """An embedded model name (``smollm2-135m-instruct``, ``gemma3-270m``) or a ``.gguf`` path → the GGUF file."""
    from tuna.models import EMBEDDED, embedded_gguf

    if model in EMBEDDED:
        return embedded_gguf(model)
    p = Path(model).expanduser()
    if p.suffix != ".gguf" or not p.exists():
        raise TunaError(f"not a GGUF file or embedded model name (known: {', '.join(EMBEDDED)})", path=p)
    return p


def describe_exit(returncode: int) -> str:
    """``exit status 1`` or ``signal SIGKILL`` (Popen's negative return codes)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class ServerProcess:
    """A child process serving an OpenAI-compatible API on ``127.0.0.1:<port>``, started, watched and stopped by tuna.

    ``start`` waits until ``/v1/models`` answers and registers the process with the endpoint watch
    (:mod:`tuna.feedback.endpoint`): every client of ``base_url`` then checks it before each attempt. A process
    that dies is restarted on the same port ``restarts`` times (default once, with a warning naming its exit status
    and the end of its log); the next death stops the step. Subclasses give the command line."""

    kind = "server"
    """What the server is, in messages."""

    def __init__(self, *, port: int | None = None, startup_timeout: float = 120.0,
                 log_path: str | os.PathLike | None = None, restarts: int = 1):
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"{self.kind.replace(' ', '_')}.", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.restarts = restarts
        self.restarts_left = restarts
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> ServerProcess:
        self.proc = self._launch(append=False)
        watch_server(self)
        return self

    def _launch(self, *, append: bool) -> subprocess.Popen:
        """Start the command and wait until it answers; the log is appended to on a restart (the death stays in it)."""
        with open(self.log_path, "ab" if append else "wb") as log_file:
            # A new session so that the server never receives the terminal's Ctrl-C before we stop it ourselves.
            proc = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TunaError(f"{self.kind} ended with {describe_exit(proc.returncode)} during start-up; "
                                f"its log ({self.log_path}) ends: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return proc
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        _end(proc)
        raise TunaError(f"{self.kind} did not answer within {self.startup_timeout:.0f} s (log: {self.log_path})")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exit_status(self) -> str | None:
        """None while the process runs, else how it ended (``exit status 1``, ``signal SIGKILL``, ``stopped``)."""
        proc = self.proc
        if proc is None:
            return "stopped"
        code = proc.poll()
        return None if code is None else describe_exit(code)

    def wait_exit(self, timeout: float) -> str | None:
        proc = self.proc
        if proc is None:
            return "stopped"
        try:
            return describe_exit(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 8, chars: int = 1200) -> str:
        """The last lines of the server's log on one line (`` | `` between lines)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(log unreadable: {e})"
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return (" | ".join(tail) or "(empty)")[-chars:]

    def recover(self, generation: int) -> None:
        """The process of ``generation`` was found dead: restart it on the same port if a restart is left, else raise
        :class:`tuna.feedback.endpoint.EndpointDown` with the exit status and the end of the log. Threads that meet
        the same death wait here and find it restarted."""
        with self._lock:
            if self.generation != generation:
                return  # another thread restarted it
            status = self.exit_status()
            if status is None:
                return
            if status == "stopped":
                raise EndpointDown(f"{self.kind} at {self.base_url} was stopped while requests were still being sent")
            tail = self.log_tail()
            pid = self.pid
            if self.restarts_left <= 0:
                again = f"after {self.restarts} restart(s) " if self.restarts else ""
                raise EndpointDown(f"{self.kind} at {self.base_url} (pid {pid}) died {again}with {status}; "
                                   f"its log ({self.log_path}) ends: {tail}")
            self.restarts_left -= 1
            log.warning("%s at %s (pid %s) died with %s; restarting it on the same port (%d restart(s) left after this). "
                        "Its log (%s) ends: %s", self.kind, self.base_url, pid, status, self.restarts_left, self.log_path, tail)
            with open(self.log_path, "ab") as f:
                f.write(f"\n--- tuna: the process (pid {pid}) died with {status}; restarting it ---\n".encode())
            try:
                self.proc = self._launch(append=True)
            except TunaError as e:
                raise EndpointDown(f"{self.kind} at {self.base_url} died with {status} and could not be restarted: {e.message}") from None
            self.generation += 1

    def stop(self) -> None:
        unwatch_server(self)
        if self.proc is None:
            return
        _end(self.proc)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end(proc: subprocess.Popen) -> None:
    """Terminate (then kill) one child process we started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class LlamaCppServer(ServerProcess):
    """A ``python -m llama_cpp.server`` child process serving one GGUF on ``127.0.0.1:<free port>``."""

    kind = "llama.cpp server"

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
        restarts: int = 1,
    ):
        self.gguf = gguf_for(str(model))
        super().__init__(port=port, startup_timeout=startup_timeout, log_path=log_path, restarts=restarts)
        self.alias = alias or (str(model) if str(model) in _embedded_names() else self.gguf.stem)
        self.n_threads, self.n_ctx, self.chat_format, self.seed = n_threads, n_ctx, chat_format, seed
        self.extra_args = list(extra_args or [])

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
        super().start()
        return self

    def __enter__(self) -> LlamaCppServer:
        return self.start()


def _embedded_names() -> set[str]:
    from tuna.models import EMBEDDED

    return set(EMBEDDED)
