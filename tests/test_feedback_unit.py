"""Fast tests of the feedback logic that needs no model: parsing, ranking policies, dedup, the judge client."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fault_server import send_json

from tuna.feedback.client import ChatRequest, JudgeClient
from tuna.feedback.dedup import pairwise_rouge_l, set_diversity
from tuna.feedback.judge import (
    PAPER_TEMPLATE,
    JudgePolicy,
    build_prompt,
    kendall_tau_b,
    parse_rank_reply,
    rank_record,
    shuffle_orders,
)
from tuna.feedback.scoring import rank_by_scores, score_sampling
from tuna.records import Candidate, Record, parse_record


def _rec(n: int = 4) -> Record:
    return Record(id="r1", instruction="Name a colour.", candidates=[Candidate(text=f"answer {k}", source="s") for k in range(n)])


# ----------------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    "reply, order",
    [
        ("Response 0: 12\n...\nrank: [2, 0, 1, 3, 4]", [2, 0, 1, 3, 4]),
        ("Ranking: [4, 1, 0]", [4, 1, 0]),  # "ranking:" and a shorter list after duplicate removal
        ("**Rank:** [3, 2, 1, 0]\nThe scores were 15, 12, 10.", [3, 2, 1, 0]),  # bold + trailing digits
        ("rank: [1, 1, 0, 2, 3]", [1, 0, 2, 3]),  # repeated index
        ("rank: [0, 7, 1]", [0, 1]),  # out of range
        ("format 'rank: [i, j ,k, l, m]'.\nSo, rank: [2, 3, 0, 1, 4]", [2, 3, 0, 1, 4]),  # echoed format first
        ("RANK: 3 > 1 > 0 (Response 4 is the reference)", [3, 1, 0]),
        ("`rank: [0,2,1,3]`", [0, 2, 1, 3]),
    ],
)
def test_parse_real_reply_shapes(reply: str, order: list[int]) -> None:
    pr = parse_rank_reply(reply, 5)
    assert pr.order == order, pr


def test_parse_failures_keep_reason() -> None:
    pr = parse_rank_reply("All four responses are good, I like the second one best.", 5)
    assert pr.order is None and pr.reason == "no rank list"
    assert parse_rank_reply("rank: [i, j, k]", 5).order is None


def test_parse_response_4_and_score_fallback() -> None:
    reply = "###Response 4:\nBlue.\n\nResponse 0: 5\nResponse 1: 12\nResponse 2: [9]\nResponse 3: 1\n"
    pr = parse_rank_reply(reply, 5)
    assert pr.order is None and pr.response_4 == "Blue."
    pr = parse_rank_reply(reply, 5, fallback_scores=True)
    assert pr.order == [1, 2, 0, 3]


def test_paper_prompt_verbatim_quirks() -> None:
    p = build_prompt(PAPER_TEMPLATE, "INSTR", ["a", "b", "c", "d"])
    assert p.startswith("INSTR\n\n###Response 0:\na\n\n###Response 1:\nb\n")
    assert "responses.Second" in p and "steps.Fourth" in p and "'rank: [i, j ,k, l, m]'" in p


# ----------------------------------------------------------------------------------------------- policies


def _rank(orders: list[list[int]], perms: list[list[int]] | None = None, **pol) -> Record:
    rec = _rec()
    perms = perms or [list(range(4))] * len(orders)
    parsed = [parse_rank_reply("###Response 4:\nref text\n\nrank: " + json.dumps(o), 5) for o in orders]
    out = rank_record(rec, perms, parsed, judge_model="j", method="m", policy=JudgePolicy(**pol), replies=["x"] * len(orders))
    return parse_record(json.loads(out.dump()))  # round trip: validates best-first scores


def test_default_policy_drops_reference_and_appends_missing_last() -> None:
    r = _rank([[4, 2, 0]])
    assert [c.text for c in r.candidates] == ["answer 2", "answer 0", "answer 1", "answer 3"]
    assert [c.score for c in r.candidates] == [4.0, 3.0, 1.5, 1.5]  # missing ones tied at the lowest score
    assert r.ranking.details["missing"] == [1, 3]


def test_include_reference_and_drop_missing() -> None:
    r = _rank([[4, 2, 0]], reference="include", missing="drop")
    assert [c.text for c in r.candidates] == ["ref text", "answer 2", "answer 0"]
    assert r.candidates[0].source == "j"


def test_shuffles_map_back_and_borda() -> None:
    perms = shuffle_orders(4, 2, seed=0, key="r1")
    assert perms == shuffle_orders(4, 2, seed=0, key="r1") and all(sorted(p) == [0, 1, 2, 3] for p in perms)
    # Both calls say original candidate 3 is best, displayed at different positions.
    o1 = [perms[0].index(3), perms[0].index(0), perms[0].index(1), perms[0].index(2)]
    o2 = [perms[1].index(3), perms[1].index(1), perms[1].index(0), perms[1].index(2)]
    r = _rank([o1, o2], perms=perms)
    assert r.ranking.details["order"][0] == 3 and r.ranking.details["order"][-1] == 2
    assert r.candidates[1].score == r.candidates[2].score  # 0 and 1 swapped between calls: tied
    assert 0 < r.ranking.details["kendall_tau"] < 1


def test_kendall() -> None:
    assert kendall_tau_b([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert kendall_tau_b([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0


def test_teacher_scores_and_beta() -> None:
    rec = _rec(3)
    for c, lps in zip(rec.candidates, [[-1.0, -1.0], [-0.5] * 8, [-3.0]]):
        c.token_logprobs = lps
    r = score_sampling(rec, beta=1.0)
    assert [c.text for c in r.candidates] == ["answer 1", "answer 0", "answer 2"]
    assert r.ranking.method == "logprob/len^1.0" and r.ranking.by == "teacher"
    r0 = rank_by_scores(rec, [-2.0, -4.0, -3.0], [2, 8, 1], beta=0.0, model="t", source="forced")
    assert [c.score for c in r0.candidates] == [-2.0, -3.0, -4.0]  # beta 0 = raw sum


def test_dedup_rouge() -> None:
    assert pairwise_rouge_l(["the cat sat", "the cats sat", "dogs run fast"])[0] == pytest.approx(1.0)  # stemmer
    mean, mx = set_diversity(["a b c", "x y z"])
    assert mean == 0.0 and mx == 0.0


# ----------------------------------------------------------------------------------------------- client


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A scripted endpoint: the first request gets 429 with Retry-After, prompts containing FAIL get 400."""

    calls = 0
    seen_429 = False

    def log_message(self, *a) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        if not type(self).seen_429:
            type(self).seen_429 = True
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        text = body["messages"][-1]["content"]
        if "FAIL" in text:
            return self._send(400, {"error": {"message": "bad"}})
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "echo " + text}}],
                         "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}})

    def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
        send_json(self, code, obj, headers)


@pytest.fixture()
def fake_server():
    _FakeOpenAI.calls, _FakeOpenAI.seen_429 = 0, False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def _reqs(texts: list[str]) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": t}], key=str(i)) for i, t in enumerate(texts)]


def test_client_retry_cache_failures_not_cached(fake_server, tmp_path) -> None:
    seen = []
    c = JudgeClient("m", base_url=fake_server, cache_dir=str(tmp_path / "c"), concurrency=2, max_retries=2,
                    price_per_1k_prompt=1.0, price_per_1k_completion=2.0)
    reps = c.complete_many(_reqs(["a", "b", "FAIL"]), on_reply=lambda q, r: seen.append(q.key))
    assert [r.text for r in reps[:2]] == ["echo a", "echo b"] and reps[2].error.startswith("http 400")
    assert sorted(seen) == ["0", "1", "2"]
    led = c.ledger
    assert led["calls"] == 3 and led["failed"] == 1 and led["cost"] == pytest.approx(4.0)  # 2 x (1 + 1)
    calls_before = _FakeOpenAI.calls
    reps2 = c.complete_many(_reqs(["a", "b", "FAIL"]))
    assert reps2[0].cached and reps2[1].cached and not reps2[2].cached  # the failure was not cached: retried
    assert _FakeOpenAI.calls == calls_before + 1
    c.close()


def test_client_budget_stops_cleanly(fake_server, tmp_path) -> None:
    c = JudgeClient("m", base_url=fake_server, cache_dir=str(tmp_path / "c"), concurrency=1, max_retries=2,
                    price_per_1k_prompt=1.0, price_per_1k_completion=2.0, max_cost=2.5)
    reps = c.complete_many(_reqs([f"q{i}" for i in range(5)]))
    assert len(reps) == 5
    assert reps[0].text == "echo q0"
    errors = [r.error for r in reps]
    assert "budget" in errors and all(e in (None, "budget") for e in errors)
    assert c.ledger["cost"] <= 2.5
    c.close()


def test_rank_grammar_lists_every_order_and_each_parses() -> None:
    import itertools
    import re

    from tuna.feedback.client import cache_key
    from tuna.feedback.judge import rank_grammar

    g = rank_grammar(4)
    alts = re.findall(r'"([0-9, ]+)"', g)
    assert len(alts) == 24 and len(set(alts)) == 24
    for a in alts:  # every reply the grammar allows is a complete ranking to the parser
        order = parse_rank_reply(f"rank: [{a}]", 5).order
        assert sorted(order) == [0, 1, 2, 3] and order == [int(x) for x in a.split(", ")]
    assert set(alts) == {", ".join(map(str, p)) for p in itertools.permutations(range(4))}
    assert "idx" in rank_grammar(8)  # too many orders to list: any list of the indices
    plain = ChatRequest(messages=[{"role": "user", "content": "x"}])
    constrained = ChatRequest(messages=[{"role": "user", "content": "x"}], grammar=g)
    assert cache_key("m", plain) != cache_key("m", constrained)
