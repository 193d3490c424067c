"""The judge request is the one the released gpt-eval.py sends; its parser is checked against the released one.

The released request and parser are written out below from gpt-eval.py (L39-51, L126-153), independently of
tuna's code, and compared byte for byte with what ``tuna judge`` sends to a recording OpenAI-compatible server on
loopback.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fault_server import send_json

from tuna.feedback.commands import JudgeJob, run_judge
from tuna.feedback.judge import PAPER_TEMPLATE, build_prompt, judge_instruction, parse_rank_reply, parse_rank_reply_released
from tuna.importers import import_alpaca, import_tuna_gpt4_ranking
from tuna.prompts import alpaca_prompt
from tuna.records import Candidate, Record, read_records, write_records

RELEASED = Path(__file__).parent / "fixtures" / "released"

# ----------------------------------------------------------------------------------------------- gpt-eval.py

SYSTEM_PROMPT = "You are a professional and experienced data annotator."


def released_prompt(instruct: str, resp: list[str]) -> str:
    """gpt-eval.py L126-138 (shuffle_responses=False, the default)."""
    response_str = [f"###Response {j}:\n{r}\n" for j, r in enumerate(resp)]
    prompt = instruct + "\n\n" + "\n".join(response_str)
    prompt += (
        "\n\nWe would like you to rate Response 0/1/2/3 in reply to the given instruction displayed above.\n"
        "First, identify if the instruction requires open-ended or close-ended responses."
        "Second, you need to generate one high quality '###Response 4' in answer to the instruction. It needs to have the same format as other responses and will be used as a reference later.\n"
        "Third, identify if there are duplicate responses and keep only one of the duplicate responses for the following steps."
        "Fourth, compare Response 4 with Response 0/1/2/3/4 and assign each response an overall score on a scale of 0 to 15 where a higher score indicates better overall quality. For an open-ended instruction, please rate based on the relevance (score 0 to 5), level of details/justification: (score 0 to 5) and accuracy (score 0 to 5) of each response; for a close-ended instruction, please rate based on the accuracy (score 0 to 5), level of details/justification (score 0 to 5) and clarity (score 0 to 5) of each response. The ratings should have the format: 'Response k: [sum of the 3 individual scores you give to response k]'.\n"
        "Last, rank the responses in decreasing order of their overall scores. The ranking should have the format: 'rank: [i, j ,k, l, m]'. If there are duplicate responses, keep only one of them in the rank, that is, the ranking may become: 'rank: [i, j, k, l]', 'rank: [i, j, k]' 'rank: [i, j]' or even 'rank: [i]'.\n"
    )
    return prompt


def released_request(model: str, prompt: str) -> dict:
    """The arguments of openai.ChatCompletion.create in gpt-eval.py L43-51 with GroupEval's defaults (temperature
    1.0, top_p 1.0; max_tokens is hard-coded 2048). ``n=1`` is the API's default, so tuna leaves it out."""
    return {"model": model, "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            "max_tokens": 2048, "temperature": 1.0, "top_p": 1.0}


def released_parse(gpt_resp: str) -> tuple[str, list[int], str]:
    """gpt-eval.py L145-153: (rank_str, rank_list, response_4)."""
    rank_str = gpt_resp.lower().split("rank:")[1].strip() if "rank:" in gpt_resp.lower() else gpt_resp.lower().split("ranking:")[1].strip()
    pattern = r'###\s*Response 4:(.*?)\n\n'
    response_4 = re.search(pattern, gpt_resp, re.DOTALL)
    extracted_text = response_4.group(1).strip() if response_4 else ""
    rank_list = [int(n) for n in re.findall(r'\d+', rank_str)]
    return rank_str, rank_list, extracted_text


# ----------------------------------------------------------------------------------------------- prompts


def test_prompt_bytes_equal_the_released_prompt():
    rows = json.loads((RELEASED / "gpt-4-ranking.json").read_text())
    alpaca = import_alpaca(RELEASED / "alpaca_data.json")
    checked = 0
    for row in rows:
        # a candidate set as tuna sample writes it for a released prompt, and the stored GPT-4 request
        rec = Record(id=str(row["id"]), instruction="x", prompt=row["instruct"],
                     candidates=[Candidate(text=t) for t in row["generation"]])
        ours = build_prompt(PAPER_TEMPLATE, judge_instruction(rec), row["generation"])
        assert ours.encode() == released_prompt(row["instruct"], row["generation"]).encode() == row["prompt"].encode()
        checked += 1
    for a in alpaca:  # records made from Alpaca examples: the Alpaca template, as non_interactive_generate.py renders it
        texts = ["a {responses} b", "{instruction}", "", "d\n"]
        ours = build_prompt(PAPER_TEMPLATE, judge_instruction(a.model_copy(update={"candidates": [Candidate(text=t) for t in texts]})), texts)
        assert ours == released_prompt(alpaca_prompt(a.instruction, a.input), texts)
        assert ours.endswith("or even 'rank: [i]'.\n")
        checked += 1
    assert checked == 10


class _Recorder(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that keeps each request's raw body and answers with a scripted reply."""

    bodies: list[bytes] = []
    replies: dict[str, str] = {}

    def log_message(self, *a) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(raw)
        body = json.loads(raw)
        content = type(self).replies.get(body["messages"][-1]["content"], "rank: [0]")
        send_json(self, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


@pytest.fixture()
def recorder():
    _Recorder.bodies, _Recorder.replies = [], {}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_the_request_tuna_judge_sends_is_the_released_one(recorder, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNA_TEST_KEY", "sk-test")
    rows = json.loads((RELEASED / "gpt-4-ranking.json").read_text())
    _Recorder.replies = {row["prompt"]: row["gpt_eval"] for row in rows}
    cands = tmp_path / "cands.jsonl"
    write_records(cands, [Record(id=str(row["id"]), instruction="x", prompt=row["instruct"],
                                 candidates=[Candidate(text=t) for t in row["generation"]]) for row in rows])
    out = tmp_path / "ranked.jsonl"
    run_judge(JudgeJob(input=str(cands), out=str(out), model="gpt-4-0314", backend="openai", base_url=recorder, api_key_env="TUNA_TEST_KEY",
          cache_dir=str(tmp_path / "cache"), concurrency=1, parser="released"))
    # 4 requests, and record 1003's unusable reply asked again twice (reasks: 2) with the very same bytes
    assert len(_Recorder.bodies) == 4 + 2 and len(set(_Recorder.bodies)) == 4
    raw_by_prompt = {json.loads(b)["messages"][-1]["content"]: b for b in _Recorder.bodies}
    for row in rows:
        raw = raw_by_prompt[row["prompt"]]
        assert json.loads(raw) == released_request("gpt-4-0314", released_prompt(row["instruct"], row["generation"]))
        assert json.dumps(row["prompt"])[1:-1].encode() in raw  # the user message's bytes, as JSON escapes them
    # the released parser, applied by tuna judge, gives the orders the released file stored (1003: none usable)
    ranked = {r.id: r for r in read_records(out)}
    imported = {r.id: r for r in import_tuna_gpt4_ranking(RELEASED / "gpt-4-ranking.json")}
    assert sorted(ranked) == sorted(imported) == ["1001", "1004", "1005"]
    for rid in ranked:
        assert [c.text for c in ranked[rid].candidates] == [c.text for c in imported[rid].candidates]
        assert [c.score for c in ranked[rid].candidates] == [c.score for c in imported[rid].candidates]


def test_local_judges_get_a_seed_api_judges_do_not(recorder, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNA_TEST_KEY", "sk-test")
    cands = tmp_path / "c.jsonl"
    write_records(cands, [Record(id="a", instruction="Say hi.", candidates=[Candidate(text="hi"), Candidate(text="hello")])])
    run_judge(JudgeJob(input=str(cands), out=str(tmp_path / "o1.jsonl"), model="m", backend="openai", base_url=recorder,
          api_key_env="TUNA_TEST_KEY", cache_dir=str(tmp_path / "c1"), request_seed=True, seed=7))
    run_judge(JudgeJob(input=str(cands), out=str(tmp_path / "o2.jsonl"), model="m", backend="openai", base_url=recorder,
          api_key_env="TUNA_TEST_KEY", cache_dir=str(tmp_path / "c2")))
    assert [json.loads(b).get("seed") for b in _Recorder.bodies] == [7, None]


# ----------------------------------------------------------------------------------------------- parsing

REPLIES = [
    "###Response 4:\nRef.\n\nResponse 0: 9\nrank: [4, 2, 0, 1, 3]",
    "Ranking: 2 > 1 > 0 > 3",
    "rank: [1, 0, 2, 3]\n\nI put 4 last because it was generated by me.",  # trailing digits after the list
    "**Rank:** [3, 1, 0, 2]",
    "The format is 'rank: [i, j ,k, l, m]'.\n\n###Response 4:\nX\n\nrank: [2, 0, 3, 1]",  # an echo first
    "rank: [0, 0, 9, 1]",
]


def test_released_parser_mode_matches_gpt_eval():
    replies = REPLIES + [row["gpt_eval"] for row in json.loads((RELEASED / "gpt-4-ranking.json").read_text())]
    checked = 0
    for reply in replies:
        rank_str, ranks, response_4 = released_parse(reply)
        pr = parse_rank_reply_released(reply, 5)
        assert pr.rank_str == rank_str and pr.response_4 == response_4
        kept = list(dict.fromkeys(k for k in ranks if k < 5))  # tuna then skips repeats and out-of-range indices
        assert pr.order == (kept or None)
        checked += 1
    assert checked == 10
    with pytest.raises(IndexError):
        released_parse("no ranking at all")  # the released script stopped here; tuna records a failure
    assert parse_rank_reply_released("no ranking at all", 5).order is None


def test_where_the_robust_parser_differs():
    """The default parser reads the last list after a rank key, and only that list: it differs from the released
    parser exactly on trailing digits after the list and on replies that echo the requested format first."""
    got = {r: (parse_rank_reply(r, 5).order, parse_rank_reply_released(r, 5).order) for r in REPLIES}
    assert got[REPLIES[0]] == ([4, 2, 0, 1, 3], [4, 2, 0, 1, 3])
    assert got[REPLIES[1]] == ([2, 1, 0, 3], [2, 1, 0, 3])
    assert got[REPLIES[2]] == ([1, 0, 2, 3], [1, 0, 2, 3, 4])  # released: the "4" of the explanation joins the rank
    assert got[REPLIES[3]] == ([3, 1, 0, 2], [3, 1, 0, 2])
    assert got[REPLIES[4]] == ([2, 0, 3, 1], [4])  # released: digits between the echo and the next "rank:"
    assert got[REPLIES[5]] == ([0, 1], [0, 1])
