"""`tuna report`: columns keyed by protocol (never merged), cells with bootstrap intervals and n, paired differences
against a baseline row, ablations, plots; on hand-made results (invented numbers, not model outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation import protocol, stats
from evaluation.report import make_report
from tuna.errors import TunaError

FIX = Path(__file__).parent / "fixtures" / "eval_results"


def _superni(root: Path, name: str, rouge: list[float], *, shots: int = 2, when: str = "2026-01-01T00:00:00", tags=None) -> Path:
    """A Super-NI results.json + scores.jsonl over instances t-0..t-(n-1) of one task."""
    d = root / f"superni-{name}-{shots}-{when[-2:]}"
    d.mkdir(parents=True)
    ids = [f"t-{i}" for i in range(len(rouge))]
    (d / "scores.jsonl").write_text("".join(json.dumps({"id": i, "task": "t", "rougeL": r, "exact_match": float(r == 1.0)}) + "\n"
                                            for i, r in zip(ids, rouge)))
    fields = {"items": len(ids), "items_digest": protocol.digest(sorted(ids)), "tasks": 1, "scope": "slice", "num_pos_examples": shots,
              "max_source_length": 1024, "decoding": "greedy", "max_new_tokens": 128, "postprocess": "none", "template": "alpaca"}
    res = {"benchmark": "superni", "model": name, "tags": {"name": name, **(tags or {})}, "settings": {"num_pos_examples": shots},
           "finished_at": when, "protocol": protocol.make("superni", fields),
           "metrics": {"rougeL": round(100 * float(np.mean(rouge)), 4), "exact_match": round(100 * float(np.mean([r == 1.0 for r in rouge])), 4),
                       "n": len(rouge)},
           "item_scores": {"file": "scores.jsonl", "unit": "instance"}}
    (d / "results.json").write_text(json.dumps(res))
    return d


def _vicuna(root: Path, name: str, single: list[str], both: list[str] | None = None) -> Path:
    d = root / f"vicuna-{name}"
    d.mkdir(parents=True)

    def block(results: list[str]) -> dict:
        pq = [{"question_id": i + 1, "category": "generic", "result": r} for i, r in enumerate(results)]
        return {**{k: results.count(k) for k in ("win", "tie", "lose", "error")}, "n": len(results), "per_question": pq}

    fields = {"questions": len(single), "questions_digest": "q", "opponent": "gpt35", "judge_model": "gpt-4-0613",
              "orders": "both" if both else "single", "parse": "lenient", "template": "alpaca", "max_new_tokens": 1024}
    m = block(single)
    if both:
        m["both_orders"] = {**block(both), "rule": "sum"}
    res = {"benchmark": "vicuna", "model": name, "tags": {"name": name, "opponent": "gpt35"}, "settings": {"opponent": "gpt35"},
           "finished_at": "2026-01-01T00:00:00", "protocol": protocol.make("vicuna", fields), "metrics": m,
           "item_scores": {"inline": "metrics.per_question", "unit": "question"}}
    (d / "results.json").write_text(json.dumps(res))
    return d


def test_protocols_never_share_a_column(tmp_path):
    """A 0-shot and a 2-shot run of one model are two columns, each labelled with its shots and as a slice."""
    _superni(tmp_path / "runs", "student", [0.2, 0.4, 0.6, 0.8], shots=0)
    _superni(tmp_path / "runs", "student", [0.5, 0.5, 0.5, 1.0], shots=2)
    out = make_report(tmp_path / "runs", tmp_path / "r", resamples=200)
    md = (out / "main.md").read_text()
    header = md.splitlines()[0]
    assert "Super-NI ROUGE-L [slice 1 tasks, 4 inst., 0-shot]" in header and "Super-NI ROUGE-L [slice 1 tasks, 4 inst., 2-shot]" in header
    rep = json.loads((out / "report.json").read_text())
    cells = rep["cells"]["student"]
    assert cells["Super-NI ROUGE-L [slice 1 tasks, 4 inst., 0-shot]"]["value"] == 50.0
    assert cells["Super-NI ROUGE-L [slice 1 tasks, 4 inst., 2-shot]"]["value"] == 62.5
    assert len({c["protocol"] for c in rep["columns"]}) == 2
    assert "Protocols (columns with different protocols are never merged)" in md and "num_pos_examples=0" in md


def test_protocols_with_the_same_label_still_get_two_columns(tmp_path):
    """Two runs that differ only in a field the label does not show (the template's digest): the protocol key goes
    into both headers instead of one column holding both numbers."""
    _superni(tmp_path / "runs", "m", [0.2, 0.4], when="2026-01-01T00:00:01")
    b = _superni(tmp_path / "runs", "m", [0.6, 0.8], when="2026-01-01T00:00:02")
    res = json.loads((b / "results.json").read_text())
    res["protocol"] = protocol.make("superni", {**res["protocol"]["fields"], "template_digest": "edited"})
    (b / "results.json").write_text(json.dumps(res))
    out = make_report(tmp_path / "runs", tmp_path / "r", resamples=50)
    cells = json.loads((out / "report.json").read_text())["cells"]["m"]
    rouge = {t: c["value"] for t, c in cells.items() if t.startswith("Super-NI ROUGE-L")}
    assert sorted(rouge.values()) == [30.0, 70.0] and all(", protocol " in t for t in rouge)


def test_cells_show_the_bootstrap_interval_and_n(tmp_path):
    rouge = list(np.random.default_rng(0).random(60).round(3))
    _superni(tmp_path / "runs", "m", rouge)
    out = make_report(tmp_path / "runs", tmp_path / "r", resamples=500, seed=3)
    want = stats.mean_ci([100 * r for r in rouge], resamples=500, seed=3)
    cell = json.loads((out / "report.json").read_text())["cells"]["m"]["Super-NI ROUGE-L [slice 1 tasks, 60 inst., 2-shot]"]
    assert (cell["lo"], cell["hi"], cell["n"]) == (want.lo, want.hi, 60)
    row = next(x for x in (out / "main.md").read_text().splitlines() if x.startswith("| m |"))
    assert f"{100 * np.mean(rouge):.2f} [{want.lo:.2f}, {want.hi:.2f}] n=60" in row
    assert r"{\scriptsize $n$=60}" in (out / "main.tex").read_text()
    again = make_report(tmp_path / "runs", tmp_path / "r2", resamples=500, seed=3)
    assert (again / "main.md").read_text() == (out / "main.md").read_text()  # seeded: the same table twice


def test_paired_difference_against_the_baseline(tmp_path):
    rng = np.random.default_rng(1)
    base = list(rng.random(80).round(3))
    _superni(tmp_path / "runs", "student", base)
    _superni(tmp_path / "runs", "same", base)
    _superni(tmp_path / "runs", "better", [min(1.0, b + 0.1) for b in base])
    out = make_report(tmp_path / "runs", tmp_path / "r", baseline="student", resamples=400)
    deltas = json.loads((out / "report.json").read_text())["deltas"]
    col = "Super-NI ROUGE-L [slice 1 tasks, 80 inst., 2-shot]"
    assert (deltas["same"][col]["value"], deltas["same"][col]["lo"], deltas["same"][col]["hi"]) == (0.0, 0.0, 0.0)
    order = sorted(range(80), key=lambda i: f"t-{i}")  # the report pairs items in id order
    want = stats.paired_difference([100 * min(1.0, base[i] + 0.1) for i in order], [100 * base[i] for i in order], resamples=400)
    assert deltas["better"][col]["value"] == pytest.approx(want.value) and deltas["better"][col]["lo"] == pytest.approx(want.lo)
    md = (out / "main.md").read_text()
    assert "Paired difference vs student" in md
    better_row = [x for x in md.splitlines() if x.startswith("| better |")][-1]
    assert f"{want.value:+.2f} [{want.lo:+.2f}, {want.hi:+.2f}]* n=80" in better_row
    same_row = [x for x in md.splitlines() if x.startswith("| same |")][-1]
    assert "+0.00 [+0.00, +0.00] n=80" in same_row and "*" not in same_row
    assert (out / "main_delta.tex").exists() and (out / "main.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TunaError, match="baseline row 'nobody'"):
        make_report(tmp_path / "runs", tmp_path / "r3", baseline="nobody")


def test_vicuna_single_and_both_orders_are_two_columns_with_win_rate_intervals(tmp_path):
    single = ["win"] * 30 + ["tie"] * 10 + ["lose"] * 38 + ["error"] * 2
    both = ["win"] * 25 + ["tie"] * 20 + ["lose"] * 33 + ["error"] * 2
    _vicuna(tmp_path / "runs", "tuna", single, both)
    _vicuna(tmp_path / "runs", "student", ["win"] * 20 + ["tie"] * 10 + ["lose"] * 48 + ["error"] * 2)
    out = make_report(tmp_path / "runs", tmp_path / "r", baseline="student", resamples=400)
    rep = json.loads((out / "report.json").read_text())
    titles = [c["title"] for c in rep["columns"]]
    assert titles == ["Vicuna vs gpt35 (W/T/L) [80 q., judge gpt-4-0613, single order, lenient parse]",
                      "Vicuna vs gpt35 (W/T/L) [80 q., judge gpt-4-0613, both orders, lenient parse]"]
    cell = rep["cells"]["tuna"][titles[0]]
    want = stats.mean_ci([1.0] * 30 + [0.0] * 48, resamples=400)
    assert cell["value"] == "30/10/38 (2 err.)" and cell["n"] == 78 and cell["win_rate"] == pytest.approx(100 * 30 / 78)
    assert (cell["lo"], cell["hi"]) == (pytest.approx(100 * want.lo), pytest.approx(100 * want.hi))
    assert rep["cells"]["tuna"][titles[1]]["value"] == "25/20/33 (2 err.)"
    assert titles[1] not in rep["cells"]["student"]  # the student has no both-order run: no number under that protocol
    d = rep["deltas"]["tuna"][titles[0]]
    assert d["value"] == pytest.approx(100 * (30 - 20) / 78) and d["n"] == 78
    assert (out / "vicuna_wtl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_over_a_protocol_knob_shares_one_column(tmp_path):
    """--ablation num_pos_examples: the knob is left out of the column key, so 0 and 2 shots are rows of one column."""
    _superni(tmp_path / "runs", "m", [0.2, 0.4, 0.6, 0.8], shots=0)
    _superni(tmp_path / "runs", "m", [0.5, 0.5, 0.5, 1.0], shots=2)
    out = make_report(tmp_path / "runs", tmp_path / "r", ablation="num_pos_examples", resamples=100)
    lines = (out / "ablation_num_pos_examples.md").read_text().splitlines()
    assert lines[0].startswith("| num_pos_examples | Super-NI ROUGE-L [slice 1 tasks, 4 inst.] |")
    assert lines[2].startswith("| 0 | 50.00 [") and lines[3].startswith("| 2 | 62.50 [")
    assert (out / "ablation_num_pos_examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_legacy_results_without_a_protocol(tmp_path):
    """Results written before protocols were recorded: labelled as such, keyed by their settings, no intervals."""
    paper = tmp_path / "paper.yaml"
    paper.write_text("models:\n  Tuna:\n    superni_rougeL: null\n")
    out = make_report(FIX, tmp_path / "r", paper=paper, ablation="lambda")
    md = (out / "main.md").read_text()
    head = md.splitlines()[0]
    assert head.startswith("| Model | Super-NI ROUGE-L [protocol not recorded: num_pos_examples=0] | Super-NI ROUGE-L (paper) |")
    assert "| Tuna | 42.00 n=11810 | – | 31.50 n=11810 | 30/10/38 (2 err.) |" in md
    assert r"\begin{tabular}" in (out / "main.tex").read_text()
    abl = (out / "ablation_lambda.md").read_text().splitlines()
    assert abl[0].startswith("| lambda |") and abl[2].startswith("| 0.5 | 40.50") and abl[3].startswith("| 1.0 | 42.00")
    for png in ("vicuna_wtl.png", "ablation_lambda.png", "main.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_example_paper_yaml_has_only_nulls():
    import yaml

    obj = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "paper_numbers.example.yaml").read_text())
    assert all(v is None for row in obj["models"].values() for v in row.values())


def test_two_knob_ablation_has_one_line_per_series_value(tmp_path):
    """A margin × MLE-weight grid: rows name both knobs, and the plot draws one line per MLE weight."""
    runs = tmp_path / "runs"
    for i, (m, w, rouge) in enumerate([(0.0, 0.0, 18.0), (0.1, 0.0, 18.5), (0.0, 1.0, 8.0), (0.1, 1.0, 13.0)]):
        d = runs / str(i)
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "benchmark": "superni", "model": f"m{i}", "tags": {"name": f"m{i}", "margin": m, "mle_weight": w},
            "settings": {}, "metrics": {"rougeL": rouge, "exact_match": 0.0}, "created": f"2026-01-0{i + 1}"}))
    out = make_report(runs, tmp_path / "r", paper=None, ablation="margin", series="mle_weight")
    rows = (out / "ablation_margin_x_mle_weight.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| margin=0.0, mle_weight=0.0", "| margin=0.1, mle_weight=0.0",
                                                "| margin=0.0, mle_weight=1.0", "| margin=0.1, mle_weight=1.0"]
    assert rows[2].split(" | ")[1] == "8.00"
    assert (out / "ablation_margin_x_mle_weight.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _lmentry(root: Path, name: str, items: list[dict]) -> Path:
    from evaluation import lmentry

    d = root / f"lmentry-{name}"
    d.mkdir(parents=True)
    (d / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    m = lmentry.summarize(lmentry.aggregate(lmentry.task_accuracies(lmentry.counts_from_items(items))))
    fields = {"items": len(items), "items_digest": "x", "scope": "full", "limit": None, "decoding": "greedy", "max_new_tokens": 50,
              "truncate": False, "template": "alpaca"}
    res = {"benchmark": "lmentry", "model": name, "tags": {"name": name}, "settings": {}, "finished_at": "2026-01-01T00:00:00",
           "protocol": protocol.make("lmentry", fields), "metrics": m, "item_scores": {"file": "scores.jsonl", "unit": "example"}}
    (d / "results.json").write_text(json.dumps(res))
    return d


def test_lmentry_cells_interval_on_accuracy_and_paired_difference(tmp_path):
    from test_eval_stats import _lmentry_items

    a, b = _lmentry_items(3), _lmentry_items(3, model_shift=0.3)
    _lmentry(tmp_path / "runs", "student", a)
    _lmentry(tmp_path / "runs", "tuna", b)
    out = make_report(tmp_path / "runs", tmp_path / "r", baseline="student", resamples=300)
    rep = json.loads((out / "report.json").read_text())
    acc = rep["cells"]["tuna"]["LMentry acc. [full]"]
    want = stats.lmentry_cis(b, resamples=300)["accuracy"]
    assert (acc["value"], acc["lo"], acc["hi"], acc["n"]) == (round(want.value, 1), want.lo, want.hi, len(b))
    score = rep["cells"]["tuna"]["LMentry score [full]"]
    assert score["lo"] is None and score["n"] == len(b)  # no interval on the score (biased under resampling)
    d = rep["deltas"]["tuna"]["LMentry acc. [full]"]
    wd = stats.lmentry_paired(b, a, resamples=300)["accuracy"]
    assert (d["value"], d["lo"], d["hi"]) == (wd.value, wd.lo, wd.hi) and d["lo"] > 0
    md = (out / "main.md").read_text()
    assert f"{wd.value:+.1f} [{wd.lo:+.1f}, {wd.hi:+.1f}]*" in md
