"""LMentry: each of the 25 scorers on a true and a false answer (real examples), and the aggregation."""

from __future__ import annotations

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


def test_robustness_and_score():
    assert lmentry.robustness_func([50.0, 70.0, 65.0]) == 80.0
    per = {}
    for t in [*CORE_TASKS, *lmentry.SUBSET_TASKS]:
        per[t] = {"accuracy": 50.0, "templates": {"0": 50.0, "1": 40.0, "2": 60.0}, "answer_index": {"0": 50.0, "1": 50.0}}
    agg = lmentry.aggregate(per)
    assert agg["complete"]
    assert agg["robustness_aspects"] == {"argument_order": 100.0, "argument_content": 100.0, "template": 80.0, "adjacent_tasks": 100.0}
    assert agg["robustness"] == 95.0 and agg["accuracy"] == 50.0 and agg["lmentry_score"] == 47.5


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
