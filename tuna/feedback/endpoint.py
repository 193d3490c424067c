"""The watch on an OpenAI-compatible endpoint: a server that dies or an endpoint that refuses every connection stops
the run within seconds, instead of filling the failures file (issue #19).

Every HTTP attempt the ``openai`` client makes, its own retries included, goes through :class:`WatchedHttpClient`
(a subclass of ``openai.DefaultHttpxClient``, so it works whether that openai release is built on httpx or on
httpx2), which asks the endpoint's :class:`EndpointHealth`:

* **A server tuna started** for the URL (a :class:`WatchedServer`, found by :func:`server_for`) that has exited is
  restarted once on the same port (one warning with its exit status and the end of its log) and the attempt is sent
  again; a second death raises :class:`EndpointDown` naming the exit status or signal and the log's last lines.
  An attempt that fails in flight is matched to a death too (the process is given a second to be seen gone).
* **An attempt that cannot connect** (refused, unreachable, connect timeout) is tried again with back-off inside the
  same call: nothing was sent, so this costs none of the openai client's retries. Once no attempt to the endpoint
  has got through for ``unreachable_timeout`` seconds while every attempt failed to connect, :class:`EndpointDown`
  names the URL and the last error. Any attempt that gets through (a reply of any status, or an error after the
  connection was made) resets that window, so transient errors among successes are retried as before.
* **Other transport errors** (a reset after connecting, a truncated body, a read timeout) go back to the openai
  client, which retries them with its back-off as before.

:class:`EndpointDown` is an ``openai.OpenAIError`` (openai >= 2.31 re-raises those at once, without retrying; older
releases retry any error from the HTTP client with their back-off, each retry stopping at once, and then wrap it in
``APIConnectionError``: callers unwrap it, so the stop comes ~27 s later at ``max_retries=6``; checked by hand with
openai 1.40 on httpx and 3.63 on httpx2) and a :class:`tuna.errors.TunaError` (one line for the user). Callers let
it propagate: it is never turned into a per-request reply, so nothing is written to a failures file or cached for
the requests it stopped.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

import openai

from tuna.errors import TunaError
from tuna.feedback.config import UNREACHABLE_TIMEOUT

log = logging.getLogger(__name__)

DEATH_GRACE_S = 1.0
"""After an attempt fails in flight, how long a watched server process is given to be seen dead (the kernel closes
its sockets a moment before the parent can reap it)."""
CONNECT_BACKOFF_S = (0.25, 2.0)
"""First and longest pause between connection attempts inside one call (doubling in between)."""


class EndpointDown(TunaError, openai.OpenAIError):
    """The endpoint cannot serve: its server process died after its one restart, or no connection has succeeded for
    ``unreachable_timeout`` seconds. Stops the step; never a per-request failure."""


class WatchedServer(Protocol):
    """A server process tuna started and watches (:class:`tuna.feedback.server.ServerProcess`)."""

    base_url: str
    generation: int
    """How many times the process was (re)started after the first start: a death is reported against the generation
    the failed attempt saw, so that threads that meet one death restart the process once."""

    def exit_status(self) -> str | None:
        """``None`` while it runs, else how it ended (``exit status 1``, ``signal SIGKILL``)."""

    def wait_exit(self, timeout: float) -> str | None:
        """Like :meth:`exit_status`, waiting up to ``timeout`` seconds for the process to end."""

    def recover(self, generation: int) -> None:
        """The process of ``generation`` is dead: restart it (the policy's one restart) or raise :class:`EndpointDown`."""


# ----------------------------------------------------------------------------------------------- which URL is whose

_servers: dict[tuple[str, int], WatchedServer] = {}
_servers_lock = threading.Lock()
_LOOPBACK = {"localhost": "127.0.0.1", "::1": "127.0.0.1", "[::1]": "127.0.0.1"}


def _url_key(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return _LOOPBACK.get(host, host), parts.port or (443 if parts.scheme == "https" else 80)


def watch_server(server: WatchedServer) -> None:
    """Clients created for ``server.base_url`` (any path, ``localhost`` or ``127.0.0.1``) watch ``server``."""
    with _servers_lock:
        _servers[_url_key(server.base_url)] = server


def unwatch_server(server: WatchedServer) -> None:
    with _servers_lock:
        key = _url_key(server.base_url)
        if _servers.get(key) is server:
            del _servers[key]


def server_for(url: str | None) -> WatchedServer | None:
    """The running server tuna started for ``url``, if any: every client of that URL watches it, including those
    created by code that was only given the URL (the Vicuna reviewer of the pipeline)."""
    if not url:
        return None
    with _servers_lock:
        return _servers.get(_url_key(url))


# ----------------------------------------------------------------------------------------------- the health of one endpoint


class EndpointHealth:
    """What the attempts to one endpoint have seen: shared by the threads (and clients) that call it."""

    def __init__(self, url: str, unreachable_timeout: float = UNREACHABLE_TIMEOUT, server: WatchedServer | None = None,
                 *, clock: Any = time.monotonic):
        if unreachable_timeout <= 0:
            raise TunaError(f"unreachable_timeout must be > 0 seconds, got {unreachable_timeout}", field="unreachable_timeout")
        self.url = url
        self.unreachable_timeout = float(unreachable_timeout)
        self.server = server if server is not None else server_for(url)
        self._clock = clock
        self._lock = threading.Lock()
        self._refused_since: float | None = None
        """When the first attempt failed to connect since the last one that got through (None: the last got through)."""
        self._last_error = ""
        self._down: str | None = None
        self.connect_failures = 0

    @property
    def down(self) -> str | None:
        """Why the endpoint was given up (the message of the :class:`EndpointDown` raised), or None."""
        return self._down

    def raise_if_down(self) -> None:
        if self._down is not None:
            raise EndpointDown(self._down)

    def _give_up(self, message: str) -> EndpointDown:
        with self._lock:
            if self._down is None:
                self._down = message
            return EndpointDown(self._down)

    # ------------------------------------------------------------------------------------------- the watched server

    def before_attempt(self) -> int:
        """Called before each attempt: raises if the endpoint was given up; a watched server found dead is restarted
        (or the death raised). Returns the server generation the attempt goes to."""
        self.raise_if_down()
        if self.server is None:
            return 0
        gen = self.server.generation
        if self.server.exit_status() is not None:
            self._recover(gen)
            return self.server.generation
        return gen

    def died(self, generation: int) -> bool:
        """After an attempt to ``generation`` failed in flight: True if the watched server had died and was restarted
        (send again); raises :class:`EndpointDown` if it died for good; False if it runs (or none is watched)."""
        if self.server is None:
            return False
        if self.server.generation == generation and self.server.wait_exit(DEATH_GRACE_S) is None:
            return False
        self._recover(generation)
        return True

    def _recover(self, generation: int) -> None:
        try:
            self.server.recover(generation)  # type: ignore[union-attr]
        except EndpointDown as e:
            raise self._give_up(e.message) from None
        except TunaError as e:  # e.g. the restart itself failed
            raise self._give_up(e.message) from None
        self.got_through()  # the restarted server answered its readiness probe

    # ------------------------------------------------------------------------------------------- reachability

    def got_through(self) -> None:
        """An attempt reached the server (any reply, or an error after the connection was made)."""
        with self._lock:
            self._refused_since = None

    def failed_to_connect(self, error: BaseException) -> float:
        """An attempt could not connect. Raises :class:`EndpointDown` once no attempt has got through for
        ``unreachable_timeout`` seconds; else returns the seconds left in that window."""
        now = self._clock()
        with self._lock:
            self.connect_failures += 1
            if self._refused_since is None:
                self._refused_since = now
            self._last_error = f"{type(error).__name__}: {str(error)[:200]}"
            waited = now - self._refused_since
            last = self._last_error
        if waited >= self.unreachable_timeout:
            raise self._give_up(f"cannot connect to {self.url}: every attempt for {waited:.0f} s failed to connect "
                                f"(unreachable_timeout {self.unreachable_timeout:g} s); last error {last}")
        return self.unreachable_timeout - waited


# ----------------------------------------------------------------------------------------------- the HTTP client


def _http_module() -> Any:
    """httpx or httpx2: the library the installed openai client is built on (the base of ``DefaultHttpxClient``)."""
    for cls in openai.DefaultHttpxClient.__mro__:
        top = cls.__module__.split(".")[0]
        if cls.__name__ == "Client" and top != "openai":
            return importlib.import_module(top)
    raise TunaError("cannot tell which HTTP library the installed openai client uses")  # not seen in openai 1.40 .. 3.x


class WatchedHttpClient(openai.DefaultHttpxClient):  # type: ignore[misc, valid-type]
    """The openai client's HTTP client (its defaults kept), with every attempt checked by an :class:`EndpointHealth`."""

    def __init__(self, health: EndpointHealth, **kwargs: Any):
        super().__init__(**kwargs)
        self.health = health
        http = _http_module()
        self._connect_errors = (http.ConnectError, http.ConnectTimeout)
        self._transport_errors = (http.TransportError,)

    def send(self, request: Any, **kwargs: Any) -> Any:
        health = self.health
        pause = CONNECT_BACKOFF_S[0]
        while True:
            generation = health.before_attempt()
            try:
                response = super().send(request, **kwargs)
            except self._connect_errors as e:
                if health.died(generation):
                    continue  # restarted: the request was not sent, send it to the new process
                left = health.failed_to_connect(e)
                time.sleep(min(pause, left))
                pause = min(pause * 2, CONNECT_BACKOFF_S[1])
                continue
            except self._transport_errors:
                if health.died(generation):
                    continue  # the server died with the request in flight: send it again to the restarted one
                health.got_through()
                raise
            health.got_through()
            return response


def watched_openai(*, base_url: str | None, api_key: str, max_retries: int, timeout: float,
                   unreachable_timeout: float = UNREACHABLE_TIMEOUT) -> tuple[Any, EndpointHealth]:
    """An ``openai.OpenAI`` client whose every attempt is watched, and the :class:`EndpointHealth` it reports to."""
    health = EndpointHealth(base_url or "https://api.openai.com/v1", unreachable_timeout)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout,
                           http_client=WatchedHttpClient(health))
    return client, health
