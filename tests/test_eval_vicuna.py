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
    ("Assistant 1 is better.\n8 7", (8.0, 7.0)),  # a pair as the last line is the verdict
    ("8 7\nAssistant 1 is better.\nFinal scores: 8 6", (8.0, 6.0)),  # the final verdict wins
    ("Assistant 1 is better than Assistant 2.", None),
    ("8\n7", None),
    ("8 7 6", None),
    ("", None),
    (None, None),
    ("I cannot judge this.", None),
]


@pytest.mark.parametrize("review,want", LENIENT)
def test_parse_lenient(review, want):
    assert vicuna.parse_review(review) == want


# Math reviews as GPT-4 writes them for FastChat's math prompt ("First, please solve the problem independently ...
# Finally, please output a Python tuple containing two numerical scores for Assistant 1 and Assistant 2"): the
# solution first, quoting the question's numbers, the verdict at the end in one of several shapes. Written for these
# tests in the shapes of the real reviews (fastchat/eval/table/review/, questions 68-70).
SEGMENT_SOLVED = """First, let's solve the problem independently. The endpoints are (2, -2) and (10, 4), so
(x1, y1) = (2, -2) and (x2, y2) = (10, 4).

Distance = sqrt((10 - 2)^2 + (4 - (-2))^2) = sqrt(64 + 36) = sqrt(100) = 10

Now, let's examine the problem-solving process of Assistant 1 and Assistant 2.

Assistant 1:
The length of the segment is 10 units. Assistant 1 used the distance formula with the points (2, -2) and (10, 4).

Assistant 2:
The length of the segment is 8 units. Assistant 2 only subtracted the x-coordinates of (10, 4) and (2, -2).
"""
MATH_REVIEWS = [
    # the shapes of the real reviews
    (SEGMENT_SOLVED + "\nScores:\nAssistant 1: 10\nAssistant 2: 3\n\nAssistant 1 performed better.", (10.0, 3.0)),
    (SEGMENT_SOLVED + "\nThe output tuple is (9, 2). Assistant 1 performed better in this case.", (9.0, 2.0)),
    (SEGMENT_SOLVED + "\nAssistant 1 performed better.\n\nOutput: (10, 4)", (10.0, 4.0)),  # = an endpoint, yet the verdict
    (SEGMENT_SOLVED + "\nI would give Assistant 1 a score of 10 and Assistant 2 a score of 2.", (10.0, 2.0)),
    (SEGMENT_SOLVED + "\nScores:\nAssistant 1: 9/10 (correct formula and answer)\nAssistant 2: 2/10 (wrong formula)",
     (9.0, 2.0)),
    ("First, I will solve the problem independently:\n\n3x + 10 = 5(x - 2)\n3x + 10 = 5x - 10\n20 = 2x\nx = 10\n\n"
     "Assistant 1:\n3x + 10 = 5x - 10, so x = 10. The steps are correct.\n\nAssistant 2:\nx = -5. The sign is wrong.\n\n"
     "Based on the evaluation, the scores are as follows:\n\n"
     "Assistant 1: 10 (correct steps and answer)\nAssistant 2: 3 (an error in the second step)\n\n"
     "The tuple containing the scores is (10, 3). Assistant 1 performed better.", (10.0, 3.0)),
    ("f(2) = 5(2)^3 - 2(2) + 3 = 40 - 4 + 3 = 39\n\nAssistant 1: 5(8) - 4 + 3 = 39, correct.\n"
     "Assistant 2: 5(4) - 2 + 3 = 21, wrong: 2^3 is 8.\n\n"
     "Assistant 1: 1/10 - the answer is given without steps.\n\n"
     "Assistant 2: 6/10 - the steps are shown but 2^3 was computed as 4.", (1.0, 6.0)),
    ("Solving: f(2) = 39.\n\nAssistant 1: The answer is incorrect and no steps are shown. Therefore, the score is 1.\n\n"
     "Assistant 2: The method is right but (2)^3 was taken as 6. Therefore, the score is 5.\n\n"
     "In conclusion, the scores are (1, 5) for Assistant 1 and Assistant 2, respectively.", (1.0, 5.0)),
    # other shapes the prompt invites: a bare final tuple, a bare final pair, markdown, a revised verdict
    (SEGMENT_SOLVED + "\nAssistant 1 is correct; Assistant 2 is not.\n\n(3, 8)", (3.0, 8.0)),
    (SEGMENT_SOLVED + "\nBoth assistants made mistakes.\n\n3, 8", (3.0, 8.0)),
    (SEGMENT_SOLVED + "\n**Scores:**\n- **Assistant 1:** 10\n- **Assistant 2:** 2", (10.0, 2.0)),
    (SEGMENT_SOLVED + "\nScores: Assistant 1 - 7, Assistant 2 - 4", (7.0, 4.0)),
    (SEGMENT_SOLVED + "\nMy first impression was (6, 8), but Assistant 2's answer is wrong.\n\n"
     "Final scores:\nAssistant 1: 10\nAssistant 2: 2", (10.0, 2.0)),
    ("Solving 3x + 10 = 5(x - 2) gives x = 10.\n\nAssistant 1 receives a score of 2.5, while Assistant 2 receives "
     "a score of 9.5.", (2.5, 9.5)),
    # no verdict: the question's pairs, answers after "Assistant k:" and a review cut off mid-solution stay errors
    (SEGMENT_SOLVED + "\nAssistant 1 performed better, as they used the correct formula.", None),
    (SEGMENT_SOLVED, None),
    ("First, let's solve the problem independently. Its endpoints are:\n(2, -2)\n(10, 4)", None),
    ("The segment runs from (2, -2) to (10, 4); the scores depend on whether (10, 4) is used as (x2, y2).", None),
    ("x = 10.\n\nAssistant 1: 10\n\nAssistant 2: 6 - 2 = 4, wrong", None),
    ("f(2) = 39.\n\nAssistant 1: 3x + 10 = 5x - 10\nAssistant 2: 5(x - 2) = 5x - 10\n\nBoth are incomplete.", None),
]


def test_math_reviews_are_scored():
    """Each realistic math review gets its verdict, and one without a verdict stays an error."""
    checked = 0
    for review, want in MATH_REVIEWS:
        assert vicuna.parse_review(review) == want, review
        assert vicuna.parse_review(review, strict=True) is None  # FastChat's parser reads none of them
        checked += 1
    assert checked == len(MATH_REVIEWS) == 20
    assert sum(want is not None for _, want in MATH_REVIEWS) == 14


def test_strict_is_fastchat_parse_score():
    """FastChat fastchat/eval/eval_gpt_review.py (removed in lm-sys/FastChat a0ba8c97, #1811) ``parse_score``:
    ``score_pair = review.split("\\n")[0]``, ``score_pair.replace(",", " ")``, ``sp = score_pair.split(" ")``,
    ``if len(sp) == 2: return [float(sp[0]), float(sp[1])]``, else ``[-1, -1]`` (None here)."""

    def parse_score(review):  # the upstream function, its logging and -1 sentinel left out
        try:
            sp = review.split("\n")[0].replace(",", " ").split(" ")
            return (float(sp[0]), float(sp[1])) if len(sp) == 2 else None
        except ValueError:
            return None

    reviews = [r for r, _ in LENIENT if r] + [r for r, _ in MATH_REVIEWS] + ["10 x\n", " 8 7", "8 7 ", "8.0,7.5\nok"]
    for review in reviews:
        assert vicuna.parse_review(review, strict=True) == parse_score(review), review
    assert len(reviews) == 13 + 20 + 4


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


def test_math_prompt_asks_for_the_tuple_at_the_end(shared_data):
    """Why the first line cannot hold the math verdict: FastChat's math prompt (the reviewer the 3 math questions get)
    asks for the solution first and the scores as a Python tuple last; the questions quote number pairs."""
    d = shared_data / "vicuna_qa"
    math = vicuna.load_reviewers(d)["math"]["defaults"]["prompt"]
    assert math.index("First, please solve the problem independently") < math.index(
        "Finally, please output a Python tuple containing two numerical scores")
    questions = [q for q in vicuna.load_questions(d) if q["category"] == "math"]
    assert [q["question_id"] for q in questions] == [68, 69, 70]
    assert "(2, -2) and (10, 4)" in questions[2]["text"]
    assert "(2, -2) and (10, 4)" in SEGMENT_SOLVED
