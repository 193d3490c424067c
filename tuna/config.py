"""Typed configuration shared by the training stages (YAML → these dataclasses through jsonargparse).

The loss and data configs live next to their code (``tuna.losses.LossConfig``, ``tuna.data.DataConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed"]


@dataclass
class LoraConfig:
    """Low-rank adapters through peft (merged into the exported model)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    """The student model."""

    name_or_path: str = "smollm2-135m-instruct"
    """Hub id, local HF folder, .gguf file, an embedded name (smollm2-135m-instruct, gemma3-270m) or tiny-random-llama."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype at load time (keep float32 with *-mixed precision)."""
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None
    logprob_mode: Literal["full", "chunked", "packed", "prefix_shared"] = "chunked"
    """How response log-probs are computed: chunked (response positions only), full (released code), packed (no
    padding between candidates) or prefix_shared (packed, and each record's prompt computed once); see tuna.packing."""
    attn_implementation: str | None = None
    """e.g. sdpa, eager, flash_attention_2 (None: the transformers default)."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and a cosine decay (the released code's HF Trainer settings)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 2
    schedule: Literal["cosine", "constant", "linear"] = "cosine"


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets."""

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    deepspeed_stage: int = 3
    precision: Precision = "32-true"
    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 0
    """Save a resumable checkpoint every n optimizer steps (0: only at the end of training)."""
    val_check_interval: int | float | None = None
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops the run naming the batch's records, or skips that batch."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default)."""
