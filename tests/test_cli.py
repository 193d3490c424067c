"""The `tuna` command: configs parse, overrides apply, errors are one line with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml")
                       if p.parent.name in ("paper", "embedded") and p.stem in ("sft", "prob_rank", "context_rank"))


def tuna(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNA_PROGRESS": "0"}
    env.pop("TUNA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tuna_recipes", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_training_config_parses_and_overrides_apply(config):
    stage = {"sft": "sft", "prob_rank": "prob-rank", "context_rank": "context-rank"}[config.stem]
    proc = tuna("train", stage, "--config", str(config), "--optim.lr", "3e-4", "--print_config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["optim"]["lr"] == 3e-4
    raw = yaml.safe_load(config.read_text())
    assert cfg["model"]["name_or_path"] == raw["model"]["name_or_path"]
    assert cfg["data"]["train_file"] == raw["data"]["train_file"]


def test_stage_defaults_follow_the_paper():
    lrs = {}
    for stage in ("sft", "prob-rank", "context-rank"):
        proc = tuna("train", stage, "--print_config")
        assert proc.returncode == 0, proc.stderr
        lrs[stage] = yaml.safe_load(proc.stdout)["optim"]["lr"]
    assert lrs == {"sft": 2e-5, "prob-rank": 1e-5, "context-rank": 1e-6}


def test_unknown_config_key_is_named():
    proc = tuna("train", "prob-rank", "--optim.learning_rate", "1e-5")
    assert proc.returncode != 0
    assert "learning_rate" in proc.stderr


def test_bad_input_gives_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "instruction": "x", "candidates": [{"text": "a", "score": NaN}], "ranking": {"by": "t"}}\n')
    proc = tuna("train", "prob-rank", "--model.name_or_path", "tiny-random-llama", "--data.train_file", str(bad),
                "--out_dir", str(tmp_path / "o"), "--trainer.accelerator", "cpu")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tuna: error: {bad}:1: field 'candidates[0].score'"), proc.stderr[-2000:]

    proc = tuna("train", "sft", "--model.name_or_path", str(tmp_path / "nope"), "--data.train_file", str(bad),
                "--out_dir", str(tmp_path / "o2"))
    assert proc.returncode == 2 and "model path does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_import_command(shared_data, tmp_path):
    out = tmp_path / "alpaca.jsonl"
    proc = tuna("import", "--fmt", "alpaca", "--path", str(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz"),
                "--out", str(out), "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 5


def test_console_script_exits_zero_and_prints_no_return_value(shared_data, tmp_path):
    """The installed `tuna` script: a successful command exits 0 with nothing on stderr (setuptools' wrapper calls
    sys.exit on what the entry point returns)."""
    import importlib.metadata as md

    (ep,) = [e for e in md.entry_points(group="console_scripts") if e.name == "tuna"]
    assert ep.value == "tuna_recipes.cli:entry"
    code = f"import sys; from {ep.module} import {ep.attr}; sys.exit({ep.attr}())"  # exactly what the wrapper does
    out = tmp_path / "a.jsonl"
    r = subprocess.run([sys.executable, "-c", code, "import", "--fmt", "alpaca", "--path",
                        str(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz"), "--out", str(out), "--limit", "2"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "TUNA_PROGRESS": "0"})
    assert r.returncode == 0 and str(out) not in r.stderr, r.stderr[-2000:]
    assert "wrote 2 records" in r.stdout
