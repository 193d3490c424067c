"""Super-NI metrics: parity with the official definition, the answer-key path, the Tk-Instruct prompt."""

from __future__ import annotations

import json
import random
import string
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
    p0 = superni.tk_instruct_prompt("Classify the sentiment", "Great movie", ex, num_pos_examples=0)
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


# ------------------------------------------------------------------------------------------ Tk-Instruct protocol


def _official_collator_source(instance: dict, tokenizer, max_source_length: int = 1024, num_pos_examples: int = 2) -> str:
    """Tk-Instruct src/ni_collator.py (DataCollatorForNI.__call__ @ 7c0e400) with eval_tk_instruct.sh's settings
    (add_task_name False, add_task_definition True, num_neg_examples 0, add_explanation False), transcribed
    statement by statement for one instance in the HF dataset layout of ni_dataset.py."""
    task_input = ""
    task_input += "Now complete the following example -\n"
    task_input += f"Input: {instance['Instance']['input'].strip()}"
    if not task_input[-1] in string.punctuation:  # noqa: E713 - as written upstream
        task_input += "."
    task_input += "\n"
    task_input += "Output: "
    definition = "Definition: " + instance["Definition"][0].strip()
    if not definition[-1] in string.punctuation:  # noqa: E713
        definition += "."
    definition += "\n\n"
    pos_examples = []
    for idx, pos_example in enumerate(instance["Positive Examples"][:num_pos_examples]):
        pos_example_str = f" Positive Example {idx+1} -\n"
        pos_example_str += f"Input: {pos_example['input'].strip()}"
        if not pos_example_str[-1] in string.punctuation:  # noqa: E713
            pos_example_str += "."
        pos_example_str += "\n"
        pos_example_str += f" Output: {pos_example['output'].strip()}"
        if not pos_example_str[-1] in string.punctuation:  # noqa: E713
            pos_example_str += "."
        pos_example_str += "\n"
        pos_example_str += "\n"
        if len(tokenizer(definition + " ".join(pos_examples) + pos_example_str + task_input)["input_ids"]) <= max_source_length:
            pos_examples.append(pos_example_str)
        else:
            break
    source = "" + definition + "".join(pos_examples) + "".join([]) + task_input
    tokenized_source = tokenizer(source)["input_ids"]
    if len(tokenized_source) <= max_source_length:
        return source
    return tokenizer.decode(tokenized_source[:max_source_length], skip_special_tokens=True)


def _hf_instance(row: dict) -> dict:
    """A slice row in ni_dataset.py's example layout."""
    return {"Definition": [row["definition"]], "Positive Examples": row["positive_examples"],
            "Instance": {"id": row["id"], "input": row["input"], "output": row["references"]}}


@pytest.fixture(scope="module")
def slice_rows(shared_data):
    return superni.load_instances(shared_data / "superni/superni_test_slice.jsonl.gz")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from tuna.models import load_tokenizer

    return load_tokenizer("tiny-random-llama")  # SmolLM2's tokenizer


def test_prompt_bytes_of_a_fixed_instance_two_shot(slice_rows, smollm2_tokenizer):
    """task1154's first test instance, 2-shot, as the collator builds it (string typed from its rules)."""
    row = next(r for r in slice_rows if r["id"] == "task1154-13494aea7eef47df9a85b33354c44491")
    want = (
        'Definition: Two analogies that relate places/locations to the associated travel mode is given in the form "A : B. C : ?". '
        '"A : B" relates place A to travel mode B. Your task is to replace the question mark (?) with the appropriate travel mode '
        'for the given place C, following the "A : B" relation.\n\n'
        " Positive Example 1 -\nInput: moon : rocket. france : ?\n Output: airplane.\n\n"
        " Positive Example 2 -\nInput: mall : bus. theater : ?\n Output: car.\n\n"
        "Now complete the following example -\nInput: france : airplane. park : ?\nOutput: "
    )
    src, demos, cut = superni.tk_instruct_source(row["definition"], row["input"], row["positive_examples"], num_pos_examples=2,
                                                 tokenizer=smollm2_tokenizer, max_source_length=1024)
    assert (src, demos, cut) == (want, 2, False)
    assert _official_collator_source(_hf_instance(row), smollm2_tokenizer) == want


def test_empty_definition_renders_as_the_collator(slice_rows, smollm2_tokenizer):
    """An empty (or blank) definition is not left out: Tk-Instruct src/ni_collator.py L80-83 @ 7c0e400 builds
    "Definition: " + "" and adds the missing full stop, so the source starts with b"Definition: .\\n\\n"."""
    row = next(r for r in slice_rows if r["id"] == "task1154-13494aea7eef47df9a85b33354c44491")
    want = ("Definition: .\n\n"
            " Positive Example 1 -\nInput: moon : rocket. france : ?\n Output: airplane.\n\n"
            " Positive Example 2 -\nInput: mall : bus. theater : ?\n Output: car.\n\n"
            "Now complete the following example -\nInput: france : airplane. park : ?\nOutput: ")
    checked = 0
    for definition in ("", "   ", "\n"):
        src, demos, cut = superni.tk_instruct_source(definition, row["input"], row["positive_examples"], num_pos_examples=2,
                                                     tokenizer=smollm2_tokenizer, max_source_length=1024)
        assert (src, demos, cut) == (want, 2, False)
        assert _official_collator_source(_hf_instance({**row, "definition": definition}), smollm2_tokenizer) == want
        checked += 1
    assert checked == 3
    zero_shot = superni.tk_instruct_prompt("", "Great movie", num_pos_examples=0)
    assert zero_shot.encode() == b"Definition: .\n\nNow complete the following example -\nInput: Great movie.\nOutput: "


@pytest.mark.parametrize("max_len", [1024, 120])
def test_prompts_equal_the_collators_on_the_whole_slice(slice_rows, smollm2_tokenizer, max_len):
    """All 800 slice instances, 2-shot: at 1024 tokens nothing is dropped; at 120 demonstrations are dropped and
    sources cut exactly where the collator drops and cuts them."""
    dropped = cut_count = 0
    for row in slice_rows:
        src, demos, cut = superni.tk_instruct_source(row["definition"], row["input"], row["positive_examples"], num_pos_examples=2,
                                                     tokenizer=smollm2_tokenizer, max_source_length=max_len)
        assert src == _official_collator_source(_hf_instance(row), smollm2_tokenizer, max_len), row["id"]
        dropped += 2 - demos
        cut_count += cut
    assert len(slice_rows) == 800
    if max_len == 1024:
        assert dropped == 0 and cut_count == 0
    else:
        assert dropped > 0 and cut_count > 0


def test_long_source_is_cut_to_max_source_length(smollm2_tokenizer):
    long_input = " ".join(f"word{i}" for i in range(3000))
    ex = [{"input": "a", "output": "b"}]
    src, demos, cut = superni.tk_instruct_source("Do it", long_input, ex, num_pos_examples=2, tokenizer=smollm2_tokenizer,
                                                 max_source_length=1024)
    assert cut and demos == 0
    ids = smollm2_tokenizer("Definition: Do it.\n\nNow complete the following example -\nInput: " + long_input + ".\nOutput: ")["input_ids"]
    assert src == smollm2_tokenizer.decode(ids[:1024], skip_special_tokens=True)
    assert src.startswith("Definition: Do it.\n\nNow complete") and not src.endswith("Output: ")


def test_prompt_budget_names_the_item_that_does_not_fit(smollm2_tokenizer):
    from evaluation.predictions import PromptBudget
    from tuna.errors import TunaError

    budget = PromptBudget(smollm2_tokenizer, 40, "m")
    items = [{"id": "short", "prompt": "one two three"}, {"id": "long-one", "prompt": " ".join(["word"] * 60)}]
    assert budget.check(items[:1], 16, "superni") == len(smollm2_tokenizer("one two three")["input_ids"])
    with pytest.raises(TunaError, match="superni item long-one: prompt 60 tokens \\+ 16 new tokens > the 40-token context of m"):
        budget.check(items, 16, "superni")


# ------------------------------------------------------------------------------------------ checkout and download


def _fake_checkout(root, rows, extra_instances: int = 3):
    """A natural-instructions layout from the slice's rows (task JSON schema of tasks/*.json), with a few instances
    past the first 100 that the evaluation must ignore."""
    from collections import defaultdict

    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    (root / "splits/default").mkdir(parents=True)
    (root / "tasks").mkdir()
    (root / "splits/default/test_tasks.txt").write_text("\n".join(by_task) + "\n")
    for name, rs in by_task.items():
        inst = [{"id": r["id"], "input": r["input"], "output": r["references"]} for r in rs]
        inst += [{"id": f"{name}-extra{i}", "input": "x", "output": ["y"]} for i in range(extra_instances)]
        td = {"Contributors": ["x"], "Source": ["x"], "Categories": [rs[0]["category"]], "Definition": [rs[0]["definition"]],
              "Positive Examples": rs[0]["positive_examples"], "Negative Examples": [], "Instances": inst,
              "Instance License": ["x"]}
        (root / "tasks" / f"{name}.json").write_text(json.dumps(td, indent=4, ensure_ascii=False))
    return root


def test_checkout_loader_reads_first_100_and_checks_the_answer_key(slice_rows, shared_data, tmp_path):
    from tuna.errors import TunaError

    key = shared_data / "superni/test_references.jsonl.gz"
    root = _fake_checkout(tmp_path / "ni", slice_rows)
    rows = superni.load_instances(root, references=key)
    assert rows == slice_rows  # same rows, order and fields as the JSONL slice
    assert superni.items_digest(r["id"] for r in rows) != superni.OFFICIAL_ITEMS[1]
    td = json.loads((root / "tasks/task827_copa_commonsense_reasoning.json").read_text())
    td["Instances"][5]["output"] = ["tampered"]
    (root / "tasks/task827_copa_commonsense_reasoning.json").write_text(json.dumps(td))
    with pytest.raises(TunaError, match="differs from the answer key"):
        superni.load_instances(root, references=key)


def test_official_items_digest_is_the_answer_keys(shared_data):
    refs = superni.load_references(shared_data / "superni/test_references.jsonl.gz")
    assert (len(refs), superni.items_digest(r["id"] for r in refs)) == superni.OFFICIAL_ITEMS


def test_download_fetches_test_tasks_resumes_and_fails_offline_with_advice(slice_rows, shared_data, tmp_path):
    import functools
    import http.server
    import threading

    from tuna.errors import TunaError

    served = _fake_checkout(tmp_path / "www" / "testref", slice_rows, extra_instances=40)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            requests.append(self.path)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served.parent)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        key = shared_data / "superni/test_references.jsonl.gz"
        dest = superni.download_test_tasks(tmp_path / "ni", ref="testref", base_url=url, references=key)
        assert len(requests) == 1 + 8
        td = json.loads((dest / "tasks/task039_qasc_find_overlapping_words.json").read_text())
        assert len(td["Instances"]) == 100 and td["tuna_download"]["instances_in_source"] == 140
        assert superni.load_instances(dest, references=key) == slice_rows
        (dest / "tasks/task039_qasc_find_overlapping_words.json").unlink()
        superni.download_test_tasks(dest, ref="testref", base_url=url, references=key)  # resume: only the missing file
        assert requests[9:] == ["/testref/tasks/task039_qasc_find_overlapping_words.json"]
    finally:
        srv.shutdown()
    with pytest.raises(TunaError, match="git clone https://github.com/allenai/natural-instructions"):
        superni.download_test_tasks(tmp_path / "offline", ref="testref", base_url=url, timeout=2)
