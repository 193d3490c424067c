"""``tuna pipeline``, ``tuna demo`` and ``tuna sweep``: the whole method from one config.

    instruction-tuned student ──(optional SFT)──▶ student
    teacher samples N per instruction, scores them        ─▶ prob.ranked.jsonl
    (DPO/IPO: the starting model scores them once)        ─▶ ranked.ref.jsonl
    ProbRank(student)                                     ─▶ Tuna_p
    Tuna_p samples N, the judge ranks them                ─▶ context.tuna.ranked.jsonl
    ContextRank(Tuna_p)                                   ─▶ Tuna
    student samples N, the judge ranks them               ─▶ context.tuna_c.ranked.jsonl
    ContextRank(student)                                  ─▶ Tuna_c
    evaluation of every model, then the tables            ─▶ results/<name>/

Every step writes into the run directory and is recorded in ``manifest.json`` (its config, the hashes of its
inputs, versions, wall time, costs). A re-run skips steps whose inputs did not change and resumes the others
(sampling, scoring, judging, training and evaluation are all resumable on their own). Steps whose output
depends only on data settings (teacher sampling and scoring) are keyed by a hash of those settings, so the
runs of a sweep over loss knobs share them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tuna.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainerConfig
from tuna.errors import TunaError

log = logging.getLogger(__name__)

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def shared_data_dir() -> str:
    return os.environ.get("TUNA_SHARED_DATA", DEFAULT_DATA)


# ----------------------------------------------------------------------------------------------- config


@dataclass
class InstructionSlice:
    """Which instructions a step uses (Alpaca JSON/JSONL or tuna records)."""

    path: str = "{data}/alpaca/alpaca_data_reconstructed.jsonl.gz"
    """``{data}`` is the shared data folder ($TUNA_SHARED_DATA, default ../shared/data)."""
    offset: int = 0
    limit: int | None = 16


@dataclass
class TeacherConfig:
    """Probabilistic ranking: who samples the candidates and how they are scored."""

    model: str = "gemma3-270m"
    backend: str = "hf"
    """hf | openai | vllm."""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None
    """A file whose first line is the API key (instead of ``api_key_env``); never logged or written."""
    mode: str = "completions"
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0: off, as the paper's teacher (text-davinci-003 through the OpenAI API, which has no top-k)."""
    max_new_tokens: int = 96
    dedup: bool = True
    method: str = "sampling"
    """sampling: the teacher's own sampling log-probs (as the paper); forced: re-score under `scorer`."""
    scorer: str | None = None
    """The model that re-scores responses when method is forced (default: the teacher)."""
    beta: float = 1.0
    dtype: str = "auto"
    batch_size: int = 16
    template: str = "alpaca"


@dataclass
class StudentSamplingConfig:
    """Contextual ranking: how the student samples its own candidates."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    """50: Hugging Face generate's default, which the released sampler (non_interactive_generate.py) used."""
    max_new_tokens: int = 96
    dedup: bool = True
    dtype: str = "auto"
    batch_size: int = 16
    template: str = "alpaca"


@dataclass
class JudgeConfig:
    """The LLM that ranks the student's candidates (GPT-4 in the paper) and judges Vicuna QA."""

    model: str = "smollm2-135m-instruct"
    backend: str = "llamacpp"
    """openai (any OpenAI-compatible URL) | llamacpp (a local llama.cpp server) | hf (in process)."""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None
    """A file whose first line is the API key (instead of ``api_key_env``); never logged or written."""
    temperature: float = 1.0
    max_tokens: int = 384
    shuffles: int = 0
    reference: str = "drop"
    missing: str = "last"
    concurrency: int = 1
    timeout: float = 120.0
    """Seconds per judge request."""
    max_retries: int = 6
    """Retries per judge request (429/5xx/timeouts/connection errors, exponential back-off)."""
    max_cost: float | None = None
    price_per_1k_prompt: float = 0.0
    price_per_1k_completion: float = 0.0
    constrain: bool = True
    """Constrain replies by a GBNF grammar (backend llamacpp; ignored otherwise): rankings to "rank: [a permutation]", Vicuna
    reviews to a "s1 s2" first line. A 135M judge cannot follow the paper's prompt unaided; set false for API judges."""
    template: str | None = None
    """A ranking prompt file with {instruction} and {responses} (default: the paper's prompt)."""
    fallback_scores: bool = False
    """Rank by "Response k: score" lines when a reply has no rank list."""

    @property
    def uses_grammar(self) -> bool:
        """Grammars go only to the local llama.cpp server (API judges reject the field)."""
        return self.constrain and self.backend == "llamacpp"


@dataclass
class StageConfig:
    """Training settings of one stage (the model and data file are filled in by the pipeline)."""

    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(accelerator="cpu", precision="auto"))
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=256, batch_size=2, regularizer="copies"))
    """Ranking stages mix their instructions' gold (original-Alpaca) responses back in, as the released training files
    do (data.regularizer; SFT ignores it)."""
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class EvalConfig:
    """Which benchmarks each model gets, on how much data, and where. The defaults are the demo's (slices, 0-shot
    Super-NI, short answers; its tables say so); experiments/pipeline/paper.yaml sets the benchmarks' protocols."""

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
    max_new_tokens: int = 48
    """Answer length for Super-NI and LMentry (at most 50 for LMentry); official: 128 and 50."""
    vicuna_max_new_tokens: int | None = None
    """Vicuna answer length (None: twice max_new_tokens; FastChat: 1024)."""
    template: str = "alpaca"
    batch_size: int = 16
    backend: str = "auto"
    """auto (vLLM on a GPU where installed, else batched HF) | hf | vllm."""
    device: str = "auto"
    """auto: the device the run trains on (a GPU run evaluates on the GPU) | cpu | cuda."""
    dtype: str = "auto"
    """auto: bf16 where the device computes it natively, else fp32 (fp16 on GPUs without bf16)."""


@dataclass
class PipelineConfig:
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
    prob_rank: StageConfig = field(default_factory=lambda: StageConfig(optim=OptimConfig(lr=1e-5)))
    student_sampling: StudentSamplingConfig = field(default_factory=StudentSamplingConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    context_rank: StageConfig = field(default_factory=lambda: StageConfig(optim=OptimConfig(lr=1e-6)))
    variants: list[str] = field(default_factory=lambda: ["tuna_p", "tuna_c", "tuna"])
    """Models to build: tuna_p (prob. ranking), tuna_c (contextual from the student), tuna (contextual from
    Tuna_p), tuna_cp (probabilistic ranking after Tuna_c: the c→p order)."""
    evaluate: list[str] = field(default_factory=lambda: ["student", "tuna_p", "tuna_c", "tuna"])
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    prob_ranked: str | None = None
    """Ranked sets to train Tuna_p (and tuna_cp) on instead of making them: the teacher steps are skipped (tuna reproduce
    passes the imported released file)."""
    context_ranked: str | None = None
    """Ranked sets to train Tuna on instead of making them from Tuna_p's samples (the imported gpt-4-ranking.json)."""
    paper_numbers: str | None = None
    """The paper's numbers (experiments/paper_numbers.example.yaml, keyed by row) for the tables' "(paper)" columns."""
    seed: int = 42
    threads: int | None = None


# ----------------------------------------------------------------------------------------------- manifest


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                h.update(f.name.encode())
                h.update(file_hash(f).encode())
        return h.hexdigest()[:16]
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tuna", "torch", "transformers", "lightning", "datasets", "openai", "llama_cpp_python"):
        try:
            out[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            pass
    return out


class Manifest:
    """``manifest.json`` of a run: what each step consumed, produced, cost and took."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        from tuna.records import atomic_write_json

        self._write = atomic_write_json
        self.path = run_dir / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"steps": {}}
        self.data["config"] = config
        self.data["versions"] = versions()
        self.save()

    def save(self) -> None:
        self._write(self.path, self.data)

    def run(self, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any],
            shared_marker: Path | None = None) -> float:
        """Run ``fn`` unless a finished run with the same inputs already produced ``outputs``.

        ``shared_marker``: for outputs shared between runs (a sweep's teacher data): a file beside them holding the
        inputs' hash once they are complete, so another run's manifest can skip the step too."""
        key = config_hash(inputs)
        prev = self.data["steps"].get(name)
        done_here = prev and prev.get("status") == "done" and prev.get("inputs_hash") == key
        done_shared = shared_marker is not None and shared_marker.exists() and shared_marker.read_text().strip() == key
        if (done_here or done_shared) and all(p.exists() for p in outputs):
            log.info("step %s: done already (inputs unchanged), skipping", name)
            if not done_here:
                self.data["steps"][name] = {"status": "done", "inputs_hash": key, "inputs": inputs, "shared": True,
                                            "outputs": [str(p) for p in outputs], "wall_s": 0.0}
                self.save()
            return 0.0
        self.data["steps"][name] = {"status": "running", "inputs_hash": key, "inputs": inputs,
                                    "outputs": [str(p) for p in outputs], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        extra = fn() or {}
        wall = time.time() - t0
        self.data["steps"][name].update({"status": "done", "wall_s": round(wall, 1),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})
        self.save()
        if shared_marker is not None:
            from tuna.records import atomic_write_text

            atomic_write_text(shared_marker, key)
        return wall

    def timings(self) -> dict[str, float]:
        return {k: v.get("wall_s", 0.0) for k, v in self.data["steps"].items()}


# ----------------------------------------------------------------------------------------------- steps


def _slice_path(s: InstructionSlice) -> str:
    return s.path.replace("{data}", shared_data_dir())


def _train_stage(stage: str, sc: StageConfig, model: str, train_file: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    from tuna.train import TrainConfig, run_training

    cfg = TrainConfig(model=replace(sc.model, name_or_path=model), data=replace(sc.data, train_file=str(train_file)),
                      loss=sc.loss, optim=sc.optim, trainer=sc.trainer, out_dir=str(out_dir), seed=seed)
    run_training(stage, cfg)
    summary = json.loads((out_dir / "train_summary.json").read_text())
    return {"train": {"global_step": summary["global_step"], "metrics": summary["metrics"]}}


def _judge_summary(out: Path) -> dict[str, Any]:
    s = out.with_name(out.name.removesuffix(".jsonl") + ".summary.json")
    return {"judge": json.loads(s.read_text())} if s.exists() else {}


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or resume) every step; returns the manifest's data."""
    from tuna.feedback import commands as fb

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
        os.environ["TUNA_THREADS"] = str(cfg.threads)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    shared = run / "shared"
    man = Manifest(run, asdict(cfg))
    unknown = set(cfg.variants) - {"tuna_p", "tuna_c", "tuna", "tuna_cp"}
    if unknown:
        raise TunaError(f"unknown variants {sorted(unknown)} (tuna_p | tuna_c | tuna | tuna_cp)", field="variants")
    models: dict[str, str] = {"student": cfg.student}

    # -- optional SFT -------------------------------------------------------------------------------------
    if cfg.sft is not None:
        src = _slice_path(cfg.sft_instructions)
        sft_data = run / "sft.records.jsonl"

        def do_import() -> None:
            from tuna.importers import import_alpaca
            from tuna.records import write_records

            write_records(sft_data, import_alpaca(src, limit=cfg.sft_instructions.limit, offset=cfg.sft_instructions.offset))

        man.run("sft_data", {"src": src, "slice": asdict(cfg.sft_instructions)}, [sft_data], do_import)
        man.run("sft", {"cfg": asdict(cfg.sft), "data": file_hash(sft_data), "student": cfg.student},
                [run / "sft/hf"], lambda: _train_stage("sft", cfg.sft, cfg.student, sft_data, run / "sft", cfg.seed))
        models["student"] = str(run / "sft/hf")
    student = models["student"]

    # -- probabilistic ranking data (shared across runs with the same teacher settings) --------------------
    needs_p = any(v in cfg.variants for v in ("tuna_p", "tuna", "tuna_cp"))
    if needs_p and cfg.prob_ranked:
        ranked = Path(cfg.prob_ranked)
        if not ranked.exists():
            raise TunaError("file does not exist", path=ranked, field="prob_ranked")
    elif needs_p:
        src = _slice_path(cfg.prob_instructions)
        tkey = config_hash([asdict(cfg.teacher), asdict(cfg.prob_instructions), src, cfg.seed])
        cands = shared / f"prob-{tkey}" / "candidates.jsonl"
        ranked = shared / f"prob-{tkey}" / f"ranked-beta{cfg.teacher.beta}.jsonl"
        t = cfg.teacher
        man.run("teacher_sample", {"teacher": asdict(t), "slice": asdict(cfg.prob_instructions)}, [cands], lambda: fb.sample(
            input=src, out=str(cands), model=t.model, backend=t.backend, base_url=t.base_url, api_key_env=t.api_key_env,
            api_key_file=t.api_key_file, mode=t.mode, limit=cfg.prob_instructions.limit, offset=cfg.prob_instructions.offset,
            template=t.template, n=t.n, temperature=t.temperature, top_p=t.top_p, top_k=t.top_k, max_new_tokens=t.max_new_tokens,
            seed=cfg.seed,
            logprobs=True, dedup=t.dedup, batch_size=t.batch_size, dtype=t.dtype) and None,
            shared_marker=cands.with_suffix(".done"))
        man.run("teacher_score", {"candidates": file_hash(cands), "method": t.method, "beta": t.beta, "scorer": t.scorer},
                [ranked], lambda: fb.score(input=str(cands), out=str(ranked), method=t.method, beta=t.beta,
                                           model=(t.scorer or t.model), template=t.template) and None,
                shared_marker=ranked.with_suffix(".done"))

    def context_step(tag: str, generator: str) -> Path:
        """The student `generator` samples, the judge ranks: returns the ranked file."""
        src = _slice_path(cfg.context_instructions)
        s, j = cfg.student_sampling, cfg.judge
        cands = run / f"context.{tag}.candidates.jsonl"
        ranked = run / f"context.{tag}.ranked.jsonl"
        man.run(f"sample_{tag}", {"generator": generator, "gen_hash": _model_hash(generator), "sampling": asdict(s),
                                  "slice": asdict(cfg.context_instructions)}, [cands], lambda: fb.sample(
            input=src, out=str(cands), model=generator, backend="hf", limit=cfg.context_instructions.limit,
            offset=cfg.context_instructions.offset, template=s.template, n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            max_new_tokens=s.max_new_tokens, seed=cfg.seed, logprobs=False, dedup=s.dedup, batch_size=s.batch_size,
            dtype=s.dtype) and None)
        man.run(f"judge_{tag}", {"candidates": file_hash(cands), "judge": asdict(j)}, [ranked], lambda: (fb.judge(
            input=str(cands), out=str(ranked), model=j.model, backend=j.backend, base_url=j.base_url, api_key_env=j.api_key_env,
            api_key_file=j.api_key_file, temperature=j.temperature, max_tokens=j.max_tokens, shuffles=j.shuffles,
            reference=j.reference, missing=j.missing, concurrency=j.concurrency, timeout=j.timeout, max_retries=j.max_retries,
            max_cost=j.max_cost, price_per_1k_prompt=j.price_per_1k_prompt, price_per_1k_completion=j.price_per_1k_completion,
            seed=cfg.seed, template=j.template, fallback_scores=j.fallback_scores,
            constrain="rank_grammar" if j.uses_grammar else "none"), _judge_summary(ranked))[1])
        return ranked

    def train_step(name: str, stage: str, sc: StageConfig, start: str, data: Path) -> str:
        from tuna.losses import required_candidate_fields

        out = run / name
        if "ref_logprob" in required_candidate_fields(sc.loss):
            data = reference_step(name, sc, start, data)
        man.run(name, {"stage": stage, "cfg": asdict(sc), "start": start, "start_hash": _model_hash(start),
                       "data": file_hash(data)}, [out / "hf"], lambda: _train_stage(stage, sc, start, data, out, cfg.seed))
        return str(out / "hf")

    def reference_step(name: str, sc: StageConfig, start: str, ranked: Path) -> Path:
        """The starting model's log-probs of the ranked candidates (DPO, IPO), shared by the runs of a sweep."""
        from tuna.precision import resolve_precision

        d = sc.data
        bf16 = resolve_precision(sc.trainer.precision, sc.trainer.accelerator) == "bf16-mixed"  # as training will run
        inputs = {"ranked": file_hash(ranked), "model": start, "model_hash": _model_hash(start), "mode": sc.model.logprob_mode,
                  "dtype": sc.model.dtype, "autocast_bf16": bf16,
                  "data": {k: getattr(d, k) for k in ("template", "system_prompt", "max_length", "min_response_tokens", "overlong")}}
        out = shared / f"ref-{config_hash(inputs)}" / "ranked.ref.jsonl"
        man.run(f"reference_{name}", inputs, [out], lambda: fb.reference(
            input=str(ranked), out=str(out), model=start, template=d.template, system_prompt=d.system_prompt,
            max_length=d.max_length, min_response_tokens=d.min_response_tokens, overlong=d.overlong,
            logprob_mode=sc.model.logprob_mode, batch_size=d.batch_size, dtype=sc.model.dtype, autocast_bf16=bf16) and None,
            shared_marker=out.with_suffix(".done"))
        return out

    if needs_p:
        models["tuna_p"] = train_step("tuna_p", "prob-rank", cfg.prob_rank, student, ranked)
    if "tuna" in cfg.variants:
        if cfg.context_ranked and not Path(cfg.context_ranked).exists():
            raise TunaError("file does not exist", path=cfg.context_ranked, field="context_ranked")
        models["tuna"] = train_step("tuna", "context-rank", cfg.context_rank, models["tuna_p"],
                                    Path(cfg.context_ranked) if cfg.context_ranked else context_step("tuna", models["tuna_p"]))
    if "tuna_c" in cfg.variants or "tuna_cp" in cfg.variants:
        models["tuna_c"] = train_step("tuna_c", "context-rank", cfg.context_rank, student, context_step("tuna_c", student))
    if "tuna_cp" in cfg.variants:
        models["tuna_cp"] = train_step("tuna_cp", "prob-rank", cfg.prob_rank, models["tuna_c"], ranked)

    # -- evaluation and the tables ------------------------------------------------------------------------
    from tuna.evaluate_steps import evaluate_model, make_report, run_device

    device = run_device(cfg.evaluation, [s.trainer for s in (cfg.sft, cfg.prob_rank, cfg.context_rank) if s is not None])
    for label in cfg.evaluate:
        if label not in models:
            continue
        for bench in cfg.evaluation.benchmarks:
            out = run / "eval" / label / f"{bench}.json"
            man.run(f"eval_{label}_{bench}", {"model": models[label], "model_hash": _model_hash(models[label]),
                                              "bench": bench, "eval": asdict(cfg.evaluation), "judge": asdict(cfg.judge),
                                              "device": device},
                    [out], lambda label=label, bench=bench, out=out: evaluate_model(
                        bench, models[label], label, out, cfg.evaluation, cfg.judge, run_name=cfg.name, device=device))
    baseline = "student" if "student" in cfg.evaluate else None
    tables = make_report(run / "eval", cfg.results_dir, cfg.name, manifest=man.data, baseline=baseline,
                         paper=cfg.paper_numbers)
    man.data["models"] = models
    man.data["results"] = tables
    man.save()
    return man.data


def _model_hash(ref: str) -> str:
    from tuna.hashing import content_fingerprint

    p = Path(ref)
    if p.is_dir() and (p / "config.json").exists():
        return content_fingerprint(p)
    return ref


# ----------------------------------------------------------------------------------------------- sweep


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise TunaError(f"config key {key!r} does not exist (no section {part!r})", field=key)
        node = node[part]
    if parts[-1] not in node:
        raise TunaError(f"config key {key!r} does not exist", field=key)
    node[parts[-1]] = value


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def run_label(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"


def build_config(d: dict[str, Any]) -> PipelineConfig:
    """A nested dict (YAML) → a validated PipelineConfig; unknown keys are named."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PipelineConfig, "cfg")
    try:
        return parser.instantiate(parser.parse_object({"cfg": d})).cfg
    except Exception as e:  # jsonargparse reports the offending key
        raise TunaError(f"invalid pipeline config: {str(e).splitlines()[0]}") from None


@dataclass
class SweepConfig:
    """A grid over any pipeline config keys: one run per combination, then the ablation tables."""

    base: str | None = None
    """A pipeline YAML (default: the embedded demo settings)."""
    grid: dict[str, list[Any]] = field(default_factory=lambda: {"prob_rank.loss.margin": [0.0, 0.1],
                                                                  "prob_rank.loss.mle_weight": [0.0, 1.0]})
    """Dotted pipeline keys → values, e.g. {prob_rank.loss.margin: [0.0, 0.1]}."""
    set: dict[str, Any] = field(default_factory=dict)
    """Fixed overrides for every run (e.g. {variants: [tuna_p], evaluate: [tuna_p]})."""
    name: str = "sweep"
    run_dir: str = "runs/sweep"
    results_dir: str = "results/sweep"


def run_sweep(sw: SweepConfig) -> dict[str, Any]:
    import yaml

    base = asdict(PipelineConfig())
    if sw.base:
        loaded = yaml.safe_load(Path(sw.base).read_text()) or {}
        base = asdict(build_config(loaded))
    for k, v in sw.set.items():
        set_dotted(base, k, v)
    combos = expand_grid(sw.grid)
    root = Path(sw.run_dir)
    print(f"sweep {sw.name}: {len(combos)} runs over {', '.join(sw.grid)}")
    runs = []
    for i, overrides in enumerate(combos):
        d = json.loads(json.dumps(base))
        for k, v in overrides.items():
            set_dotted(d, k, v)
        label = run_label(overrides)
        d.update(name=label, run_dir=str(root / label), results_dir=str(Path(sw.results_dir) / "runs" / label))
        cfg = build_config(d)
        print(f"\n##### sweep run {i + 1}/{len(combos)}: {label}")
        # runs share the data steps whose settings they share (teacher samples and scores)
        shared = root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        run_path = Path(cfg.run_dir)
        run_path.mkdir(parents=True, exist_ok=True)
        link = run_path / "shared"
        if not link.exists():
            link.symlink_to(shared.resolve(), target_is_directory=True)
        data = run_pipeline(cfg)
        runs.append({"label": label, "overrides": overrides, "run_dir": cfg.run_dir, "timings": Manifest(run_path, asdict(cfg)).timings()})
        del data
    from tuna.evaluate_steps import make_sweep_report

    tables = make_sweep_report(runs, sw.results_dir, sw.name)
    from tuna.records import atomic_write_json

    atomic_write_json(root / "sweep.json", {"sweep": asdict(sw), "runs": runs, "tables": tables})
    return {"runs": runs, "tables": tables}


WEAK_JUDGE_NOTE = (
    "Note: the embedded default uses SmolLM2-135M-Instruct as the judge and Gemma-3-270M (a base model) as the "
    "teacher: they prove that every stage runs end to end on a CPU, not the paper's gains. Use an API judge and a "
    "7B student (experiments/paper/) to reproduce the paper."
)


def run_demo(cfg: PipelineConfig) -> dict[str, Any]:
    t0 = time.time()
    print(WEAK_JUDGE_NOTE)
    data = run_pipeline(cfg)
    table = Path(cfg.results_dir) / "main.md"
    print("\n" + "=" * 100)
    if table.exists():
        print(table.read_text())
    print("wall time per step (s):", json.dumps(Manifest(Path(cfg.run_dir), asdict(cfg)).timings()))
    print(f"demo finished in {time.time() - t0:.0f} s; tables and plots in {cfg.results_dir}/")
    print(WEAK_JUDGE_NOTE)
    return data


@dataclass
class DemoConfig(PipelineConfig):
    """`tuna demo`: the whole pipeline on the embedded default (offline, 2-core CPU, ~15 minutes)."""


COMMANDS = {"pipeline": PipelineConfig, "demo": DemoConfig, "sweep": SweepConfig}
RUNNERS = {PipelineConfig: run_pipeline, DemoConfig: run_demo, SweepConfig: run_sweep}
