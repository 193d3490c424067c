"""The judge through the Batch API, against a local fake of the Files + Batches endpoints (tests/fake_batch_api.py):
splitting within the limits, partial failures, expiry with partial output, malformed lines, cancellation, kills at
the worst moments then resume without a second submission, re-asking unparseable replies, the ledger at batch prices.
Offline and fast (polls every 10 ms)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_batch_api import FakeBatchAPI, default_reply  # noqa: E402

from tuna.feedback.batch import BatchClient, BatchSettings, PartWriter, StateLog, parse_result_line, request_line  # noqa: E402
from tuna.feedback.client import ChatReply, ChatRequest, cache_key  # noqa: E402
from tuna.feedback.prices import PRICES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4-0613"
FAST = dict(poll_interval=0.01, poll_max_interval=0.02)


def reqs(n: int, pad: int = 0) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"q{i} " + "x" * pad + "\n###Response 0:\na\n###Response 1:\nb\n"}],
                        max_tokens=64, key=str(i)) for i in range(n)]


def client(fake: FakeBatchAPI, tmp_path: Path, **kw) -> BatchClient:
    settings = BatchSettings(**{**FAST, **kw.pop("settings", {})})
    return BatchClient(MODEL, tmp_path / "state", base_url=fake.base_url, cache_dir=str(tmp_path / "cache"), settings=settings, **kw)


def expected_cost(calls: int, pt: int = 100, ct: int = 10) -> float:
    p = PRICES[MODEL]
    return calls * (pt * p.prompt_per_1m + ct * p.completion_per_1m) / 1e6 * 0.5


# ----------------------------------------------------------------------------------------------- files


def test_part_writer_splits_by_count_and_bytes(tmp_path):
    lines = [request_line(f"{i:064d}", MODEL, r) for i, r in enumerate(reqs(10, pad=100))]
    size = len(lines[0])
    w = PartWriter(tmp_path, 1, max_requests=4, max_bytes=10**6)
    for i, ln in enumerate(lines):
        w.write(str(i), ln)
    assert [p.n for p in w.close()] == [4, 4, 2]
    w = PartWriter(tmp_path / "b", 1, max_requests=100, max_bytes=3 * size + 1)
    for i, ln in enumerate(lines):
        w.write(str(i), ln)
    parts = w.close()
    assert [p.n for p in parts] == [3, 3, 3, 1] and all(p.bytes <= 3 * size + 1 for p in parts)
    assert all(Path(p.path).read_bytes().count(b"\n") == p.n for p in parts)
    from tuna.errors import TunaError

    with pytest.raises(TunaError, match="over the batch file limit"):
        PartWriter(tmp_path / "c", 1, 10, size - 1).write("big", lines[0])


def test_result_lines_malformed_and_errors():
    ok = parse_result_line(json.dumps({"custom_id": "a", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "rank: [1, 0]"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}}}).encode())
    assert (ok.text, ok.prompt_tokens, ok.completion_tokens) == ("rank: [1, 0]", 5, 2)
    torn = parse_result_line(b'{"id": "x", "custom_id": "abc", "response": {"status_co')
    assert torn.custom_id == "abc" and torn.malformed
    assert parse_result_line(b"garbage").custom_id is None
    exp = parse_result_line(json.dumps({"custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "late"}}).encode())
    assert exp.error.startswith("batch_expired")
    http = parse_result_line(json.dumps({"custom_id": "c", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}}).encode())
    assert http.error.startswith("http 500")
    assert parse_result_line(json.dumps({"custom_id": "d", "response": {"status_code": 200, "body": {"choices": []}}}).encode()).malformed


def test_state_log_survives_a_torn_line(tmp_path):
    log = StateLog(tmp_path / "state.jsonl")
    log.append({"ev": "part", "part": "p0001", "sha256": "s", "n": 1, "bytes": 2, "path": "parts/p0001.jsonl"})
    with open(tmp_path / "state.jsonl", "ab") as f:
        f.write(b'{"ev": "created", "part": "p00')  # SIGKILL mid-write
    again = StateLog(tmp_path / "state.jsonl")
    assert list(again.parts()) == ["p0001"] and "batch_id" not in again.parts()["p0001"]


# ----------------------------------------------------------------------------------------------- passes


def test_clean_pass_split_in_two_by_size_ledger_at_batch_prices(tmp_path):
    rs = reqs(10, pad=200)
    size = len(request_line(cache_key(MODEL, rs[0]), MODEL, rs[0]))
    limit = 6 * size  # the fake enforces the same limit: a 10-request file would fail validation
    with FakeBatchAPI(max_bytes=limit) as fake:
        with client(fake, tmp_path, settings=dict(max_bytes=limit)) as c:
            out = c.complete_many(rs)
            led = c.ledger
        assert sorted(fake.creates.values()) == [1, 1] and fake.uploads == 2
        sizes = [len(f["content"]) for f in fake.files.values() if f["meta"]["purpose"] == "batch"]
        assert len(sizes) == 2 and max(sizes) <= limit
        statuses_seen = {b["status"] for b in fake.batches.values()}
        assert statuses_seen == {"completed"}
    assert all(r.error is None and r.text.startswith("Response 0") for r in out)
    assert led["calls"] == 10 and led["batches_created"] == 2
    assert led["cost"] == pytest.approx(expected_cost(10)) and led["cost_at_sync_prices"] == pytest.approx(2 * led["cost"])
    # the cache knows the batch price; a second pass sends nothing
    import diskcache

    with diskcache.Cache(str(tmp_path / "cache")) as cache:
        hit = cache.get(cache_key(MODEL, rs[0]))
    assert hit["price_mode"] == "batch" and hit["cost"] == pytest.approx(expected_cost(1))
    with FakeBatchAPI() as fake2:
        with client(fake2, tmp_path) as c:
            again = c.complete_many(rs)
        assert not fake2.creates and [r.text for r in again] == [r.text for r in out] and all(r.cached for r in again)


def test_file_over_the_fake_limit_fails_validation_and_is_reported(tmp_path):
    rs = reqs(4, pad=200)
    with FakeBatchAPI(max_requests=2) as fake:  # the client believes 50,000: the API says no
        with client(fake, tmp_path, settings=dict(max_submits=2)) as c:
            out = c.complete_many(rs)
        assert sum(fake.creates.values()) == 2 and all(b["status"] == "failed" for b in fake.batches.values())
    assert all(r.error and "failed after 2 submission(s)" in r.error for r in out)


def test_partial_failures_resubmit_only_the_failed(tmp_path):
    rs = reqs(8)
    bad = {cache_key(MODEL, rs[i]) for i in (1, 5)}
    with FakeBatchAPI(error_if=lambda cid, body, seen: 500 if cid in bad and seen == 0 else None) as fake:
        with client(fake, tmp_path) as c:
            out = c.complete_many(rs)
            led = c.ledger
        assert len(fake.creates) == 2
        second = [f for f in fake.files.values() if f["meta"]["filename"].endswith("p0002.jsonl")][0]["content"]
        assert {json.loads(ln)["custom_id"] for ln in second.splitlines()} == bad  # only the failed ones
    assert all(r.error is None for r in out) and led["resubmitted"] == 2 and led["calls"] == 8


def test_expired_batch_with_partial_output(tmp_path):
    rs = reqs(9)
    with FakeBatchAPI(expire_after={1: 4}) as fake:
        with client(fake, tmp_path) as c:
            out = c.complete_many(rs)
            led = c.ledger
        b1 = fake.batches[fake.order[0]]
        assert b1["status"] == "expired" and b1["request_counts"]["completed"] == 4 and b1["request_counts"]["failed"] == 5
        assert len(fake.order) == 2 and fake.batches[fake.order[1]]["request_counts"]["total"] == 5
    assert all(r.error is None for r in out) and led["calls"] == 9 and led["resubmitted"] == 5


def test_malformed_output_line_costs_a_reask_not_the_pass(tmp_path):
    rs = reqs(5)
    torn = cache_key(MODEL, rs[2])
    with FakeBatchAPI(malformed_if=lambda cid, seen: cid == torn and seen == 0) as fake:
        with client(fake, tmp_path) as c:
            out = c.complete_many(rs)
            led = c.ledger
        assert len(fake.order) == 2
    assert all(r.error is None for r in out) and led["malformed_lines"] == 1 and led["resubmitted"] == 1


def test_cancelled_batch_reports_the_rest_and_caches_nothing_of_it(tmp_path):
    rs = reqs(6)
    with FakeBatchAPI(cancel_batches={1}) as fake:
        with client(fake, tmp_path) as c:
            out = c.complete_many(rs)
        assert len(fake.order) == 1 and fake.batches[fake.order[0]]["status"] == "cancelled"
    ok = [r for r in out if r.error is None]
    assert len(ok) == 3 and all("batch cancelled" in r.error for r in out if r.error)
    with FakeBatchAPI() as fake2:  # the next run asks only the 3 unanswered ones
        with client(fake2, tmp_path) as c:
            again = c.complete_many(rs)
        assert fake2.batches[fake2.order[0]]["request_counts"]["total"] == 3
    assert all(r.error is None for r in again)


def test_budget_stops_before_submitting(tmp_path):
    rs = reqs(10, pad=4000)  # ~1000 prompt tokens each: ~$0.0155 per request at batch prices
    with FakeBatchAPI() as fake:
        with client(fake, tmp_path, max_cost=0.05) as c:
            out = c.complete_many(rs)
        total = sum(b["request_counts"]["total"] for b in fake.batches.values())
    assert 0 < total < 10 and sum(r.error == "budget" for r in out) == 10 - total


def test_a_refused_create_stops_with_one_line_and_the_rerun_resumes(tmp_path):
    from tuna.errors import TunaError

    rs = reqs(4)
    with FakeBatchAPI() as fake:
        fake.refuse_creates = 1
        with client(fake, tmp_path) as c, pytest.raises(TunaError, match="Enqueued token limit.*re-run the same command"):
            c.complete_many(rs)
        with client(fake, tmp_path) as c:
            out = c.complete_many(rs)
        assert dict(fake.creates) == {"p0001": 1} and fake.uploads == 1  # the uploaded file is reused, not uploaded again
    assert all(r.error is None for r in out)


# ----------------------------------------------------------------------------------------------- kills


CHILD = """
from tuna.feedback.batch import BatchClient, BatchSettings
from tuna.feedback.client import ChatRequest
reqs = [ChatRequest(messages=[{{"role": "user", "content": f"q{{i}} \\n###Response 0:\\na\\n###Response 1:\\nb\\n"}}], max_tokens=64,
                    key=str(i)) for i in range(10)]
c = BatchClient({model!r}, {state!r}, base_url={url!r}, cache_dir={cache!r},
                settings=BatchSettings(max_requests=4, poll_interval=0.01, poll_max_interval=0.02))
c.complete_many(reqs)
print("FINISHED")
"""


def run_child_until_killed(fake: FakeBatchAPI, tmp_path: Path, kill_at: str) -> None:
    code = CHILD.format(model=MODEL, state=str(tmp_path / "state"), url=fake.base_url, cache=str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TUNA_PROGRESS": "0"}
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fake.kill_pid, fake.kill_at = p.pid, kill_at
    out, err = p.communicate(timeout=60)
    assert p.returncode == -9, (p.returncode, out, err[-2000:])


@pytest.mark.parametrize("kill_at", ["create", "retrieve:2", "retrieve:5"])
def test_sigkill_then_resume_submits_each_batch_once(tmp_path, kill_at):
    with FakeBatchAPI() as fake:
        run_child_until_killed(fake, tmp_path, kill_at)
        created_before = sum(fake.creates.values())
        assert created_before >= 1
        with client(fake, tmp_path, settings=dict(max_requests=4)) as c:
            out = c.complete_many(reqs(10))
            led = c.ledger
        assert dict(fake.creates) == {"p0001": 1, "p0002": 1, "p0003": 1}  # exactly one create per batch file
        assert fake.uploads == 3
    assert all(r.error is None for r in out)
    if kill_at == "create":
        assert led["batches_adopted"] == 1  # found by its metadata, not created again
    assert led["batches_created"] == 3 - created_before  # the resumed run created only what the killed one had not


def test_batches_of_an_interrupted_later_round_are_joined_and_stored_not_resubmitted(tmp_path):
    """A kill during a re-ask round leaves batches of requests the resumed run's first round does not ask: they are
    waited for and their replies stored, and the round that asks them finds them (no second submission)."""
    with FakeBatchAPI() as fake:
        run_child_until_killed(fake, tmp_path, "retrieve:2")  # reqs(10) in 3 files, in flight
        other = reqs(3, pad=5)
        with client(fake, tmp_path, settings=dict(max_requests=4)) as c:
            assert all(r.error is None for r in c.complete_many(other))
        with client(fake, tmp_path, settings=dict(max_requests=4)) as c:
            again = c.complete_many(reqs(10))
            led = c.ledger
        assert dict(fake.creates) == {"p0001": 1, "p0002": 1, "p0003": 1, "p0004": 1}
    assert all(r.error is None and r.cached for r in again) and led["stored"] == 10 and led["batches_created"] == 0


# ----------------------------------------------------------------------------------------------- the judge


def judge_sets(tmp_path: Path, n: int = 6) -> list:
    from tuna.records import Candidate, Record

    return [Record(id=f"r{i}", instruction=f"Say {i}.", candidates=[Candidate(text=f"answer {i}.{k}") for k in range(4)])
            for i in range(n)]


def test_judge_in_batch_mode_reasks_unparseable_and_ledger_at_batch_prices(tmp_path, monkeypatch):
    from tuna.feedback.config import JudgeConfig
    from tuna.feedback.judge import judge_candidates
    from tuna.records import read_records

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    recs = judge_sets(tmp_path)

    def reply(body, seen):  # records r1 and r4 get prose first; r4 twice more: it fails on all 3 attempts
        text = body["messages"][-1]["content"]
        if "Say 1." in text and seen == 0 or "Say 4." in text:
            return "These responses are all reasonable."
        return default_reply(body, seen)

    with FakeBatchAPI(reply=reply) as fake:
        cfg = JudgeConfig(model=MODEL, backend="openai", base_url=fake.base_url, mode="batch", cache_dir=str(tmp_path / "cache"),
                          batch_poll_interval=0.01, batch_poll_max_interval=0.02, reasks=2)
        out = tmp_path / "judged.jsonl"
        judge_candidates(recs, str(out), cfg)
        assert len(fake.order) == 3  # the first asks, then one re-ask round per attempt
    ranked = {r.id: r for r in read_records(out)}
    assert set(ranked) == {"r0", "r1", "r2", "r3", "r5"}
    att = ranked["r1"].provenance["judge"]["attempts"][0]
    assert len(att) == 2 and att[0]["text"].startswith("These") and "rank" in att[1]["text"]
    failed = [json.loads(ln) for ln in (tmp_path / "judged.failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["r4"] and len(failed[0]["attempts"][0]) == 3
    summ = json.loads((tmp_path / "judged.summary.json").read_text())
    assert summ["reasks"] == 3 and summ["mode"] == "batch"
    assert summ["ledger"]["cost"] == pytest.approx(expected_cost(6 + 1 + 1 + 1))
    # unparseable replies were not cached: the next run asks r4 again (and only r4)
    import diskcache

    with diskcache.Cache(str(tmp_path / "cache")) as cache:
        texts = [cache.get(k)["text"] for k in cache.iterkeys()]
    assert len(texts) == 5 and not any(t.startswith("These") for t in texts)  # r0, r2, r3, r5 and r1's second


def test_reask_logic_with_a_stub_client():
    """The sync path: each attempt a new cache key and seed; an API error ends the attempts."""
    from tuna.feedback.reask import RESEED, complete_with_reask

    class Stub:
        def __init__(self):
            self.asked: list[ChatRequest] = []

        def complete_many(self, requests, *, desc, on_reply, cache_if):
            for r in requests:
                self.asked.append(r)
                i = int(r.key)
                if i == 2:
                    rep = ChatReply(None, "http 500", False, 0, 0, 0.0)
                elif i == 1 and r.attempt < 2 or i == 3:
                    rep = ChatReply("prose", None, False, 1, 1, 0.0)
                else:
                    rep = ChatReply("rank: [0, 1]", None, False, 1, 1, 0.0)
                assert cache_if(r, rep.text or "") == (rep.text == "rank: [0, 1]")
                on_reply(r, rep)

    base = [ChatRequest(messages=[{"role": "user", "content": str(i)}], seed=7, key=str(i)) for i in range(4)]
    stub = Stub()
    res = complete_with_reask(stub, base, accept=lambda r, t: t.startswith("rank"), reasks=2)
    assert [len(a) for a in res] == [1, 3, 1, 3]
    assert res[1][-1].text.startswith("rank") and res[3][-1].text == "prose" and res[2][-1].error
    seeds = [r.seed for r in stub.asked if r.key == "1"]
    assert seeds == [7, 7 + RESEED, 7 + 2 * RESEED]
    keys = {cache_key("m", r) for r in stub.asked if r.key == "3"}
    assert len(keys) == 3


# ----------------------------------------------------------------------------------------------- dry run


def test_dry_run_counts_files_and_prices_both_modes(tmp_path, capsys):
    from tuna.feedback.config import JudgeConfig
    from tuna.feedback.dryrun import estimate, print_estimate

    rs = reqs(7, pad=396)
    cfg = JudgeConfig(model=MODEL, backend="openai", batch_max_requests=3, expected_completion_tokens=50)
    est = estimate(rs, cfg)
    assert est["requests"] == 7 and est["batch_files"] == 3 and est["completion_tokens"] == 7 * 50
    assert est["price_batch"] == pytest.approx(est["price_sync"] / 2, abs=0.01)
    assert est["prompt_tokens"] == sum(len(r.messages[0]["content"]) // 4 + 7 for r in rs)
    print_estimate(est, title="t")
    assert "Batch API" in capsys.readouterr().out


def test_judge_dry_run_with_stand_in_candidates_sends_nothing(tmp_path, capsys, shared_data):
    from tuna.feedback.commands import JudgeJob, run_judge

    out = tmp_path / "judged.jsonl"
    run_judge(JudgeJob(input=str(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz"), out=str(out), limit=30,
                       model=MODEL, backend="openai", base_url="http://127.0.0.1:9/v1", mode="batch", dry_run=True,
                       stand_in_candidates=4, batch_max_requests=12))
    text = capsys.readouterr().out
    assert "requests               30" in text and "batch files            3" in text and "price, Batch API" in text
    assert not out.exists() or out.read_text() == ""


# ----------------------------------------------------------------------------------------------- Vicuna reviews


def test_vicuna_reviews_through_the_batch_api(tmp_path, monkeypatch, shared_data):
    from evaluation.commands import VicunaJob, run_vicuna
    from tuna.feedback.config import JudgeConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    with FakeBatchAPI() as fake:
        # the reviewer's batch polls every 10 ms here (30 s by default)
        judge = JudgeConfig(model=MODEL, backend="openai", base_url=fake.base_url, mode="batch", batch_poll_interval=0.01,
                            batch_poll_max_interval=0.02)
        path = run_vicuna(VicunaJob(answers="vicuna-13b", opponent="gpt35", data=str(shared_data / "vicuna_qa"), limit=3,
                                    orders="both", judge=judge, out_root=str(tmp_path / "runs")))
        assert sum(fake.creates.values()) == 1 and fake.batches[fake.order[0]]["request_counts"]["total"] == 6
    res = json.loads(Path(path).read_text())
    m = res["metrics"]
    assert m["judge_ledger"]["mode"] == "batch" and m["judge_ledger"]["calls"] == 6
    assert m["error"] == 0 and m["both_orders"]["error"] == 0


# ----------------------------------------------------------------------------------------------- reliability figures


def test_reliability_set_metrics_by_hand():
    from tuna.feedback.reliability import Ask, bootstrap, pair_flip, set_metrics

    assert pair_flip([0, 1, 2], [2, 1, 0], 3) == 1.0 and pair_flip([0, 1, 2], [0, 1, 2], 3) == 0.0
    # order 0 shows ids as they are, order 1 reversed; the judge always ranks the one shown first as best
    asks = [Ask(0, 0, [0, 1, 2, 3], [0, 1, 2, 3]), Ask(0, 1, [0, 1, 2, 3], [0, 1, 2, 3]),
            Ask(1, 0, [3, 2, 1, 0], [3, 2, 1, 0]), Ask(1, 1, [3, 2, 1, 0], [3, 2, 1, 0])]
    m = set_metrics(asks, 4, ref=[4.0, 3.0, 2.0, 1.0])
    assert m["top1_flip_same"] == 0.0 and m["top1_flip_cross"] == 1.0 and m["pair_flip_cross"] == 1.0
    assert m["tau_same"] == pytest.approx(1.0) and m["tau_cross"] == pytest.approx(-1.0)
    assert m["first_at_position"] == [1.0, 0.0, 0.0, 0.0]  # pure position bias
    assert m["ref_top1"] == 0.5 and m["ref_pair_acc"] == 0.5 and m["ref_tau"] == pytest.approx(0.0)
    mean, lo, hi = bootstrap([0.0, 1.0] * 20, b=500)
    assert mean == 0.5 and lo < 0.5 < hi


# ----------------------------------------------------------------------------------------------- the whole pass


def test_tuna_judge_batch_pass_with_faults_and_a_kill_ends_accounted_for(tmp_path):
    """`tuna judge --mode batch` (the real command, a child process) against the fake with injected faults: a request
    failing with 500 once, the first batch expiring with partial output, a torn output line, prose instead of a
    ranking once; SIGKILLed mid-poll, then the same command again. Every set ends ranked (or in the failures file),
    each batch file was created once, only failed requests were submitted again, and the ledger is at batch prices."""
    from tuna.records import Candidate, Record, read_records, write_records

    sets = [Record(id=f"s{i}", instruction=f"Name thing {i}.", candidates=[Candidate(text=f"thing {i}.{k}") for k in range(4)])
            for i in range(12)]
    write_records(tmp_path / "cands.jsonl", sets)
    failed_once: set[str] = set()

    def error_if(cid, body, seen):
        if "thing 3." in body["messages"][-1]["content"] and seen == 0:
            failed_once.add(cid)
            return 500
        return None

    torn: set[str] = set()

    def malformed_if(cid, seen):
        return seen == 0 and cid in torn

    def reply(body, seen):
        text = body["messages"][-1]["content"]
        if "thing 5." in text and seen == 0:
            return "I cannot decide."
        if "thing 7." in text and seen == 0:  # its output line will be torn in half
            torn.add(cache_key(MODEL, ChatRequest(messages=body["messages"], temperature=body["temperature"],
                                                  max_tokens=body["max_tokens"], top_p=body["top_p"])))
        return default_reply(body, seen)

    with FakeBatchAPI(error_if=error_if, malformed_if=malformed_if, reply=reply, expire_after={1: 6}, in_progress_polls=2) as fake:
        cmd = [sys.executable, "-m", "tuna_recipes", "judge", "--input", str(tmp_path / "cands.jsonl"), "--out", str(tmp_path / "judged.jsonl"),
               "--model", MODEL, "--backend", "openai", "--base_url", fake.base_url, "--mode", "batch", "--batch_max_requests", "5",
               "--batch_poll_interval", "0.01", "--batch_poll_max_interval", "0.02", "--cache_dir", str(tmp_path / "cache")]
        env = {**os.environ, "PYTHONPATH": str(REPO), "TUNA_PROGRESS": "0", "OPENAI_API_KEY": "sk-test-not-a-key"}
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fake.kill_pid, fake.kill_at = p.pid, "retrieve:4"
        _, err = p.communicate(timeout=120)
        assert p.returncode == -9, err[-2000:]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert all(v == 1 for v in fake.creates.values())  # no batch file created twice
        submitted: dict[str, int] = {}
        for f in fake.files.values():
            if f["meta"]["purpose"] == "batch":
                for ln in f["content"].splitlines():
                    cid = json.loads(ln)["custom_id"]
                    submitted[cid] = submitted.get(cid, 0) + 1
        expired = {json.loads(ln)["custom_id"] for f in fake.files.values() if f["meta"]["purpose"] == "batch_output"
                   for ln in f["content"].splitlines() if b"batch_expired" in ln}
        again = {c for c, n in submitted.items() if n > 1}
        assert again and again <= failed_once | expired | torn  # only failed, expired or torn requests were submitted again
    ranked = {r.id for r in read_records(tmp_path / "judged.jsonl")}
    failed = {json.loads(ln)["id"] for ln in (tmp_path / "judged.failed.jsonl").read_text().splitlines()}
    assert ranked | failed == {s.id for s in sets} and ranked == {s.id for s in sets}
    summ = json.loads((tmp_path / "judged.summary.json").read_text())
    led = summ["ledger"]
    assert led["mode"] == "batch" and led["cost"] == pytest.approx(expected_cost(led["calls"]))
    assert summ["reasks"] == 1
