"""The training recipe against the released scripts' numbers (docs/fidelity.md): the paper configs, the LR
schedule step by step, no gradient clipping, and the sampler's top-k reaching Hugging Face generate."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from tuna.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, TrainerConfig
from tuna.losses import LossConfig
from tuna.train import run_training

REPO = Path(__file__).resolve().parents[1]

# tuna/src/train_tuna.sh (L3-19, L22-49) and configs/deepspeed_config.json (L31-42), the values as the script passes them
TRAIN_TUNA_SH = {"NUM_TRAIN_EPOCHS": 1, "PER_DEVICE_TRAIN_BATCH_SIZE": 16, "GRADIENT_ACCUMULATION_STEPS": 1, "MLE_WEIGHT": 1.0,
                 "MARGIN": 0.1, "BETA1": 0.9, "BETA2": 0.999, "WARMUP_STEPS": 2, "lr_scheduler_type": "cosine",
                 "gradient_checkpointing": True, "model_max_length": 512, "eps": 1e-8, "weight_decay": 0}
README_LR = {"prob_rank": 1e-5, "context_rank": 1e-6}  # README: `bash src/train_tuna.sh <file> 1e-5` / `... 1e-6`
LLAMA_X = {"num_train_epochs": 3, "model_max_length": 512, "per_device_train_batch_size": 64, "gradient_accumulation_steps": 1,
           "learning_rate": 2e-5, "warmup_steps": 2, "lr_scheduler_type": "cosine"}  # Llama-X README's training command


def printed_config(stage: str, path: Path) -> dict:
    env = {**os.environ, "TUNA_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "train", stage, "--config", str(path), "--print_config"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def check_ranking_stage(cfg: dict, lr: float) -> None:
    sh = TRAIN_TUNA_SH
    assert cfg["optim"]["lr"] == lr
    assert cfg["trainer"]["max_epochs"] == sh["NUM_TRAIN_EPOCHS"]
    assert cfg["data"]["batch_size"] == sh["PER_DEVICE_TRAIN_BATCH_SIZE"]
    assert cfg["trainer"]["accumulate_grad_batches"] == sh["GRADIENT_ACCUMULATION_STEPS"]
    assert cfg["loss"]["mle_weight"] == sh["MLE_WEIGHT"] and cfg["loss"]["margin"] == sh["MARGIN"]
    assert cfg["loss"]["pair_reduction"] == "per_distance_mean" and cfg["loss"]["mle_target"] == "all"
    assert cfg["loss"]["margin_scaling"] == "rank_distance" and cfg["loss"]["beta"] == 1.0
    assert list(cfg["optim"]["betas"]) == [sh["BETA1"], sh["BETA2"]]
    assert cfg["optim"]["eps"] == sh["eps"] and cfg["optim"]["weight_decay"] == sh["weight_decay"]
    assert cfg["optim"]["warmup_steps"] == sh["WARMUP_STEPS"] and cfg["optim"]["schedule"] == sh["lr_scheduler_type"]
    assert cfg["model"]["gradient_checkpointing"] is sh["gradient_checkpointing"]
    assert cfg["data"]["max_length"] == sh["model_max_length"]
    assert cfg["trainer"]["gradient_clip_val"] is None
    assert cfg["data"]["length_grouped"] is False and cfg["data"]["shuffle"] is True
    assert cfg["data"]["regularizer"] == "copies" and cfg["data"]["response_tokens"] == "in_context"


@pytest.mark.parametrize("stage", ["prob_rank", "context_rank"])
def test_paper_stage_configs_are_the_released_scripts_values(stage):
    cfg = printed_config(stage.replace("_", "-"), REPO / "experiments" / "paper" / f"{stage}.yaml")
    check_ranking_stage(cfg, README_LR[stage])
    assert cfg["seed"] == 42  # TrainingArguments' default seed


def test_paper_sft_config_is_llama_x_and_the_pipeline_agrees():
    cfg = printed_config("sft", REPO / "experiments" / "paper" / "sft.yaml")
    lx = LLAMA_X
    assert (cfg["trainer"]["max_epochs"], cfg["data"]["max_length"], cfg["data"]["batch_size"],
            cfg["trainer"]["accumulate_grad_batches"], cfg["optim"]["lr"], cfg["optim"]["warmup_steps"],
            cfg["optim"]["schedule"]) == (lx["num_train_epochs"], lx["model_max_length"], lx["per_device_train_batch_size"],
                                          lx["gradient_accumulation_steps"], lx["learning_rate"], lx["warmup_steps"],
                                          lx["lr_scheduler_type"])
    assert cfg["trainer"]["gradient_clip_val"] is None

    from dataclasses import asdict

    from tuna_recipes.pipeline.config import build_config

    pipe = asdict(build_config(yaml.safe_load((REPO / "experiments/pipeline/paper.yaml").read_text())))
    for stage in ("prob_rank", "context_rank"):
        check_ranking_stage({**pipe[stage], "seed": pipe["seed"]}, README_LR[stage])
    assert pipe["sft"]["data"]["batch_size"] == lx["per_device_train_batch_size"] and pipe["sft"]["optim"]["lr"] == lx["learning_rate"]
    assert pipe["student_sampling"]["top_k"] == 50 and pipe["student_sampling"]["max_new_tokens"] == 512
    assert pipe["student_sampling"]["n"] == 4 and pipe["student_sampling"]["temperature"] == 1.0
    assert pipe["judge"]["temperature"] == 1.0 and pipe["judge"]["max_tokens"] == 2048


def hf_cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """transformers' get_cosine_schedule_with_warmup factor (num_cycles 0.5), written out."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class RecordLR(Callback):
    def __init__(self):
        self.lrs, self.clip = [], "unset"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # the LR this step's update uses
        self.clip = trainer.gradient_clip_val


def test_lr_schedule_is_hugging_face_cosine_with_warmup_and_nothing_is_clipped(vicuna_ranked, tmp_path):
    assert TrainerConfig().gradient_clip_val is None
    cfg = TrainConfig(model=ModelConfig(name_or_path="tiny-random-llama"),
                      data=DataConfig(train_file=str(vicuna_ranked), batch_size=2, max_length=96, shuffle=False),
                      loss=LossConfig(), optim=OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine"),
                      trainer=TrainerConfig(accelerator="cpu", precision="32-true", max_epochs=1),
                      out_dir=str(tmp_path / "run"), export=False)
    rec = RecordLR()
    run_training("prob-rank", cfg, callbacks=[rec])
    total = 8  # 16 records, 2 per batch, one epoch
    assert rec.lrs == pytest.approx([1e-3 * hf_cosine_with_warmup(s, 2, total) for s in range(total)], abs=1e-12)
    assert rec.lrs[0] == 0.0  # the first step's LR is 0, as in the released runs
    assert rec.clip is None


def test_sampler_top_k_reaches_generate(smol_tokenizer, tiny_model):
    from tuna.feedback.generators import HFGenerator
    from tuna.generation import GenerationConfig

    gen = HFGenerator(tiny_model, tokenizer=smol_tokenizer, device="cpu", dtype="float32")
    seen = []
    original = gen.model.generate

    def spy(*a, **kw):
        from transformers import TopKLogitsWarper

        procs = kw.get("logits_processor") or []
        topk = [p.top_k for p in procs if isinstance(p, TopKLogitsWarper)]
        seen.append(topk[0] if topk else (0 if procs else None))
        return original(*a, **kw)

    gen.model.generate = spy
    gen.generate(["Hello"], GenerationConfig(n=2, max_new_tokens=3))
    gen.generate(["Hello"], GenerationConfig(n=2, max_new_tokens=3, top_k=0))
    gen.generate(["Hello"], GenerationConfig(n=1, max_new_tokens=3, temperature=0.0))
    # default: generate's own default top_k (50), as the released sampler left it; 0: no top-k warper; greedy: no sampling
    assert seen == [50, 0, None]
