"""End to end through the CLI: `tuna eval superni|lmentry|vicuna` on the tiny random model (junk outputs, real
mechanics: prompts, cached/resumable predictions, scoring, results.json), then `tuna report`; SmolLM2 is slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuna_recipes.cli import main


def _run(*args: str) -> str:
    return main(list(args))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # 2 torch threads on 2 busy cores are ~15x slower than 1 for these tiny batches (OpenMP oversubscription).
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("eval")


def _check_common(res: dict, benchmark: str) -> None:
    assert res["benchmark"] == benchmark
    assert res["tuna_version"] and res["model_identity"]["ref"] and res["wall_time_s"] > 0
    assert res["settings_hash"] in Path(res["_p"]).parent.as_posix() or benchmark == "vicuna"


def test_superni_tiny_resume(shared_data, out_root):
    args = ("eval", "superni", "--model", "tiny-random-llama", "--limit", "2", "--generation.max_new_tokens", "4",
            "--data", str(shared_data / "superni/superni_test_slice.jsonl.gz"), "--out_root", str(out_root))
    path = _run(*args)
    res = json.loads(Path(path).read_text()) | {"_p": path}
    _check_common(res, "superni")
    assert res["metrics"]["n"] == 16 and len(res["metrics"]["per_task"]) == 8
    proto = res["protocol"]
    assert proto["label"] == "slice 8 tasks, 16 inst., 2-shot, 4 new tok."  # 2-shot is the default; the slice is named
    assert proto["fields"]["scope"] == "slice" and proto["fields"]["max_source_length"] == 1024 and proto["truncated_sources"] == 0
    assert proto["fields"]["template_digest"] and res["run"]["device"] == "cpu"
    scores = (Path(path).parent / res["item_scores"]["file"]).read_text().splitlines()
    assert len(scores) == 16 and set(json.loads(scores[0])) >= {"id", "rougeL", "exact_match"}
    preds = Path(path).parent / "predictions.jsonl"
    assert len(preds.read_text().splitlines()) == 16
    before = preds.read_bytes()
    _run(*args)  # everything cached: nothing is generated or appended
    assert preds.read_bytes() == before
    # the model-free path on the predictions this run wrote
    metrics_path = _run("eval", "superni", "--predictions", str(preds), "--references", str(shared_data / "superni/test_references.jsonl.gz"))
    m = json.loads(Path(metrics_path).read_text())["metrics"]
    assert m["n"] == 11810 and m["missing_predictions"] == 11810 - 16


def test_lmentry_tiny(shared_data, out_root):
    path = _run("eval", "lmentry", "--model", "tiny-random-llama", "--limit", "3", "--generation.max_new_tokens", "4",
                "--data", str(shared_data / "lmentry/lmentry_tasks.json.gz"), "--out_root", str(out_root))
    res = json.loads(Path(path).read_text()) | {"_p": path}
    _check_common(res, "lmentry")
    m = res["metrics"]
    assert m["approximate"] and len(m["per_task"]) == 41 and set(m["robustness_aspects"]) == {
        "argument_order", "argument_content", "template", "adjacent_tasks"}
    assert res["protocol"]["label"] == "slice 3/task, approx., 4 new tok." and res["protocol"]["approximate"]
    rows = [json.loads(x) for x in (Path(path).parent / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 41 * 3 and all({"task", "template_id", "answer_index", "score"} <= set(r) for r in rows)


@pytest.mark.parametrize("orders", ["single", "both"])
def test_vicuna_tiny_judge_errors_are_recorded(shared_data, out_root, orders):
    path = _run("eval", "vicuna", "--model", "tiny-random-llama", "--limit", "2", "--generation.max_new_tokens", "4",
                "--judge.model", "tiny-random-llama", "--judge.backend", "hf", "--review_max_tokens", "3", "--orders", orders,
                "--data", str(shared_data / "vicuna_qa"), "--out_root", str(out_root))
    res = json.loads(Path(path).read_text())
    m = res["metrics"]
    assert m["n"] == 2 and m["win"] + m["tie"] + m["lose"] + m["error"] == 2
    rows = [json.loads(x) for x in (Path(path).parent / "judgments.jsonl").read_text().splitlines()]
    assert [r["order"] for r in rows] == (["BA", "BA"] if orders == "single" else ["AB", "BA", "AB", "BA"])
    assert all((r["scores"] is None) == (r["error"] is not None) for r in rows)
    assert ("both_orders" in m) == (orders == "both")
    f = res["protocol"]["fields"]
    assert (f["orders"], f["judge_model"], f["questions"], f["opponent"], f["max_new_tokens"]) == (orders, "tiny-random-llama", 2, "gpt35", 4)
    opp = [json.loads(x) for x in (Path(path).parent / "opponent_answers.jsonl").read_text().splitlines()]
    assert [o["question_id"] for o in opp] == [1, 2]


def test_report_on_runs(out_root, tmp_path):
    d = Path(_run("report", "--runs", str(out_root), "--out", str(tmp_path), "--name", "t", "--ablation", "backend"))
    assert (d / "main.md").exists() and (d / "main.tex").exists() and (d / "vicuna_wtl.png").exists()
    assert (d / "ablation_backend.md").exists()


@pytest.mark.slow
def test_smollm2_tiny_limit(shared_data, tmp_path):
    path = _run("eval", "superni", "--model", "smollm2-135m-instruct", "--template", "chat", "--limit", "1",
                "--tasks", "[task1154_bard_analogical_reasoning_travel,task827_copa_commonsense_reasoning]", "--generation.max_new_tokens", "16",
                "--data", str(shared_data / "superni/superni_test_slice.jsonl.gz"), "--out_root", str(tmp_path))
    assert json.loads(Path(path).read_text())["metrics"]["n"] == 2
    path = _run("eval", "lmentry", "--model", "smollm2-135m-instruct", "--template", "chat", "--limit", "3", "--generation.max_new_tokens", "16",
                "--tasks", "[first_letter,bigger_number]", "--data", str(shared_data / "lmentry/lmentry_tasks.json.gz"), "--out_root", str(tmp_path))
    m = json.loads(Path(path).read_text())["metrics"]
    assert m["per_task"]["first_letter"]["n"] == 3
