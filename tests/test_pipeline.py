"""`tuna pipeline` and `tuna sweep` end to end on the tiny model: manifests, skipping finished steps, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuna.errors import TunaError
from tuna.objectives import OBJECTIVES
from tuna_recipes.pipeline.config import PipelineConfig, build_config, set_dotted
from tuna_recipes.pipeline.sweep import expand_grid, run_label

REPO = Path(__file__).resolve().parents[1]


def tiny_pipeline(tmp: Path, **over) -> dict:
    cfg = {
        "name": "tiny", "run_dir": str(tmp / "run"), "results_dir": str(tmp / "results"),
        "student": "tiny-random-llama",
        "prob_instructions": {"offset": 0, "limit": 4},
        "context_instructions": {"offset": 100, "limit": 3},
        "teacher": {"model": "tiny-random-llama", "n": 3, "max_new_tokens": 8, "dtype": "float32", "dedup": False},
        "student_sampling": {"n": 2, "max_new_tokens": 8, "dtype": "float32", "dedup": False},
        "prob_rank": {"trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2}, "optim": {"lr": 1e-3}},
        "variants": ["tuna_p"],
        "evaluate": ["student", "tuna_p"],
        "evaluation": {"benchmarks": ["lmentry", "superni"], "lmentry_limit": 1, "superni_limit": 1, "generation": {"max_new_tokens": 4},
                       "template": "raw"},
    }
    for k, v in over.items():
        set_dotted(cfg, k, v) if "." in k else cfg.__setitem__(k, v)
    return cfg


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNA_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "tuna_recipes", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_pipeline_runs_skips_finished_steps_and_writes_tables(shared_data, tmp_path):
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_pipeline(tmp_path)))
    proc = run_cli("pipeline", "--config", str(cfg_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    man = json.loads((tmp_path / "run/manifest.json").read_text())
    steps = man["steps"]
    for name in ("teacher_sample", "teacher_score", "tuna_p", "eval_student_lmentry", "eval_tuna_p_superni"):
        assert steps[name]["status"] == "done", name
        assert steps[name]["wall_s"] >= 0
    assert "torch" in man["versions"] and man["config"]["student"] == "tiny-random-llama"
    main = (tmp_path / "results/main.md").read_text()
    assert "tuna_p" in main and "student" in main and "LMentry" in main
    assert (tmp_path / "results/main.tex").exists() and (tmp_path / "results/timings.md").exists()
    ranked = [json.loads(x) for x in next((tmp_path / "run/shared").glob("prob-*/ranked-*.jsonl")).read_text().splitlines()]
    assert len(ranked) == 4 and all(len(r["candidates"]) == 3 and r["ranking"]["by"] == "teacher" for r in ranked)

    # a re-run with the same config does nothing again; changing a loss knob retrains but reuses the teacher data
    proc = run_cli("pipeline", "--config", str(cfg_path))
    assert proc.returncode == 0
    assert proc.stdout.count("=== ") == 0, proc.stdout
    proc = run_cli("pipeline", "--config", str(cfg_path), "--prob_rank.loss.margin", "0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = [line for line in proc.stdout.splitlines() if line.startswith("=== ")]
    assert "=== teacher_sample ===" not in rerun and "=== tuna_p ===" in rerun


def test_sweep_two_knob_grid(shared_data, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_pipeline(tmp_path)))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": str(base), "name": "grid", "run_dir": str(tmp_path / "sweep"), "results_dir": str(tmp_path / "sweep_results"),
        "grid": {"prob_rank.loss.margin": [0.0, 0.1], "prob_rank.loss.mle_weight": [0.0, 1.0]},
        "set": {"evaluate": ["tuna_p"], "evaluation.benchmarks": ["lmentry"]},
    }))
    proc = run_cli("sweep", "--config", str(sweep))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("=== teacher_sample ===") == 1  # the four runs share the teacher's data
    table = (tmp_path / "sweep_results/ablation_run.md").read_text()
    for label in ("margin=0.0,mle_weight=0.0", "margin=0.1,mle_weight=1.0"):
        assert label in table
    assert (tmp_path / "sweep_results/ablation_run.png").exists()
    info = json.loads((tmp_path / "sweep/sweep.json").read_text())
    assert len(info["runs"]) == 4


def test_config_helpers():
    assert expand_grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    every = expand_grid({"prob_rank.loss.objective": "all", "prob_rank.optim.lr": [1e-5]})
    assert [r["prob_rank.loss.objective"] for r in every] == list(OBJECTIVES) and len(every) == len(OBJECTIVES) >= 8
    with pytest.raises(TunaError, match=r"field 'grid.prob_rank.loss.margin'"):
        expand_grid({"prob_rank.loss.margin": "all"})
    assert run_label({"prob_rank.loss.margin": 0.1}) == "margin=0.1"
    d = {"prob_rank": {"loss": {"margin": 0.1}}}
    set_dotted(d, "prob_rank.loss.margin", 0.3)
    assert d["prob_rank"]["loss"]["margin"] == 0.3
    with pytest.raises(TunaError, match="does not exist"):
        set_dotted(d, "prob_rank.loss.margn", 0.3)
    with pytest.raises(TunaError, match="invalid pipeline config"):
        build_config({"teacher": {"modle": "x"}})
    assert build_config({}) == PipelineConfig()  # an empty config is the defaults


EXPERIMENT_YAMLS = sorted((REPO / "experiments").rglob("*.yaml"))
# checked elsewhere: training configs (test_cli), the example paper numbers (test_eval_report)
CHECKED_ELSEWHERE = [p for p in EXPERIMENT_YAMLS if p.parent.name in ("paper", "embedded") or p.name == "paper_numbers.example.yaml"]


def test_every_experiment_yaml_has_a_check():
    from test_cli import TRAIN_CONFIGS

    training = [p for p in CHECKED_ELSEWHERE if p.name != "paper_numbers.example.yaml"]
    assert training == TRAIN_CONFIGS and len(training) == 6
    assert len(EXPERIMENT_YAMLS) - len(CHECKED_ELSEWHERE) >= 15


@pytest.mark.parametrize("path", [p for p in EXPERIMENT_YAMLS if p not in CHECKED_ELSEWHERE], ids=lambda p: str(p.relative_to(REPO)))
def test_every_experiment_config_is_valid(path):
    """Pipeline, sweep and ablation configs parse against the typed configs (training configs: test_cli)."""
    from tuna_recipes.pipeline.sweep import SweepConfig

    raw = yaml.safe_load(path.read_text())
    if path.parent.name in ("ablations", "sweeps", "verifiable"):
        sw = SweepConfig(**raw)
        base = build_config(yaml.safe_load((REPO / sw.base).read_text())) if sw.base else PipelineConfig()
        from dataclasses import asdict

        runs = list(sw.arms.values()) or expand_grid(sw.grid)
        for overrides in runs:  # every arm (or every run of the grid) builds a valid pipeline config
            d = json.loads(json.dumps(asdict(base)))
            for k, v in {**sw.set, **overrides}.items():
                set_dotted(d, k, v)
            build_config(d)
    elif path.parent.name == "pipeline" or path.name == "demo.yaml":
        build_config(raw)
    elif path.parent.name == "feedback":  # `tuna sample|judge --config`: every key is a field of the command's job
        import dataclasses

        from tuna.feedback import commands as fb

        job = fb.COMMANDS[path.stem.split("_")[0]]
        unknown = set(raw) - {f.name for f in dataclasses.fields(job)}
        assert not unknown, f"{path.name}: keys {sorted(unknown)} are not fields of tuna {path.stem.split('_')[0]}"
    else:
        raise AssertionError(f"{path}: no check for this kind of config")
