"""The endpoint watch and the steps that produce nothing (issue #19, items 2-5), fast: no llama.cpp needed.

* A server process tuna started (here ``tests/fault_server.py`` run as a child, the same ``ServerProcess`` code that
  runs llama.cpp) SIGKILLed by its pid mid-run: restarted once and the judge step completes; killed again it stops
  within seconds naming the signal, with no record in the failures file and nothing cached for the killed requests.
* An endpoint that refuses every connection stops a client, a judge step and a sampler within ``unreachable_timeout``,
  naming the URL; refusals shorter than that are waited out, and resets among successes are retried as before.
* A judge or sample step that produces nothing stops with the counts by reason and the failures file.

The real llama.cpp versions (SIGKILL of the embedded judge server, the one-completion smoke test) are in
tests/test_feedback_server.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_server import FaultServer

from tuna.errors import EmptyOutputError
from tuna.feedback.client import ChatRequest, JudgeClient
from tuna.feedback.config import JudgeConfig
from tuna.feedback.endpoint import EndpointDown, EndpointHealth
from tuna.feedback.server import ServerProcess, free_port
from tuna.records import Candidate, Record, read_records, write_records

REPO = Path(__file__).resolve().parents[1]


class FaultServerProcess(ServerProcess):
    """tests/fault_server.py as a child process, started, watched and restarted like the llama.cpp server."""

    kind = "fault server"

    def __init__(self, latency_s: float = 0.0, **kwargs):
        super().__init__(startup_timeout=30.0, **kwargs)
        self.latency_s = latency_s

    def command(self) -> list[str]:
        return [sys.executable, str(REPO / "tests" / "fault_server.py"), "--port", str(self.port),
                "--latency_s", str(self.latency_s)]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def sets_file(path: Path, n: int) -> list[Record]:
    """``n`` candidate sets of 4 distinct responses (synthetic: the fault server's replies do not read them)."""
    recs = [Record(id=f"r{i}", instruction=f"Name a fruit, number {i}.",
                   candidates=[Candidate(text=f"answer {k} to question {i}", source="test") for k in range(4)])
            for i in range(n)]
    write_records(path, recs)
    return recs


def judge_cfg(url: str, cache: Path, **kw) -> JudgeConfig:
    base = dict(model="fault-judge", backend="openai", base_url=url, cache_dir=str(cache), concurrency=2, max_retries=0,
                timeout=10.0, max_tokens=64)
    return JudgeConfig(**{**base, **kw})


def kill_after(srv: ServerProcess, ready, times: int, log: list[float]) -> threading.Thread:
    """SIGKILL the server by its pid once ``ready()``, then again after each restart, ``times`` times in all."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        for k in range(times):
            while srv.generation < k and time.monotonic() < deadline:  # wait for the restart before the next kill
                time.sleep(0.01)
            pid = srv.pid
            if pid is None:
                return
            os.kill(pid, signal.SIGKILL)
            log.append(time.monotonic())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# ----------------------------------------------------------------------------------------------- a child that dies


def test_killed_server_is_restarted_once_and_the_judge_step_completes(tmp_path, caplog) -> None:
    from tuna.feedback.judge import judge_candidates

    recs = sets_file(tmp_path / "sets.jsonl", 10)
    out = tmp_path / "ranked.jsonl"
    kills: list[float] = []
    # 0.3 s per reply and 2 in flight: the kill always lands on requests in flight; max_retries 0, so without the
    # watch those requests would come back as failures.
    with FaultServerProcess(latency_s=0.3) as srv, caplog.at_level(logging.WARNING, logger="tuna.feedback.server"):
        first_pid = srv.pid
        killer = kill_after(srv, lambda: len(lines(out)) >= 2, 1, kills)
        judge_candidates(recs, str(out), judge_cfg(srv.base_url, tmp_path / "cache"))
        killer.join(5)
        assert len(kills) == 1 and srv.generation == 1 and srv.restarts_left == 0 and srv.pid != first_pid
    assert sorted(r.id for r in read_records(out, kind="ranked")) == sorted(r.id for r in recs)
    assert lines(tmp_path / "ranked.failed.jsonl") == []
    warned = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(warned) == 1 and "signal SIGKILL" in warned[0] and f"pid {first_pid}" in warned[0], warned


def test_killed_twice_stops_within_seconds_naming_the_signal(tmp_path) -> None:
    import diskcache

    from tuna.feedback.judge import judge_candidates

    recs = sets_file(tmp_path / "sets.jsonl", 40)
    out, cache = tmp_path / "ranked.jsonl", tmp_path / "cache"
    kills: list[float] = []
    with FaultServerProcess(latency_s=0.3) as srv:
        killer = kill_after(srv, lambda: len(lines(out)) >= 2, 2, kills)
        with pytest.raises(EndpointDown) as err:
            judge_candidates(recs, str(out), judge_cfg(srv.base_url, cache))
        stopped = time.monotonic()
        killer.join(5)
    assert len(kills) == 2
    assert stopped - kills[1] < 5.0, f"stopped {stopped - kills[1]:.1f} s after the second death"
    msg = str(err.value)
    assert "died after 1 restart(s) with signal SIGKILL" in msg and srv.base_url in msg and "its log" in msg, msg
    ranked = read_records(out, kind="ranked") if out.exists() else []
    assert 2 <= len(ranked) < len(recs)
    assert lines(tmp_path / "ranked.failed.jsonl") == []  # no set was marked failed because its server was gone
    with diskcache.Cache(str(cache)) as c:
        assert len(c) == len(ranked)  # only the replies that arrived are cached: nothing for the killed requests


def test_a_stopped_server_is_not_restarted(tmp_path) -> None:
    """Only deaths are restarted: a server tuna stopped itself makes its clients stop, naming it."""
    srv = FaultServerProcess().start()
    client = JudgeClient("fault-judge", base_url=srv.base_url, cache_dir=str(tmp_path / "c"), max_retries=0)
    assert client.health.server is srv  # found by its URL: the client was given nothing but the URL
    assert client.complete_many([ChatRequest(messages=[{"role": "user", "content": "hi"}])])[0].text == "ok"
    srv.stop()
    with pytest.raises(EndpointDown, match="was stopped"):
        client.complete_many([ChatRequest(messages=[{"role": "user", "content": "again"}])])
    assert srv.generation == 0 and srv.proc is None
    client.close()


# ----------------------------------------------------------------------------------------------- refused connections


def test_refused_connections_stop_the_client_within_the_knob(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    delivered: list = []
    c = JudgeClient("m", base_url=url, cache_dir=str(tmp_path / "c"), concurrency=2, max_retries=6, unreachable_timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(EndpointDown) as err:
        c.complete_many([ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(6)],
                        on_reply=lambda req, rep: delivered.append(rep))
    dt = time.monotonic() - t0
    c.close()
    # the openai client alone spends ~21 s of back-off per request (max_retries 6), then returns a failed reply
    assert 1.5 <= dt < 4.5, dt
    assert url in str(err.value) and "ConnectError" in str(err.value) and "unreachable_timeout 1.5 s" in str(err.value)
    assert delivered == [] and c.ledger["failed"] == 0


def test_refused_connections_stop_the_judge_step_with_no_failed_record(tmp_path) -> None:
    from tuna.feedback.judge import judge_candidates

    recs = sets_file(tmp_path / "sets.jsonl", 3)
    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    with pytest.raises(EndpointDown, match="cannot connect to " + url.replace(".", r"\.")):
        judge_candidates(recs, str(tmp_path / "ranked.jsonl"), judge_cfg(url, tmp_path / "cache", max_retries=6,
                                                                          unreachable_timeout=1.0))
    assert time.monotonic() - t0 < 4.0
    assert lines(tmp_path / "ranked.failed.jsonl") == [] and lines(tmp_path / "ranked.jsonl") == []


def test_refused_connections_stop_the_sampler(tmp_path) -> None:
    from tuna.feedback.config import GeneratorConfig, SamplingConfig
    from tuna.feedback.sampling import sample_candidates

    recs = [Record(id=f"i{k}", instruction=f"Say {k}.", candidates=[Candidate(text=str(k), source="gold")]) for k in range(2)]
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = GeneratorConfig(model="m", backend="openai", base_url=url, mode="chat", unreachable_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(EndpointDown, match=url.replace(".", r"\.")):
        sample_candidates(recs, str(tmp_path / "c.jsonl"), gen, SamplingConfig(n=2, logprobs=False, dedup=False))
    assert time.monotonic() - t0 < 4.0


def test_refusals_shorter_than_the_window_are_waited_out(tmp_path) -> None:
    """The server comes up 1 s after the first request: the request waits and succeeds (max_retries 0: the openai
    client alone would have returned a failure)."""
    srv = FaultServerProcess(port=free_port())
    c = JudgeClient("fault-judge", base_url=srv.base_url, cache_dir=str(tmp_path / "c"), max_retries=0, unreachable_timeout=20)
    assert c.health.server is None  # created before the server: a plain URL, watched for refusals only
    starter = threading.Timer(1.0, srv.start)
    starter.start()
    try:
        rep = c.complete_many([ChatRequest(messages=[{"role": "user", "content": "hello"}])])[0]
    finally:
        starter.join()
        srv.stop()
        c.close()
    assert rep.error is None and rep.text == "ok"
    assert c.health.connect_failures >= 1


def test_resets_among_successes_are_still_retried(tmp_path) -> None:
    """Connection resets (after connecting) are the openai client's to retry, as before the watch, even with a
    window far shorter than the run."""
    with FaultServer(rate=0.3, kinds=("reset",), seed=3) as srv:
        with JudgeClient("fault-judge", base_url=srv.base_url, cache_dir=str(tmp_path / "c"), concurrency=2, max_retries=4,
                         unreachable_timeout=0.2) as c:
            reps = c.complete_many([ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(16)])
        figs = srv.figures()
    assert figs["injected"].get("reset", 0) >= 3, figs
    assert len(reps) == 16 and all(r.error is None and r.text == "ok" for r in reps)


def test_the_window_opens_at_the_first_refusal_and_a_success_closes_it() -> None:
    now = [0.0]
    h = EndpointHealth("http://127.0.0.1:9/v1", unreachable_timeout=10.0, clock=lambda: now[0])
    err = ConnectionRefusedError(111, "Connection refused")
    checked = 0
    for t in (0.0, 4.0, 9.9):
        now[0] = t
        assert h.failed_to_connect(err) == pytest.approx(10.0 - t)
        checked += 1
    h.got_through()  # a reply anywhere: the window starts again at the next refusal
    for t in (12.0, 21.9):
        now[0] = t
        h.failed_to_connect(err)
        checked += 1
    now[0] = 22.0
    with pytest.raises(EndpointDown, match=r"cannot connect to http://127\.0\.0\.1:9/v1: every attempt for 10 s"):
        h.failed_to_connect(err)
    assert checked == 5 and h.down is not None
    with pytest.raises(EndpointDown):  # given up for good: every later attempt stops at once
        h.before_attempt()


# ----------------------------------------------------------------------------------------------- steps with 0 outputs


def test_a_judge_that_parses_nothing_stops_with_the_counts(tmp_path) -> None:
    from tuna.feedback.judge import judge_candidates

    recs = sets_file(tmp_path / "sets.jsonl", 4)
    out = tmp_path / "ranked.jsonl"
    with FaultServer(rate=1.0, kinds=("no_ranking",)) as srv:
        with pytest.raises(EmptyOutputError) as err:
            judge_candidates(recs, str(out), judge_cfg(srv.base_url, tmp_path / "cache"))
    msg = str(err.value)
    assert msg.startswith(f"{out}: judge: 0 of 4 candidate sets ranked (unparseable 4)"), msg
    assert f"failures in {tmp_path / 'ranked.failed.jsonl'}" in msg
    failed = lines(tmp_path / "ranked.failed.jsonl")
    assert len(failed) == 4 and all(f["reason"].startswith("unparseable") and f["replies"] for f in failed)
    assert json.loads((tmp_path / "ranked.summary.json").read_text())["failed_by_reason"] == {"unparseable": 4}


def test_a_judge_whose_calls_all_fail_stops_with_the_counts(tmp_path) -> None:
    from tuna.feedback.judge import judge_candidates

    recs = sets_file(tmp_path / "sets.jsonl", 3)
    with FaultServer(rate=1.0, kinds=("500",)) as srv:
        with pytest.raises(EmptyOutputError, match=r"judge: 0 of 3 candidate sets ranked \(error 3\)"):
            judge_candidates(recs, str(tmp_path / "ranked.jsonl"), judge_cfg(srv.base_url, tmp_path / "cache"))


def test_a_judge_with_some_outputs_goes_on(tmp_path) -> None:
    from tuna.feedback.judge import judge_candidates

    recs = sets_file(tmp_path / "sets.jsonl", 12)
    with FaultServer(rate=0.5, kinds=("no_ranking",), seed=2) as srv:
        judge_candidates(recs, str(tmp_path / "ranked.jsonl"), judge_cfg(srv.base_url, tmp_path / "cache"))
    ranked, failed = lines(tmp_path / "ranked.jsonl"), lines(tmp_path / "ranked.failed.jsonl")
    assert ranked and failed and len(ranked) + len(failed) == 12


def test_a_sampler_that_produces_nothing_stops_with_the_counts(tmp_path) -> None:
    from tuna.feedback.config import GeneratorConfig, SamplingConfig
    from tuna.feedback.sampling import sample_candidates

    recs = [Record(id=f"i{k}", instruction=f"Say {k}.", candidates=[Candidate(text=str(k), source="gold")]) for k in range(3)]
    out = tmp_path / "cands.jsonl"
    with FaultServer(rate=1.0, kinds=("empty",)) as srv:  # every reply is the empty string
        gen = GeneratorConfig(model="fault-judge", backend="openai", base_url=srv.base_url, mode="chat")
        with pytest.raises(EmptyOutputError) as err:
            sample_candidates(recs, str(out), gen, SamplingConfig(n=2, logprobs=False, dedup=False))
    msg = str(err.value)
    assert "sample: 0 of 3 instructions got a non-empty sample (all samples empty 3)" in msg, msg
    assert f"failures in {tmp_path / 'cands.failed.jsonl'}" in msg and "model fault-judge, backend openai" in msg
    assert lines(out) == [] and [f["id"] for f in lines(tmp_path / "cands.failed.jsonl")] == ["i0", "i1", "i2"]


def test_rank_of_an_empty_slice_stops_there(tmp_path) -> None:
    from evaluation.verifiable_commands import rank

    sets_file(tmp_path / "sets.jsonl", 2)
    with pytest.raises(EmptyOutputError, match=r"rank \(rouge_l\): 0 of 0 candidate sets ranked: the input slice holds none"):
        rank(str(tmp_path / "sets.jsonl"), str(tmp_path / "ranked.jsonl"), by="rouge_l", offset=5)
