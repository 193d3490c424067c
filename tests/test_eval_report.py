"""`tuna report` on hand-made fixture results: tables (Markdown + LaTeX) and PNG plots."""

from __future__ import annotations

from pathlib import Path

from evaluation.report import make_report

FIX = Path(__file__).parent / "fixtures" / "eval_results"


def test_report_tables_and_plots(tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text("models:\n  Tuna:\n    superni_rougeL: null\n")
    out = make_report(FIX, tmp_path / "r", paper=paper, ablation="lambda")
    md = (out / "main.md").read_text()
    assert "| Model | Super-NI ROUGE-L | Super-NI ROUGE-L (paper) | Super-NI EM | Vicuna vs gpt35 (W/T/L) |" in md
    assert "| Tuna | 42.00 | – | 31.50 | 30/10/38 |" in md
    assert r"\begin{tabular}" in (out / "main.tex").read_text()
    abl = (out / "ablation_lambda.md").read_text().splitlines()
    assert abl[0].startswith("| lambda |") and abl[2].startswith("| 0.5 | 40.50") and abl[3].startswith("| 1.0 | 42.00")
    for png in ("vicuna_wtl.png", "ablation_lambda.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_example_paper_yaml_has_only_nulls():
    import yaml

    obj = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "paper_numbers.example.yaml").read_text())
    assert all(v is None for row in obj["models"].values() for v in row.values())


def test_two_knob_ablation_has_one_line_per_series_value(tmp_path):
    """A margin × MLE-weight grid: rows name both knobs, and the plot draws one line per MLE weight."""
    import json

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
