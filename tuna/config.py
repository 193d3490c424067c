"""Typed configuration shared by the training stages (YAML → these dataclasses through jsonargparse).

Kept free of heavy imports so that ``tuna --help`` and ``--print_config`` are fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tuna.objectives import OBJECTIVES, MleTarget
from tuna.prompts import TemplateName

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Regularizer = Literal["none", "copies", "mle_only", "top_candidate"]
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed"]
PairReduction = Literal["per_distance_mean", "all_pairs_sum"]
MarginScaling = Literal["rank_distance", "constant"]
LogprobMode = Literal["auto", "full", "chunked", "packed", "prefix_shared"]
Objective = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]  # the registry's keys: jsonargparse's choices
Ties = Literal["ordered", "skip"]
PairSelection = Literal["all", "adjacent"]


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
    """AdamW with linear warm-up from 0 and a cosine decay to 0.

    Hugging Face Trainer's schedules, as the released code used them (docs/fidelity.md)."""

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
    """The training objective and its knobs (defaults reproduce the released Tuna code; docs/objectives.md)."""

    objective: Objective = "tuna"
    """tuna (margin hinge + MLE, the paper) or another entry of tuna.objectives.OBJECTIVES (docs/objectives.md)."""
    ties: Ties = "ordered"
    """Candidates with equal ranker scores: ordered (by their position in the file, as the released code's stable
    sort does) | skip (never compared with each other; see docs/objectives.md for each objective's rule)."""
    margin: float = 0.1
    """m: the hinge margin per unit of rank distance (tuna)."""
    margin_scaling: MarginScaling = "rank_distance"
    """rank_distance: pair (i, j) gets (j-i)·m; constant: every pair gets m (tuna)."""
    pair_reduction: PairReduction = "per_distance_mean"
    """How the tuna hinge averages its pairs (tuna)."""
    beta: float = 1.0
    """Length-normalisation exponent of the student's score sum/len**beta (tuna, rrhf, pro, listmle, simpo)."""
    mle_weight: float | None = None
    """λ: weight of the MLE (SFT) term. None: the objective's own (its entry in tuna.objectives.OBJECTIVES)."""
    mle_target: MleTarget | None = None
    """all | best | gold: the responses of the MLE term. None: the objective's own (its entry in OBJECTIVES)."""
    rank_weight: float = 1.0
    """Weight of the ranking/preference term (0 turns the stage into plain MLE, as SFT)."""
    pairs: PairSelection = "all"
    """Pairs a ranking implies for the pairwise objectives (whose entry reads them: dpo, ipo, simpo): all (every
    better/worse pair) | adjacent (neighbouring ranks only)."""
    dpo_beta: float = 0.1
    """β of DPO: the scale of the implicit reward β·log(π/π_ref) (dpo; lipo, whose scores are these rewards)."""
    ipo_tau: float = 0.1
    """τ of IPO: the target gap of the length-averaged log-ratio margin is 1/(2τ) (ipo)."""
    simpo_beta: float = 2.0
    """β of SimPO: the scale of the length-normalised reward (simpo)."""
    simpo_gamma: float = 0.5
    """γ of SimPO: the target reward margin (simpo)."""
    pro_temperature: float | Literal["dynamic"] = "dynamic"
    """PRO's temperature: dynamic (PRO's: each step's logits scaled by ranker-score gaps; needs candidate scores) or a
    fixed T > 0 (logits s/T) (pro)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"loss.objective must be one of {' | '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.ties not in ("ordered", "skip"):
            raise ValueError(f"loss.ties must be ordered | skip, got {self.ties!r}")
        if self.pair_reduction not in ("per_distance_mean", "all_pairs_sum"):
            raise ValueError(f"loss.pair_reduction must be per_distance_mean | all_pairs_sum, got {self.pair_reduction!r}")
        if self.mle_target not in (None, "all", "best", "gold"):
            raise ValueError(f"loss.mle_target must be all | best | gold (or null: the objective's own), got {self.mle_target!r}")
        if self.margin_scaling not in ("rank_distance", "constant"):
            raise ValueError(f"loss.margin_scaling must be rank_distance | constant, got {self.margin_scaling!r}")
        if self.pairs not in ("all", "adjacent"):
            raise ValueError(f"loss.pairs must be all | adjacent, got {self.pairs!r}")
        for name in ("dpo_beta", "ipo_tau", "simpo_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loss.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.simpo_gamma >= 0:
            raise ValueError(f"loss.simpo_gamma must be >= 0, got {self.simpo_gamma!r}")
        if self.mle_weight is not None and not self.mle_weight >= 0:
            raise ValueError(f"loss.mle_weight must be >= 0 (or null: the objective's own), got {self.mle_weight!r}")
        t = self.pro_temperature
        if t != "dynamic" and (isinstance(t, str) or isinstance(t, bool) or not t > 0):
            raise ValueError(f"loss.pro_temperature must be dynamic or a number > 0, got {t!r}")


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
    skip_all_tied: bool = False
    """Leave out the ranked sets whose candidates all share one score (a verifier that scored every sample alike): they
    hold no ranking, and every stage then trains on the same records (the top candidate of such a set is no better
    than the rest, so best-of-N SFT skips them too)."""
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


@dataclass
class StageConfig:
    """The training settings of one stage (the pipeline fills in the model to start from and the data file)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class TrainConfig(StageConfig):
    """One training run: a stage's settings plus where it writes and how it starts."""

    out_dir: str = "runs/train"
    """Checkpoints, TensorBoard logs and the exported model (``out_dir/hf``) go here."""
    seed: int = 42
    resume: str | None = "auto"
    """auto: continue from out_dir/checkpoints/last.ckpt when it exists; a path; or null to start fresh."""
    export: bool = True
    """Write a save_pretrained folder (out_dir/hf) at the end."""
