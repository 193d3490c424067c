"""The pipeline's settings: one section per step, each typed by the concern it configures.

The sections reuse the library's configs (``tuna.feedback.config``, ``tuna.config``); a section whose defaults differ
(the embedded teacher, the embedded stages) subclasses or instantiates them here and says why. The defaults are the
embedded demo's (a 2-core CPU, minutes); ``experiments/pipeline/paper.yaml`` holds the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evaluation.config import RuntimeConfig, greedy
from evaluation.verifiable import SplitSizes
from tuna.config import DataConfig, ModelConfig, OptimConfig, StageConfig
from tuna.errors import TunaError
from tuna.feedback.config import GeneratorConfig, JudgeConfig, SamplingConfig
from tuna.generation import GenerationConfig
from tuna.stages import STAGES
from tuna_recipes.pipeline.cluster import ClusterConfig


@dataclass
class InstructionSlice:
    """Which instructions a step uses (Alpaca JSON/JSONL or tuna records)."""

    path: str = "{data}/alpaca/alpaca_data_reconstructed.jsonl.gz"
    """``{data}`` is the shared data folder ($TUNA_SHARED_DATA, default ../shared/data; tuna.paths)."""
    offset: int = 0
    limit: int | None = 16


@dataclass
class TeacherConfig(GeneratorConfig, SamplingConfig):
    """Probabilistic ranking: who samples the candidates, how, and how they are scored.

    The embedded teacher is Gemma-3-270M (a base model) sampling without top-k, as text-davinci-003 through the OpenAI API did (no top-k
    there), with short answers for a CPU."""

    top_k: int = 0
    max_new_tokens: int = 96
    batch_size: int = 16
    method: str = "sampling"
    """sampling: the teacher's own sampling log-probs (as the paper); forced: re-score under `scorer`."""
    scorer: str | None = None
    """The model that re-scores responses when method is forced (default: the teacher)."""
    beta: float = 1.0
    """Length-penalty exponent of the teacher's score sum(logp)/len**beta."""


@dataclass
class StudentSamplingConfig(SamplingConfig):
    """Contextual ranking: how the student samples its own candidates (in process; the pipeline names the model).
    The embedded student gives short answers for a CPU and needs no log-probs (the judge ranks)."""

    max_new_tokens: int = 96
    logprobs: bool = False
    dtype: str = "auto"
    """Weights dtype: auto (bf16 only where the device computes it natively) | float32 | bfloat16 | float16."""
    batch_size: int = 16
    """Prompts per generate call."""


def embedded_judge() -> JudgeConfig:
    """SmolLM2-135M-Instruct behind a local llama.cpp server: it cannot follow the paper's prompt unaided, so its
    replies are constrained to a ranking by a grammar, and kept short; one request at a time (the server is serial)."""
    return JudgeConfig(max_tokens=384, concurrency=1, constrain="rank_grammar")


def embedded_stage(name: str, **sections: Any) -> StageConfig:
    """A stage's defaults (tuna.stages.STAGES) with the embedded settings: 256 tokens, 2 records per step, the
    instructions' gold responses mixed back in as the released training files do (data.regularizer), and each
    record's prompt computed once for its N candidates (model.logprob_mode prefix_shared: the fastest layout on a CPU,
    tested equal to the padded one)."""
    sections.setdefault("data", DataConfig(max_length=256, batch_size=2, regularizer="copies"))
    sections.setdefault("model", ModelConfig(logprob_mode="prefix_shared"))
    return STAGES[name].stage_config(**sections)


@dataclass
class VerifiableConfig(SplitSizes):
    """Verifiable feedback (evaluation.verifiable): train / validation / held-out instruction splits from LMentry and
    the Super-NI slice that cannot leak or flip labels (their sizes: SplitSizes); the student's samples on the train
    split are ranked by each item's own scorer (``ranker: verifier``), and the splits in ``eval_splits`` are what the
    benchmarks `verifiable` and `pairs` evaluate."""

    split_seed: int = 0
    by: str = "task"
    """task (the benchmark's own per-item scorer) | rouge_l."""
    eval_splits: list[str] = field(default_factory=lambda: ["heldout"])
    """heldout | val, each evaluated by `verifiable` and `pairs` (choose settings on val, report on heldout)."""
    pairs_seed: int = 0
    """Seeds the starting student's samples of the evaluated splits, which the verifier ranks for pair accuracy: one
    draw, the same for every run and training seed, so that pair accuracies are paired across runs."""
    pairs_files: dict[str, str] = field(default_factory=dict)
    """split -> a ranked file (.jsonl or .jsonl.gz) to measure pair accuracy on instead of drawing the starting
    student's samples: parts of a sweep run in other folders or on other machines then share one committed draw
    (`tuna evidence-export` writes it to results/<name>/pairs/). Its sets must all belong to that split."""
    flip: float = 0.0
    """Degrade the training ranker on purpose: any two candidates the verifier orders swap with this probability (0 to
    0.5; 0.5 is a random ranking; evaluation.verifiable.degrade_scores). Never applied to the evaluation pairs."""
    max_new_tokens: int = 48
    """Answer length of the held-out evaluation."""


@dataclass
class EvalConfig:
    """Which benchmarks each model gets, on how much data, and where.

    The defaults are the demo's (slices, 0-shot Super-NI, short answers; its tables say so);
    experiments/pipeline/paper.yaml sets the benchmarks' protocols."""

    benchmarks: list[str] = field(default_factory=lambda: ["lmentry", "superni", "vicuna"])
    lmentry_limit: int | None = 3
    """Examples per LMentry task, spread over its 3 templates, so at least 3 (None: all)."""
    superni_data: str | None = None
    """None: the shared data's 8-task slice; full: the 119 test tasks (downloaded once into $TUNA_CACHE); or the
    path of a natural-instructions checkout."""
    superni_limit: int | None = 2
    """Instances per Super-NI task (None: the official 100)."""
    superni_num_pos_examples: int = 0
    """Positive examples in the Super-NI prompt: the demo's 0 keeps CPU prompts short; Tk-Instruct's protocol (and
    `tuna eval superni`'s default) is 2."""
    vicuna_limit: int | None = 4
    """Vicuna QA questions (None: all 80)."""
    vicuna_opponent: str = "gpt35"
    vicuna_orders: str | None = None
    """single | both; None: `tuna eval vicuna`'s default (single, the FastChat 2023 protocol)."""
    vicuna_judge: JudgeConfig | None = None
    """The Vicuna QA reviewer (None: the ranking judge, `judge`); the paper config pins a GPT-4 snapshot here."""
    template: str = "alpaca"
    """How each model sees the benchmark inputs: alpaca | chat | raw."""
    generation: GenerationConfig = field(default_factory=lambda: greedy(48))
    # 48 new tokens for Super-NI (official: 128) and LMentry (at most 50, upstream's length); Vicuna answers get
    # `vicuna_max_new_tokens`, the verifiable split `verifiable.max_new_tokens`
    """Decoding of the answers (greedy, 48 new tokens)."""
    vicuna_max_new_tokens: int | None = None
    """Vicuna answer length (None: twice generation.max_new_tokens; FastChat: 1024)."""
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(batch_size=16))
    # backend auto: vLLM on a GPU where installed, else batched HF; device auto: the device the run trains on; dtype
    # auto: bf16 where the device computes it natively, else fp32 (fp16 on GPUs without bf16)
    """Where the models run (backend, device, dtype, batch size)."""


@dataclass
class PipelineConfig:
    """Run the whole recipe: SFT, probabilistic and contextual ranking, the Tuna variants and their evaluation.

    One config from the student to the tables: optional SFT, the teacher's samples and ranking (Tuna_p), the
    student's samples ranked by the judge (Tuna_c, Tuna), each variant's evaluation and the report; every step is
    cached in run_dir and a re-run resumes."""

    name: str = "demo"
    run_dir: str = "runs/demo"
    results_dir: str = "results/demo"
    student: str = "smollm2-135m-instruct"
    """The instruction-tuned starting model (the paper's "Alpaca")."""
    sft: StageConfig | None = None
    """Optional SFT of the student first (None: the student is already instruction tuned)."""
    sft_instructions: InstructionSlice = field(default_factory=lambda: InstructionSlice(offset=0, limit=256))
    prob_instructions: InstructionSlice = field(default_factory=lambda: InstructionSlice(offset=0, limit=16))
    context_instructions: InstructionSlice = field(default_factory=lambda: InstructionSlice(offset=1000, limit=16))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    prob_rank: StageConfig = field(default_factory=lambda: embedded_stage("prob-rank"))
    student_sampling: StudentSamplingConfig = field(default_factory=StudentSamplingConfig)
    judge: JudgeConfig = field(default_factory=embedded_judge)
    # The embedded demo trains 16 records (plus their gold copies) for one epoch: at the paper's 1e-6 (a 7B model,
    # thousands of steps) a 135M student does not move in 16 steps, so the demo uses 1e-5, as its prob-rank stage.
    context_rank: StageConfig = field(default_factory=lambda: embedded_stage("context-rank", optim=OptimConfig(lr=1e-5)))
    """Contextual ranking, stage 2 (the demo trains at LR 1e-5: 1e-6 does not move a 135M student in 16 steps)."""
    variants: list[str] = field(default_factory=lambda: ["tuna_p", "tuna_c", "tuna"])
    """Models to build: tuna_p (prob. ranking), tuna_c (contextual from the student), tuna (contextual from
    Tuna_p), tuna_cp (probabilistic ranking after Tuna_c: the c→p order), best_of_n (SFT on the top candidate of
    the tuna_c data)."""
    evaluate: list[str] = field(default_factory=lambda: ["student", "tuna_p", "tuna_c", "tuna"])
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    prob_ranked: str | None = None
    """Ranked sets to train Tuna_p (and tuna_cp) on instead of making them: the teacher steps are skipped (tuna reproduce
    passes the imported released file)."""
    context_ranked: str | None = None
    """Ranked sets to train Tuna on instead of making them from Tuna_p's samples (the imported gpt-4-ranking.json)."""
    paper_numbers: str | None = None
    """The paper's numbers (experiments/paper_numbers.example.yaml, keyed by row) for the tables' "(paper)" columns."""
    ranker: str = "judge"
    """Who ranks the contextual candidates: judge (an LLM, `judge`) | verifier (each item's own scorer; needs
    `verifiable`)."""
    verifiable: VerifiableConfig | None = None
    """Verifiable feedback: the splits, the verifier and the held-out evaluation (benchmarks verifiable and pairs)."""
    best_of_n: StageConfig = field(default_factory=lambda: embedded_stage(
        "sft", data=DataConfig(max_length=256, batch_size=2, sft_target="best")))
    """Variant best_of_n: SFT of the student on the top candidate of its own ranked samples (the tuna_c data)."""
    seed: int = 42
    threads: int | None = None
    launcher: str = "local"
    """local: every step in this process | slurm: each step a job through submitit, on the resources of `cluster`
    (docs/slurm.md)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """The jobs' resources per kind of step, partition, account, sbatch flags (launcher slurm)."""
    dry_run: bool = False
    """launcher slurm: print every job it would submit (resources, dependencies) and submit nothing."""


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set ``cfg[a][b][c] = value`` for ``key = "a.b.c"``; a dict value is merged into the section it names (keys it
    leaves out keep their values; a key the section lacks is added, and named by build_config if the section is typed),
    anything else replaces it."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise TunaError(f"config key {key!r} does not exist (no section {part!r})", field=key)
        node = node[part]
    if parts[-1] not in node:
        raise TunaError(f"config key {key!r} does not exist", field=key)
    if isinstance(value, dict) and isinstance(node[parts[-1]], dict):
        for k, v in value.items():
            if k in node[parts[-1]]:
                set_dotted(node, f"{parts[-1]}.{k}", v)
            else:  # a new key of a free-form mapping (cluster.sbatch); build_config names a section's unknown key
                node[parts[-1]][k] = v
    else:
        node[parts[-1]] = value


def build_config(d: dict[str, Any]) -> PipelineConfig:
    """A nested dict (YAML) → a validated PipelineConfig; unknown keys are named."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PipelineConfig, "cfg")
    try:
        return parser.instantiate(parser.parse_object({"cfg": d})).cfg
    except Exception as e:  # jsonargparse reports the offending key
        raise TunaError(f"invalid pipeline config: {str(e).splitlines()[0]}") from None
