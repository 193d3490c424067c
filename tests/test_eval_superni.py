"""Super-NI metrics: parity with the official definition, the answer-key path, the Tk-Instruct prompt."""

from __future__ import annotations

import json
import random
import time

import pytest

from evaluation import superni
from evaluation.superni import FastScorer, compute_metrics, normalize_answer, reference_metrics


def test_normalize_answer_keeps_articles():
    assert normalize_answer("  The  Cat, sat!\n") == "the cat sat"
    assert normalize_answer("A dog.") == "a dog"  # articles are not removed (unlike SQuAD)
    assert normalize_answer("") == ""


HAND_CASES = [
    ("The cats are running", ["the cat runs"]),  # stemming: cats->cat, running->run, runs->run
    ("yes.", ["Yes"]),  # punctuation
    ("Entailment", ["neutral", "contradiction", "entailment"]),  # max over several references
    ("", ["anything"]),  # empty prediction
    ("!!!", ["..."]),  # no tokens on either side
    ("new york city", ["New-York City", "NYC"]),
    ("a b c d e", ["e d c b a"]),
]


@pytest.mark.parametrize("pred,refs", HAND_CASES)
def test_metric_parity_hand_cases(pred, refs):
    from rouge_score import rouge_scorer

    official = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want_rl = max(official.score(prediction=pred, target=r)["rougeL"].fmeasure for r in refs)
    want_em = max(float(normalize_answer(pred) == normalize_answer(r)) for r in refs)
    em, rl = FastScorer().score(pred, refs)
    assert (em, rl) == (want_em, want_rl)


def test_hand_case_values():
    s = FastScorer()
    assert s.score("The cats are running", ["the cat runs"])[1] == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert s.score("yes.", ["Yes"]) == (1.0, 1.0)
    assert s.score("", ["x"]) == (0.0, 0.0)


def test_random_parity_with_plain_loop():
    rng = random.Random(0)
    vocab = "the cat sat on mat running runs ran dogs dog a an of , . ! hello world's it's".split()
    preds = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(300)]
    refs = [[" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(rng.randint(1, 3))] for _ in range(300)]
    rows = [{"id": str(i), "references": r, "task": "t", "category": "c"} for i, r in enumerate(refs)]
    fast, _ = compute_metrics(rows, {str(i): p for i, p in enumerate(preds)})
    plain = reference_metrics(preds, refs)
    assert (fast["exact_match"], fast["rougeL"]) == (plain["exact_match"], plain["rougeL"])


def test_full_answer_key_perfect_predictions(shared_data, tmp_path, capsys):
    key = shared_data / "superni/test_references.jsonl.gz"
    refs = superni.load_references(key)
    assert len(refs) == 11810
    pred_file = tmp_path / "preds.jsonl"
    pred_file.write_text("".join(json.dumps({"id": r["id"], "prediction": r["references"][0]}) + "\n" for r in refs))
    t0 = time.perf_counter()
    m = superni.score_prediction_file(pred_file, key)
    dt = time.perf_counter() - t0
    assert m["n"] == 11810 and m["exact_match"] == 100.0 and m["rougeL"] == 100.0 and m["missing_predictions"] == 0
    assert len(m["per_task"]) == 119 and len(m["per_category"]) == 12
    assert m["per_category"]["Title Generation"]["tk_metric"] == "rougeL"
    with capsys.disabled():
        print(f"\n[superni] full answer key, perfect predictions: {dt:.2f} s")


def test_missing_prediction_counts_as_empty(shared_data, tmp_path):
    key = shared_data / "superni/test_references.jsonl.gz"
    refs = superni.load_references(key)[:200]
    pred_file = tmp_path / "p.jsonl"
    pred_file.write_text("".join(json.dumps({"id": r["id"], "prediction": r["references"][0]}) + "\n" for r in refs[:100]))
    m = superni.score_prediction_file(pred_file, key, tasks=[refs[0]["task_id"], refs[150]["task_id"]])
    assert m["n"] == 200 and m["missing_predictions"] == 100
    assert m["exact_match"] == 50.0


def test_tk_instruct_prompt_format():
    ex = [{"input": "I like it", "output": "positive"}, {"input": "Bad.", "output": "negative."}]
    p0 = superni.tk_instruct_prompt("Classify the sentiment", "Great movie", ex)
    assert p0 == "Definition: Classify the sentiment.\n\nNow complete the following example -\nInput: Great movie.\nOutput: "
    p2 = superni.tk_instruct_prompt("Classify the sentiment.", "Great movie!", ex, num_pos_examples=2)
    assert p2 == (
        "Definition: Classify the sentiment.\n\n"
        " Positive Example 1 -\nInput: I like it.\n Output: positive.\n\n"
        " Positive Example 2 -\nInput: Bad.\n Output: negative.\n\n"
        "Now complete the following example -\nInput: Great movie!\nOutput: "
    )


def test_slice_loads_with_limit(shared_data):
    rows = superni.load_instances(shared_data / "superni/superni_test_slice.jsonl.gz", limit=3)
    assert len(rows) == 24 and len({r["task"] for r in rows}) == 8
    assert all(r["references"] for r in rows)
