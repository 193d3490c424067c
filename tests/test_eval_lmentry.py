"""LMentry: each of the 25 scorers on a true and a false answer (real examples), and the aggregation."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from evaluation import lmentry
from evaluation.lmentry_scorers import CORE_TASKS, normalize_prediction, score


@pytest.fixture(scope="module")
def tasks(shared_data):
    return lmentry.load_tasks(shared_data / "lmentry/lmentry_tasks.json.gz")


def first(tasks, name, **match):
    for ex in tasks[name]["examples"].values():
        if all(ex["metadata"].get(k) == v for k, v in match.items()):
            return ex
    raise AssertionError(match)


# task -> (metadata filter, correct prediction, wrong prediction); {field} is filled from the metadata
CASES = {
    "sentence_containing": ({"word": "beach"}, "We walked along the beach at dawn.", "We walked along the shore at dawn."),
    "sentence_not_containing": ({"word": "beach"}, "We walked along the shore at dawn.", "The beach was crowded."),
    "word_containing": ({"letter": "b"}, "table", "chair"),
    "word_not_containing": ({"letter": "a"}, "tree", "apple"),
    "most_associated_word": ({}, "The answer is {answer}.", "{distractors[0]}"),
    "least_associated_word": ({}, "{answer}", "{distractors[0]}"),
    "any_words_from_category": ({"num_distractors": 5}, "No.", "Yes"),
    "all_words_from_category": ({"num_distractors": 0}, "Yes, all of the words are types of {category}.", "no"),
    "first_alphabetically": ({}, "\"{answer}\"", "{distractor}"),
    "more_letters": ({}, "{answer} has more letters than {distractor}", "{distractor}"),
    "less_letters": ({}, "{answer}", "{distractor} is shorter"),
    "bigger_number": ({}, "{answer}", "{distractor}"),
    "smaller_number": ({}, "The smaller number is {answer}.", "{distractor}"),
    "rhyming_word": ({}, "{answer}", "{distractor}"),
    "homophones": ({}, "{query} sounds like {answer}", "{distractor}"),
    "word_after": ({}, "{answer}", "{sentence}"),
    "word_before": ({}, "The word that comes before {query} is {answer}.", "{query}"),
    "starts_with_word": ({}, "{word} are everywhere in this town.", "Nothing here starts right."),
    "ends_with_word": ({}, "We visited the {word}", "{word} are far away."),
    "starts_with_letter": ({"letter": "c"}, "cat", "dog"),
    "ends_with_letter": ({"letter": "t"}, "cat", "dog"),
    "first_word": ({}, "The first word is \"{answer}\".", "{sentence}!"),
    "last_word": ({}, "{answer}", "The last word is wrong."),
    "first_letter": ({"word": "beach"}, "b", "h"),
    "last_letter": ({"word": "beach"}, "The last letter is \"h\".", "b"),
}


def test_cases_cover_all_25_tasks():
    assert sorted(CASES) == sorted(CORE_TASKS) and len(CORE_TASKS) == 25


def _fill(template: str, md: dict) -> str:
    class _MD(dict):
        def __missing__(self, k):
            raise KeyError(k)

    return template.format_map(_MD(md))


@pytest.mark.parametrize("task", sorted(CASES))
def test_scorer_true_and_false(tasks, task):
    match, good, bad = CASES[task]
    ex = first(tasks, task, **match)
    md = ex["metadata"]
    s, c = score(task, _fill(good, md), ex)
    assert (s, c) == (1, 1), (task, _fill(good, md), md)
    s, _ = score(task, _fill(bad, md), ex)
    assert s == 0, (task, _fill(bad, md), md)


def test_uncertain_match_inside_longer_text(tasks):
    ex = first(tasks, "first_letter", word="beach")
    assert score("first_letter", "Well... the first letter is b, I think, but not sure", ex) == (1, 0)


def test_prediction_normalisation():
    assert normalize_prediction("  Hello   World_x \n") == "hello world x"
    assert normalize_prediction("Yes. And more\nlines", truncate=True) == "yes"


def _upstream_model_scores(per: dict) -> dict:
    """lmentry/analysis/{robustness,lmentry_score}.py @ 463763d, transcribed: aspects unrounded (np.mean over
    items), robustness = np.mean(aspects).round(1), score = round(accuracy * (robustness / 100), 1)."""
    import numpy as np

    def robustness_func(accs):
        max_difference = 0
        for acc1, acc2 in combinations(accs, 2):
            diff = abs(acc1 - acc2)
            if diff > max_difference:
                max_difference = diff
        return 100 - max_difference

    order = np.mean([robustness_func([per[t]["answer_index"]["0"], per[t]["answer_index"]["1"]]) for t in lmentry.ARGUMENT_ORDER_TASKS])
    content = np.mean([robustness_func([per[f"{t}_{s}"]["accuracy"] for s in subs]) for t, subs in lmentry.ARGUMENT_CONTENT_GROUPS.items()])
    template = np.mean([robustness_func([per[t]["templates"][str(i)] for i in range(3)]) for t in CORE_TASKS])
    adjacent = np.mean([robustness_func([per[a]["accuracy"], per[b]["accuracy"]]) for a, b in lmentry.ADJACENT_PAIRS])
    robustness = np.mean([order, content, template, adjacent]).round(1)
    accuracy = np.mean([per[t]["accuracy"] for t in CORE_TASKS])
    return {"lmentry_score": round(accuracy * (robustness / 100), 1), "accuracy": round(accuracy, 1), "robustness": round(robustness, 1),
            "accuracy_unrounded": accuracy, "aspects": {"argument_order": order, "argument_content": content, "template": template,
                                                        "adjacent_tasks": adjacent}}


def _upstream_task(n_per_template: int, correct: list[int], idx_n: list[int], idx_c: list[int]) -> dict:
    """lmentry/analysis/accuracy.py get_accuracy_and_certainty + robustness.py get_simple_answer_index_bias, transcribed."""
    out = {"accuracy": round(sum(correct) / (n_per_template * 3) * 100, 2),
           "templates": {str(i): round(c / n_per_template * 100, 1) for i, c in enumerate(correct)}}
    out["answer_index"] = {str(i): round((0 if idx_c[i] == 0 else idx_c[i] / idx_n[i]) * 100, 2) for i in (0, 1)}
    return out


def _random_fixture(seed: int):
    """Counts for all 41 files: (per-task upstream accuracies, our TaskCounts)."""
    import random

    import numpy as np

    rng = random.Random(seed)
    per, counts = {}, {}
    for t in [*CORE_TASKS, *lmentry.SUBSET_TASKS]:
        npt = rng.choice([23, 26, 800, 1000])
        correct = [rng.randint(0, npt) for _ in range(3)]
        n0 = rng.randint(1, 3 * npt - 1)
        total_c = sum(correct)
        c0 = rng.randint(max(0, total_c - (3 * npt - n0)), min(n0, total_c))
        per[t] = _upstream_task(npt, correct, [n0, 3 * npt - n0], [c0, total_c - c0])
        c = lmentry.TaskCounts(np.array([[npt] * 3], float), np.array([correct], float))
        if t in lmentry.ARGUMENT_ORDER_TASKS:
            c.index_n, c.index_correct = np.array([[n0, 3 * npt - n0]], float), np.array([[c0, total_c - c0]], float)
        counts[t] = c
    return per, counts


def test_aggregation_is_upstreams_on_fixed_counts():
    """40 random count fixtures: task/template/answer-index accuracies and the LMentry score equal the upstream code's,
    digit for digit. The old rule (aspects rounded to 2 decimals before averaging) is checked to differ on some of
    them, so this test can tell the two apart."""
    checked = differs_from_old = 0
    for seed in range(40):
        per, counts = _random_fixture(seed)
        want = _upstream_model_scores(per)
        acc = lmentry.task_accuracies(counts)
        for t, w in per.items():  # the per-task layer
            assert float(acc[t]["accuracy"][0]) == w["accuracy"]
            assert [float(x) for x in acc[t]["templates"][0]] == list(w["templates"].values())
            if t in lmentry.ARGUMENT_ORDER_TASKS:
                assert [float(x) for x in acc[t]["answer_index"][0]] == list(w["answer_index"].values())
        got = lmentry.summarize(lmentry.aggregate(acc))
        assert got["complete"]
        assert (got["lmentry_score"], got["accuracy"], got["robustness"]) == (want["lmentry_score"], want["accuracy"], want["robustness"])
        assert got["accuracy_unrounded"] == pytest.approx(float(want["accuracy_unrounded"]), abs=1e-12)
        assert got["robustness_aspects"] == pytest.approx({k: float(v) for k, v in want["aspects"].items()}, abs=1e-12)
        old_rob = round(sum(round(float(v), 2) for v in want["aspects"].values()) / 4, 1)
        old_score = round(float(want["accuracy_unrounded"]) * old_rob / 100, 2)
        differs_from_old += old_score != want["lmentry_score"]
        checked += 1
    assert checked == 40 and differs_from_old > 0


def test_aggregation_by_hand():
    """Every task at 50 %, templates 40/50/60, answer index 50/50: template robustness 80, the others 100."""
    per = {}
    for t in [*CORE_TASKS, *lmentry.SUBSET_TASKS]:
        per[t] = {"accuracy": np.array([50.0]), "templates": np.array([[40.0, 50.0, 60.0]]), "answer_index": np.array([[50.0, 50.0]])}
    agg = lmentry.summarize(lmentry.aggregate(per))
    assert agg["complete"]
    assert agg["robustness_aspects"] == {"argument_order": 100.0, "argument_content": 100.0, "template": 80.0, "adjacent_tasks": 100.0}
    assert agg["robustness"] == 95.0 and agg["accuracy"] == 50.0 and agg["lmentry_score"] == 47.5
    assert lmentry.robustness_func([50.0, 70.0, 65.0]) == 80.0


def test_limited_selection_spreads_over_templates(tasks):
    sel = lmentry.select_examples(tasks["bigger_number"], 6)
    assert sorted(ex["metadata"]["template_id"] for _, ex in sel) == [0, 0, 1, 1, 2, 2]


def test_score_rows_end_to_end(tasks):
    rows = {}
    for eid, ex in lmentry.select_examples(tasks["bigger_number"], 9):
        rows[f"bigger_number/{eid}"] = {"prediction": str(ex["metadata"]["answer"])}
    for eid, ex in lmentry.select_examples(tasks["smaller_number"], 9):
        rows[f"smaller_number/{eid}"] = {"prediction": str(ex["metadata"]["n1"])}
    m, per = lmentry.score_rows(tasks, rows)
    assert m["per_task"]["bigger_number"]["accuracy"] == 100.0
    assert not m["complete"] and m["robustness"] is None
    assert len(per) == 18
