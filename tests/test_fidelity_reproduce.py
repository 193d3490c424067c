"""`tuna reproduce` end to end on the released-schema fixtures with the tiny model: SFT -> Tuna_p -> Tuna from the
files, evaluation on tiny slices (a loopback judge for Vicuna), and the main tables with a "(paper)" column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from fault_server import FaultServer

from tuna_recipes.reproduce import ReproduceConfig, prepare, released_format, split_table

REPO = Path(__file__).resolve().parents[1]
RELEASED = Path(__file__).parent / "fixtures" / "released"


def tiny_overrides() -> dict:
    cpu = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true", "checkpoint_every_n_steps": 0}
    out = {}
    for stage, steps in (("sft", 1), ("prob_rank", 2), ("context_rank", 2)):
        for k, v in {**cpu, "max_steps": steps}.items():
            out[f"{stage}.trainer.{k}"] = v
        out[f"{stage}.data.batch_size"] = 4
        out[f"{stage}.data.max_length"] = 160
        out[f"{stage}.model.gradient_checkpointing"] = False
        out[f"{stage}.optim.lr"] = 1e-3
    return out


def test_formats_are_recognised_and_training_files_get_no_second_regulariser(tmp_path):
    assert released_format(RELEASED / "train.davinci_003_w_prob.w_orig_alpaca.json") == "tuna-train"
    assert released_format(RELEASED / "davinci_003_w_prob.jsonl") == "tuna-davinci"
    assert released_format(RELEASED / "gpt-4-ranking.json") == "tuna-gpt4"
    rc = ReproduceConfig(base_model="tiny-random-llama", alpaca=str(RELEASED / "alpaca_data.json"),
                         prob_data=str(RELEASED / "train.davinci_003_w_prob.w_orig_alpaca.json"),
                         context_data=str(RELEASED / "train.gpt-4-ranking.w_orig_alpaca.json"), run_dir=str(tmp_path / "r"))
    cfg = prepare(rc)
    assert cfg.prob_rank.data.regularizer == cfg.context_rank.data.regularizer == "none"
    assert cfg.variants == ["tuna_p", "tuna"] and cfg.student == "tiny-random-llama"
    assert cfg.sft_instructions.path == rc.alpaca and cfg.sft_instructions.limit is None
    assert cfg.prob_rank.optim.lr == 1e-5 and cfg.context_rank.optim.lr == 1e-6  # the paper pipeline's settings
    imported = [json.loads(x) for x in Path(cfg.prob_ranked).read_text().splitlines()]
    assert len(imported) == 8  # every row of the training file, its original-Alpaca rows included


def test_reproduce_end_to_end_prints_the_three_tables(shared_data, tmp_path):
    paper = tmp_path / "numbers.yaml"  # made-up test values, not the paper's
    paper.write_text(yaml.safe_dump({"models": {"Alpaca": {"superni_rougeL": 11.5, "lmentry_score": 22.5},
                                                "Tuna": {"superni_rougeL": 33.5, "vicuna_vs_gpt35": "1/2/3"}}}))
    with FaultServer(rate=0.0) as judge:
        rc = {
            "base_model": "tiny-random-llama", "alpaca": str(RELEASED / "alpaca_data.json"),
            "prob_data": str(RELEASED / "davinci_003_w_prob.jsonl"), "context_data": str(RELEASED / "gpt-4-ranking.json"),
            "paper_numbers": str(paper), "run_dir": str(tmp_path / "run"), "results_dir": str(tmp_path / "results"),
            "set": {**tiny_overrides(),
                    "evaluation": {"benchmarks": ["superni", "lmentry", "vicuna"], "superni_limit": 1, "lmentry_limit": 1,
                                   "vicuna_limit": 1, "generation": {"max_new_tokens": 4}, "superni_data": None,
                                   "vicuna_judge": None, "vicuna_max_new_tokens": None,
                                   "runtime": {"batch_size": 4, "device": "cpu"}},
                    "judge.model": "fault-judge", "judge.base_url": judge.base_url, "judge.api_key_env": "TUNA_TEST_KEY",
                    "judge.max_cost": None, "judge.concurrency": 1},
        }
        cfg_path = tmp_path / "rc.yaml"
        cfg_path.write_text(yaml.safe_dump(rc))
        env = {**os.environ, "TUNA_PROGRESS": "0", "TUNA_TEST_KEY": "sk-test", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "reproduce", "--config", str(cfg_path)], capture_output=True,
                              text=True, timeout=1500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = json.loads((tmp_path / "run/manifest.json").read_text())["steps"]
    assert [s for s in ("sft", "tuna_p", "tuna") if steps[s]["status"] == "done"] == ["sft", "tuna_p", "tuna"]
    assert not any(s.startswith(("teacher_", "sample_", "judge_")) for s in steps)  # the released data, not made here
    assert "data.regularizer=copies: 4 original-Alpaca rows mixed with 4 records" in proc.stderr
    assert "data.regularizer=copies: 3 original-Alpaca rows mixed with 3 records" in proc.stderr
    for title in ("## Super-NI", "## LMentry", "## Vicuna"):
        assert title in proc.stdout
    superni = (tmp_path / "results/table_superni.md").read_text()
    head, _, *rows = superni.splitlines()
    assert "(paper)" in head and [r.split("|")[1].strip() for r in rows] == ["Alpaca", "Tuna_p", "Tuna"]
    assert "11.50" in rows[0] and "33.50" in rows[2]
    assert "1/2/3" in (tmp_path / "results/table_vicuna.md").read_text()


def test_split_table():
    md = "| model | Super-NI ROUGE-L | LMentry score |\n|---|---:|---:|\n| student | 1.00 | 2.00 |\n| tuna | 3.00 | 4.00 |\n"
    assert split_table(md, "LMentry") == "| model | LMentry score |\n| --- | ---: |\n| Alpaca | 2.00 |\n| Tuna | 4.00 |\n"
    assert split_table(md, "Vicuna") is None
