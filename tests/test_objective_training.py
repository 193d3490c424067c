"""Every objective trains through the CLI on both ranking stages; the reference log-probs of DPO, IPO and LiPO-λ are
scored once by `tuna reference` on exactly the training's tokens (step 0: implicit rewards 0, loss log 2), checked at
load time, and made by the pipeline as a step of its own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from tb_logs import tb_scalars
from test_pipeline import run_cli, tiny_pipeline

from tuna.config import DataConfig, ModelConfig, OptimConfig
from tuna.feedback.commands import ReferenceJob, run_reference
from tuna.losses import OBJECTIVES, LossConfig, required_candidate_fields
from tuna.records import read_records, write_records
from tuna_recipes.cli import main

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def tied_ranked(vicuna_ranked, tmp_path_factory) -> Path:
    """The 16 real Vicuna ranked sets with ranker scores 0, -1, -1, -2: one tie per record."""
    recs = read_records(vicuna_ranked)
    for r in recs:
        for c, s in zip(r.candidates, [0.0, -1.0, -1.0, -2.0]):
            c.score = s
    path = tmp_path_factory.mktemp("tied") / "ranked.jsonl"
    write_records(path, recs)
    return path


@pytest.fixture(scope="module")
def tied_ranked_ref(tied_ranked) -> Path:
    out = tied_ranked.with_name("ranked.ref.jsonl")
    run_reference(ReferenceJob(input=str(tied_ranked), out=str(out), model="tiny-random-llama", max_length=MAX_LENGTH, batch_size=4))
    return out


def _batches(path: Path, mode: str, tmp_path: Path):
    from tuna.data import RankedCandidatesDataModule
    from tuna.models import load_tokenizer

    tok = load_tokenizer("tiny-random-llama")
    dm = RankedCandidatesDataModule(DataConfig(train_file=str(path), batch_size=3, max_length=MAX_LENGTH,
                                               cache_dir=str(tmp_path / "cache")), tok, require={"ref_logprob": "test"})
    dm.setup()
    return tok, list(dm._loader(dm.train_ds, train=True))


@pytest.mark.parametrize("mode", ["chunked", "full", "packed", "prefix_shared"])
def test_step_zero_dpo_rewards_are_exactly_zero(tied_ranked, tied_ranked_ref, mode, tmp_path):
    """Reference scored in the same layout as training, in other batches (4 records there, 3 here): at step 0
    (policy = reference) every implicit reward is exactly 0, so the DPO loss is log 2."""
    from tuna.models import load_model
    from tuna.stages.base import TunaModule

    ref = tied_ranked_ref
    if mode != "chunked":
        ref = tmp_path / f"ref.{mode}.jsonl"
        run_reference(ReferenceJob(input=str(tied_ranked), out=str(ref), model="tiny-random-llama", max_length=MAX_LENGTH, batch_size=4,
                  logprob_mode=mode))
        other = [c.ref_logprob for r in read_records(tied_ranked_ref) for c in r.candidates]
        mine = [c.ref_logprob for r in read_records(ref) for c in r.candidates]
        assert len(mine) == 64 and max(abs(a - b) for a, b in zip(mine, other)) < 1e-3  # layouts agree
    tok, batches = _batches(ref, mode, tmp_path)
    module = TunaModule(ModelConfig(name_or_path="tiny-random-llama", logprob_mode=mode), LossConfig(objective="dpo"),
                            OptimConfig(), tokenizer=tok, model=load_model("tiny-random-llama", tokenizer=tok))
    seen = 0
    with torch.no_grad():
        for batch in batches:
            out = module.compute(batch)
            assert out.rewards is not None and bool((out.rewards[out.rank_mask] == 0).all()), mode
            assert float(out.loss) == pytest.approx(math.log(2), abs=2e-7), mode  # a float32 mean of log 2s
            seen += int(out.rank_mask.sum())
    assert seen == 64


def test_reference_resumes_without_duplicates(tied_ranked, tied_ranked_ref, tmp_path):
    out = tmp_path / "part.ref.jsonl"
    run_reference(ReferenceJob(input=str(tied_ranked), out=str(out), model="tiny-random-llama", max_length=MAX_LENGTH, limit=5))
    first = out.read_text().splitlines()
    run_reference(ReferenceJob(input=str(tied_ranked), out=str(out), model="tiny-random-llama", max_length=MAX_LENGTH))
    lines = out.read_text().splitlines()
    assert lines[:5] == first and len(lines) == 16 and len({json.loads(x)["id"] for x in lines}) == 16
    full = {r.id: [c.ref_logprob for c in r.candidates] for r in read_records(tied_ranked_ref)}
    for r in read_records(out):
        assert [c.ref_logprob for c in r.candidates] == pytest.approx(full[r.id], abs=1e-4)
        assert all(c.ref_model == "tiny-random-llama" and c.ref_tokens >= 1 for c in r.candidates)


def _train(stage: str, data: Path, out: Path, *args: str) -> None:
    main(["train", stage, "--model.name_or_path", "tiny-random-llama", "--data.train_file", str(data),
          "--data.batch_size", "2", "--data.max_length", str(MAX_LENGTH), "--trainer.accelerator", "cpu",
          "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--optim.lr", "1e-3", "--out_dir", str(out), *args])


@pytest.mark.parametrize("stage", ["prob-rank", "context-rank"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_through_the_cli(objective, stage, tied_ranked_ref, tmp_path):
    """prob-rank with ties ordered, context-rank with ties skipped: each logs the shared metrics to TensorBoard."""
    ties = "ordered" if stage == "prob-rank" else "skip"
    _train(stage, tied_ranked_ref, tmp_path, "--loss.objective", objective, "--loss.ties", ties)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["global_step"] == 2
    tags = ["train/loss", "train/loss_rank", "train/loss_mle", "train/pair_acc", "train/score_rank0", "train/score_rank3",
            "train/tie_share"]
    if "ref_logprob" in required_candidate_fields(LossConfig(objective=objective)):  # implicit rewards β·log(π/π_ref)
        tags += ["train/reward_acc", "train/reward_rank0"]
    for tag in tags:
        values = tb_scalars(tmp_path, tag)
        assert sorted(values) == [0, 1] and all(math.isfinite(v) for v in values.values()), tag
    assert tb_scalars(tmp_path, "train/tie_share")[0] == pytest.approx(1 / 6)  # one tied pair of 6 per record
    rank = tb_scalars(tmp_path, "train/loss_rank")
    assert rank[0] > 0
    if objective == "dpo":  # step 0: policy = reference
        assert rank[0] == pytest.approx(math.log(2), abs=1e-6)
    if objective == "ipo":
        assert rank[0] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)
    if objective == "lipo":  # step 0: every reward 0, so τ is the given ranking and each pair weighs Δ_ij·log 2
        labels = [1, 2 / 3, 1 / 3, 0] if ties == "ordered" else [0.0, -1.0, -1.0, -2.0]  # win shares | ranker scores
        inv_d = [1 / math.log2(2 + k) for k in range(4)]
        expected = sum(abs(2 ** labels[i] - 2 ** labels[j]) * (inv_d[i] - inv_d[j]) * math.log(2)
                       for i in range(4) for j in range(i + 1, 4) if labels[i] > labels[j])
        assert rank[0] == pytest.approx(expected, rel=1e-5)


def test_missing_or_mismatched_reference_is_one_line(tied_ranked, tied_ranked_ref, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _train("prob-rank", tied_ranked, tmp_path / "a", "--loss.objective", "dpo")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"tuna: error: {tied_ranked}:1: field 'candidates[0].ref_logprob': loss.objective=dpo needs"), err
    assert "tuna reference --input" in err and "Traceback" not in err

    with pytest.raises(SystemExit):  # the reference was scored with max_length 64, this run cuts at 40
        _train("prob-rank", tied_ranked_ref, tmp_path / "b", "--loss.objective", "ipo", "--data.max_length", "40")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tied_ranked_ref}:" in err and ".ref_tokens'" in err and "rerun `tuna reference`" in err, err

    with pytest.raises(SystemExit):
        _train("prob-rank", tied_ranked_ref, tmp_path / "c", "--loss.objective", "dpo", "--trainer.precision", "bf16-true")
    assert "trainer.precision" in capsys.readouterr().err

    unscored = tmp_path / "unscored.jsonl"
    recs = read_records(tied_ranked)
    recs[2].candidates[1].score = None
    write_records(unscored, recs)
    with pytest.raises(SystemExit):  # PRO's dynamic temperature reads the ranker's scores
        _train("prob-rank", unscored, tmp_path / "d", "--loss.objective", "pro")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"tuna: error: {unscored}:3: field 'candidates[1].score': loss.objective=pro needs score"), err


def test_pipeline_scores_the_reference_once_for_dpo_ipo_and_lipo(shared_data, tmp_path):
    cfg = tiny_pipeline(tmp_path, evaluate=["tuna_p"])
    cfg["prob_rank"]["loss"] = {"objective": "dpo"}
    cfg["evaluation"]["benchmarks"] = ["lmentry"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("pipeline", "--config", str(path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = json.loads((tmp_path / "run/manifest.json").read_text())["steps"]
    assert steps["reference_tuna_p"]["status"] == "done" and steps["tuna_p"]["status"] == "done"
    (ref_file,) = steps["reference_tuna_p"]["outputs"]
    recs = read_records(ref_file)
    assert len(recs) == 4 and all(c.ref_logprob is not None and c.ref_model == "tiny-random-llama"
                                  for r in recs for c in r.candidates)
    assert steps["tuna_p"]["inputs"]["data"] != steps["teacher_score"]["inputs"]["candidates"]
    assert (tmp_path / "results/main.md").exists()

    for objective in ("ipo", "lipo"):  # the same reference serves every objective that reads it
        proc = run_cli("pipeline", "--config", str(path), "--prob_rank.loss.objective", objective)
        assert proc.returncode == 0, proc.stderr[-4000:]
        ran = [line for line in proc.stdout.splitlines() if line.startswith("=== ")]
        assert "=== reference_tuna_p ===" not in ran and "=== tuna_p ===" in ran, (objective, ran)
        steps = json.loads((tmp_path / "run/manifest.json").read_text())["steps"]
        assert steps["tuna_p"]["inputs"]["cfg"]["loss"]["objective"] == objective
