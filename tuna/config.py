"""Typed configuration shared by the training stages (YAML → these dataclasses through jsonargparse).

Kept free of heavy imports so that ``tuna --help`` and ``--print_config`` are fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tuna.prompts import TemplateName

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Regularizer = Literal["none", "copies", "mle_only", "top_candidate"]
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed"]
PairReduction = Literal["per_distance_mean", "all_pairs_sum"]
MleTarget = Literal["all", "best", "gold"]
MarginScaling = Literal["rank_distance", "constant"]
LogprobMode = Literal["auto", "full", "chunked", "packed", "prefix_shared"]


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
    logprob_mode: LogprobMode = "auto"
    """How response log-probs are computed (tuna.forward, docs/performance.md): auto (prefix_shared with
    FlexAttention on CUDA, chunked on CPU), chunked (response positions only), full (released code), packed (no
    padding between candidates) or prefix_shared (packed, and each record's prompt computed once)."""
    attn_implementation: str | None = None
    """e.g. sdpa, eager, flash_attention_2 (None: the transformers default)."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up from 0 and a cosine decay to 0: Hugging Face Trainer's schedules, as the released
    code used them (docs/fidelity.md)."""

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
    precision: Precision = "auto"
    """auto: bf16-mixed where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), 16-mixed
    on older GPUs, else 32-true (tuna.precision)."""
    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    """None: no clipping, as the released runs (DeepSpeed's gradient_clipping defaults to 0 and the released config
    sets none; Hugging Face Trainer leaves clipping to DeepSpeed). docs/fidelity.md, "clipping"."""
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 0
    """Save a resumable checkpoint every n optimizer steps (0: only at the end of training)."""
    val_check_interval: int | float | None = None
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops the run naming the batch's records, or skips that batch."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default)."""


@dataclass
class LossConfig:
    """Knobs of the Tuna loss (defaults reproduce the released code)."""

    margin: float = 0.1
    """m: the hinge margin per unit of rank distance."""
    margin_scaling: MarginScaling = "rank_distance"
    """rank_distance: pair (i, j) gets (j-i)·m; constant: every pair gets m."""
    pair_reduction: PairReduction = "per_distance_mean"
    beta: float = 1.0
    """Length-normalisation exponent of the student's score: sum / len**beta."""
    mle_weight: float = 1.0
    """λ in L = λ·L_MLE + L_rank."""
    mle_target: MleTarget = "all"
    rank_weight: float = 1.0
    """Weight of the ranking term (0 turns the stage into plain MLE, as SFT)."""

    def __post_init__(self) -> None:
        if self.pair_reduction not in ("per_distance_mean", "all_pairs_sum"):
            raise ValueError(f"loss.pair_reduction must be per_distance_mean | all_pairs_sum, got {self.pair_reduction!r}")
        if self.mle_target not in ("all", "best", "gold"):
            raise ValueError(f"loss.mle_target must be all | best | gold, got {self.mle_target!r}")
        if self.margin_scaling not in ("rank_distance", "constant"):
            raise ValueError(f"loss.margin_scaling must be rank_distance | constant, got {self.margin_scaling!r}")


@dataclass
class DataConfig:
    """Where the records are and how they become token batches."""

    train_file: str = ""
    """JSONL records (ranked sets for the ranking stages; gold or ranked records for SFT)."""
    val_file: str | None = None
    template: TemplateName = "alpaca"
    """alpaca (the paper's), chat (the tokenizer's chat template) or raw."""
    system_prompt: str | None = None
    max_length: int = 512
    min_response_tokens: int = 8
    overlong: Literal["truncate", "error"] = "truncate"
    num_candidates: int | None = None
    """Keep at most the top k ranked candidates per record (None: all)."""
    response_tokens: Literal["in_context", "separate"] = "in_context"
    """in_context: a response's tokens as they come out of tokenising prompt + response (the released code's tokens),
    or of the response alone where the two merge across the seam; separate: always the response alone."""
    regularizer: Regularizer = "none"
    """Original-Alpaca rows in a ranking stage, as the released ``*.w_orig_alpaca.json`` files mix them in
    (docs/fidelity.md, "data mix"): copies (an extra row per gold response, the gold repeated as every one of the K
    candidates: the released files' shape, inferred), mle_only (an extra row whose gold enters the MLE term only),
    top_candidate (no extra rows: each record's own gold becomes its best candidate), none."""
    regularizer_file: str | None = None
    """Gold instruction/response pairs (Alpaca JSON/JSONL, or tuna records with gold); None: the gold responses of the
    training records themselves."""
    regularizer_ratio: float | None = None
    """Regulariser rows per training record, taken from the start of the source (None: all of them)."""
    sft_target: Literal["gold", "best"] = "gold"
    """SFT trains on the gold response, or on the top-ranked candidate when there is no gold."""
    batch_size: int = 4
    """Records per micro-batch (each with all its candidates)."""
    shuffle: bool = True
    length_grouped: bool = True
    """Batch records of similar length together (less padding); the batch order is still shuffled."""
    limit: int | None = None
    """Use only the first n records (quick runs)."""
    num_workers: int = 0
    cache_dir: str | None = None
    """Where tokenised datasets are cached (default: $TUNA_CACHE/datasets)."""

    def __post_init__(self) -> None:
        if self.regularizer not in ("none", "copies", "mle_only", "top_candidate"):
            raise ValueError(f"data.regularizer must be none | copies | mle_only | top_candidate, got {self.regularizer!r}")
        if self.response_tokens not in ("in_context", "separate"):
            raise ValueError(f"data.response_tokens must be in_context | separate, got {self.response_tokens!r}")
        if self.regularizer_ratio is not None and self.regularizer_ratio < 0:
            raise ValueError(f"data.regularizer_ratio must be >= 0, got {self.regularizer_ratio}")
