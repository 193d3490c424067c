"""Vicuna QA: review parsing on real reply shapes, the two-order combination rule, reviewer selection."""

from __future__ import annotations

import pytest

from evaluation import vicuna

LENIENT = [
    ("8 7\nAssistant 1 gave a more detailed answer.", (8.0, 7.0)),
    ("8,7\nBoth are fine.", (8.0, 7.0)),
    ("8, 7\nBoth are fine.", (8.0, 7.0)),
    ("9.5 6", (9.5, 6.0)),
    ("(7, 4)\nAssistant 1 solved it.", (7.0, 4.0)),  # the math prompt asks for a Python tuple
    ("Assistant 1: 8/10, Assistant 2: 6/10\nExplanation", (8.0, 6.0)),
    ("7 7\nTie.", (7.0, 7.0)),
    ("Assistant 1 is better.\n8 7", None),  # the scores must be on the first line
    ("8\n7", None),
    ("8 7 6", None),
    ("", None),
    (None, None),
    ("I cannot judge this.", None),
]


@pytest.mark.parametrize("review,want", LENIENT)
def test_parse_lenient(review, want):
    assert vicuna.parse_review(review) == want


def test_parse_strict_is_eval_gpt_review():
    assert vicuna.parse_review("8 7\nx", strict=True) == (8.0, 7.0)
    assert vicuna.parse_review("8,7", strict=True) == (8.0, 7.0)
    assert vicuna.parse_review("8, 7", strict=True) is None  # "8  7".split(" ") has 3 parts upstream
    assert vicuna.parse_review("(7, 4)", strict=True) is None


# q1: model 8+7=15 vs opp 7+6=13 -> win (orders agree); q2: position bias, the first answer always gets 8 -> tie
# over both orders, but a loss in the single (BA) order; q3: lose; q4: unparseable in AB only.
JUDGMENTS = [
    {"question_id": 1, "category": "generic", "order": "AB", "scores": [8, 7]},
    {"question_id": 1, "category": "generic", "order": "BA", "scores": [6, 7]},
    {"question_id": 2, "category": "math", "order": "AB", "scores": [8, 6]},
    {"question_id": 2, "category": "math", "order": "BA", "scores": [8, 6]},
    {"question_id": 3, "category": "math", "order": "AB", "scores": [3, 9]},
    {"question_id": 3, "category": "math", "order": "BA", "scores": [9, 4]},
    {"question_id": 4, "category": "coding", "order": "AB", "scores": None},
    {"question_id": 4, "category": "coding", "order": "BA", "scores": [5, 5]},
]


def test_single_order_is_the_2023_protocol():
    """One review per question, the model as Assistant 2: its score is the second number."""
    single = [j for j in JUDGMENTS if j["order"] == "BA"]
    m = vicuna.combine(single, orders="single")
    assert [q["result"] for q in m["per_question"]] == ["win", "lose", "lose", "tie"]
    assert (m["win"], m["tie"], m["lose"], m["error"], m["n"]) == (1, 1, 2, 0, 4)
    assert m["win_rate"] == 25.0 and m["orders"] == "single" and "both_orders" not in m
    assert m["mean_score"] == pytest.approx((7 + 6 + 4 + 5) / 4) and m["mean_score_opponent"] == pytest.approx((6 + 8 + 9 + 5) / 4)


def test_both_orders_sum_and_single_reported_beside():
    m = vicuna.combine(JUDGMENTS, orders="both")
    assert (m["win"], m["tie"], m["lose"], m["error"]) == (1, 1, 2, 0)  # the top level stays the single-order result
    b = m["both_orders"]
    assert (b["win"], b["tie"], b["lose"], b["error"]) == (1, 1, 1, 1)
    assert b["per_category"]["math"] == {"win": 0, "tie": 1, "lose": 1, "error": 0}
    assert b["per_order"]["AB"] == {"win": 2, "tie": 0, "lose": 1, "error": 1}
    assert b["per_order"]["BA"] == {"win": 1, "tie": 1, "lose": 2, "error": 0}
    assert b["order_consistency"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert b["win_rate_adjusted"] == 50.0


def test_single_order_request_is_fastchats_review_of_opponent_then_model(shared_data):
    """eval_gpt_review.py -a opponent.jsonl model.jsonl: gen_prompt(..., ans1=opponent, ans2=model), built here from
    prompt.jsonl/reviewer.jsonl directly."""
    import json

    d = shared_data / "vicuna_qa"
    qs = vicuna.load_questions(d)
    q = next(x for x in qs if x["category"] == "math")
    _, theirs = vicuna.resolve_opponent("gpt35", d)
    mine = {q["question_id"]: "my answer"}
    reqs = vicuna.judge_requests([q], mine, theirs, vicuna.load_reviewers(d))
    assert [r["order"] for r in reqs] == ["BA"]
    reviewers = [json.loads(x) for x in (d / "reviewer.jsonl").read_text().splitlines() if x.strip()]
    prompts = [json.loads(x) for x in (d / "prompt.jsonl").read_text().splitlines() if x.strip()]
    rv = next((r for r in reviewers if r["category"] == q["category"]), reviewers[0])
    pj = prompts[rv["prompt_id"] - 1]
    want = pj["prompt_template"].format(question=q["text"], answer_1=theirs[q["question_id"]], answer_2="my answer", **pj["defaults"])
    assert reqs[0]["messages"] == [{"role": "system", "content": pj["system_prompt"]}, {"role": "user", "content": want}]
    assert (reqs[0]["temperature"], reqs[0]["max_tokens"]) == (rv["metadata"]["temperature"], rv["metadata"]["max_tokens"])
    both = vicuna.judge_requests([q], mine, theirs, vicuna.load_reviewers(d), orders="both")
    assert [r["order"] for r in both] == ["AB", "BA"] and both[1] == reqs[0]
    with pytest.raises(Exception, match="single | both"):
        vicuna.judge_requests([q], mine, theirs, vicuna.load_reviewers(d), orders="three")


def test_reviewer_by_category_and_messages(shared_data):
    d = shared_data / "vicuna_qa"
    rv = vicuna.load_reviewers(d)
    qs = vicuna.load_questions(d)
    assert len(qs) == 80
    assert vicuna.reviewer_for("coding", rv)["reviewer_id"] == "gpt-4-0328-coding"
    assert vicuna.reviewer_for("math", rv)["reviewer_id"] == "gpt-4-0328-math"
    assert vicuna.reviewer_for("roleplay", rv)["reviewer_id"] == "gpt-4-0328-default"
    msgs = vicuna.review_messages("Q?", "first", "second", rv["general"])
    assert msgs[0]["content"].startswith("You are a helpful and precise assistant")
    assert "[The Start of Assistant 1's Answer]\nfirst\n\n[The End of Assistant 1's Answer]" in msgs[1]["content"]
    assert msgs[1]["content"].rstrip().endswith("does not affect your judgment.")


def test_opponent_table_and_requests(shared_data):
    d = shared_data / "vicuna_qa"
    label, theirs = vicuna.resolve_opponent("gpt35", d)
    assert label == "gpt35" and len(theirs) == 80
    qs = vicuna.load_questions(d)[:3]
    mine = {q["question_id"]: f"my answer {q['question_id']}" for q in qs}
    reqs = vicuna.judge_requests(qs, mine, theirs, vicuna.load_reviewers(d), orders="both")
    assert [r["order"] for r in reqs] == ["AB", "BA"] * 3
    assert "my answer 1" in reqs[0]["messages"][1]["content"].split("[The End of Assistant 1's Answer]")[0]
    assert "my answer 1" in reqs[1]["messages"][1]["content"].split("[The End of Assistant 1's Answer]")[1]
    with pytest.raises(Exception, match="unknown opponent"):
        vicuna.resolve_opponent("no-such-model", d)
