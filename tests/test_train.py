"""Training for real: each stage through the CLI, exact mid-epoch resume, a 2-process DDP run, the HF export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tb_logs import tb_scalars

from tuna.config import ModelConfig, OptimConfig, TrainConfig, TrainerConfig
from tuna.data import DataConfig
from tuna.losses import LossConfig
from tuna.train import run_training

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(data: Path, out: Path, **trainer) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name_or_path="tiny-random-llama"),
        data=DataConfig(train_file=str(data), batch_size=2, max_length=128),
        loss=LossConfig(),
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
        trainer=TrainerConfig(accelerator="cpu", **trainer),
        out_dir=str(out),
        seed=7,
    )


class CrashBefore(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_gives_the_same_next_losses(vicuna_ranked, tmp_path):
    # 16 records, 2 per batch: 8 steps per epoch; the crash happens at step 3, mid-epoch
    full = tiny_cfg(vicuna_ranked, tmp_path / "full", max_steps=6, checkpoint_every_n_steps=1)
    run_training("prob-rank", full)
    expected = tb_scalars(tmp_path / "full", "train/loss")
    assert sorted(expected) == list(range(6))

    broken = tiny_cfg(vicuna_ranked, tmp_path / "broken", max_steps=6, checkpoint_every_n_steps=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training("prob-rank", broken, callbacks=[CrashBefore(3)])
    assert (tmp_path / "broken/checkpoints/last.ckpt").exists()
    run_training("prob-rank", broken)  # resume: auto picks last.ckpt
    got = tb_scalars(tmp_path / "broken", "train/loss")
    for step in range(6):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    summary = json.loads((tmp_path / "broken/train_summary.json").read_text())
    assert summary["global_step"] == 6


def test_every_stage_trains_logs_and_exports(vicuna_ranked, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stage in ("sft", "prob-rank", "context-rank"):
        out = tmp_path / stage
        hf = run_training(stage, tiny_cfg(vicuna_ranked, out, max_steps=2))
        model = AutoModelForCausalLM.from_pretrained(hf)
        tok = AutoTokenizer.from_pretrained(hf)
        ids = tok("Hello", return_tensors="pt")
        assert model(**ids).logits.shape[-1] == len(tok)
        tags = tb_scalars(out, "train/loss")
        assert len(tags) == 2
        if stage != "sft":
            for tag in ("train/loss_rank", "train/loss_mle", "train/pair_acc", "train/score_rank0", "train/tokens_per_s",
                        "train/padding_share"):
                assert tb_scalars(out, tag), tag
        else:
            assert tb_scalars(out, "train/loss_rank")[0] == 0.0


def test_training_reduces_the_loss_on_a_fixed_batch(vicuna_ranked, tmp_path):
    cfg = tiny_cfg(vicuna_ranked, tmp_path / "fit", max_steps=12)
    cfg.data.limit = 2
    cfg.data.shuffle = False
    cfg.optim.lr = 3e-3
    cfg.optim.schedule = "constant"
    cfg.trainer.max_epochs = 12
    run_training("prob-rank", cfg)
    losses = tb_scalars(tmp_path / "fit", "train/loss")
    assert losses[11] < losses[0] - 0.5


def test_lora_and_bf16_mixed(vicuna_ranked, tmp_path):
    from tuna.config import LoraConfig

    cfg = tiny_cfg(vicuna_ranked, tmp_path / "lora", max_steps=2, precision="bf16-mixed")
    cfg.model.lora = LoraConfig(r=4, alpha=8)
    cfg.model.gradient_checkpointing = True
    hf = run_training("prob-rank", cfg)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(hf)  # the adapters were merged into plain weights
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_ddp_two_processes_on_cpu(vicuna_ranked, tmp_path):
    """A real 2-process DDP run (gloo) through the CLI: each rank sees half the batches, and the validation metrics
    are synchronised: they equal the values recomputed here, in one process, over the whole validation file."""
    out = tmp_path / "ddp"
    env = {**os.environ, "TUNA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tuna_recipes", "train", "prob-rank", "--model.name_or_path", "tiny-random-llama",
           "--data.train_file", str(vicuna_ranked), "--data.val_file", str(vicuna_ranked), "--data.batch_size", "2",
           "--data.max_length", "128", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--out_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["global_step"] == 4  # 16 records / 2 per batch / 2 ranks
    from transformers import AutoModelForCausalLM

    from tuna.data import RankedCandidatesDataModule
    from tuna.losses import sequence_scores
    from tuna.models import load_tokenizer

    # validation ran once, after the last step: with the weights that were exported
    model = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    dm = RankedCandidatesDataModule(DataConfig(train_file=str(vicuna_ranked), val_file=str(vicuna_ranked), batch_size=2,
                                               max_length=128), load_tokenizer("tiny-random-llama"))
    dm.setup()
    right = pairs = 0
    per_rank: dict[int, list[float]] = {}
    with torch.no_grad():
        for batch in dm.val_dataloader():
            logits = model(input_ids=batch["input_ids"].flatten(0, 1), attention_mask=batch["attention_mask"].flatten(0, 1)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["labels"].flatten(0, 1)[:, 1:].clamp_min(0)[..., None])
            mask = batch["labels"].flatten(0, 1)[:, 1:] != -100
            scores = sequence_scores(logp.squeeze(-1).view(*batch["labels"].shape[:2], -1), mask.view(*batch["labels"].shape[:2], -1))
            for r in range(scores.shape[0]):  # the fixture's scores are 0, -1, -2, -3: no ties, every pair counts
                n = int(batch["rank_mask"][r].sum())
                for i in range(n):
                    per_rank.setdefault(i, []).append(scores[r, i].item())
                    for j in range(i + 1, n):
                        pairs += 1
                        right += int(scores[r, i] > scores[r, j])
    assert pairs == 16 * 6
    logged = tb_scalars(out, "val/pair_acc")
    assert sorted(logged) == [3]  # at the last step (0-based), once
    assert logged[3] == pytest.approx(right / pairs, abs=1e-6)
    assert len(per_rank) == 4
    for k, values in per_rank.items():
        assert tb_scalars(out, f"val/score_rank{k}")[3] == pytest.approx(sum(values) / len(values), rel=1e-4), k
    assert tb_scalars(out, "val/tie_share")[3] == 0.0


@pytest.mark.slow
def test_sft_on_the_embedded_model_with_real_alpaca(shared_data, tmp_path):
    """One real SmolLM2 step on real Alpaca records, exported and reloaded by plain transformers."""
    from transformers import AutoModelForCausalLM

    from tuna.importers import import_alpaca
    from tuna.records import write_records

    data = tmp_path / "alpaca.jsonl"
    write_records(data, import_alpaca(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz", limit=4))
    cfg = TrainConfig(model=ModelConfig(name_or_path="smollm2-135m-instruct"),
                      data=DataConfig(train_file=str(data), batch_size=2, max_length=128),
                      optim=OptimConfig(lr=1e-5), trainer=TrainerConfig(accelerator="cpu", max_steps=1, precision="bf16-mixed"),
                      out_dir=str(tmp_path / "sft"))
    hf = run_training("sft", cfg)
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.num_parameters() > 100_000_000
    assert torch.isfinite(next(model.parameters())).all()
