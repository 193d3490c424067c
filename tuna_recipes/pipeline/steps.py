"""The pipeline as a graph of steps: ``tuna pipeline`` runs them in order; ``launcher: slurm`` submits each as a job
that waits on the steps it reads (tuna_recipes.pipeline.launch).

A step's ``key`` says what it computes before it has run (its settings and the keys of what it reads), so the steps of
a sweep's runs that compute the same thing (the teacher's samples, the reference log-probs, the student's samples) have
one key and become one job. Its own skipping stays with the manifest (``Manifest.run``): a job that reruns a step whose
inputs it finds finished skips it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuna.config import StageConfig, TrainerConfig
from tuna.errors import TunaError
from tuna.hashing import config_hash
from tuna.losses import required_candidate_fields
from tuna.paths import expand_data
from tuna_recipes.pipeline.cluster import Shape
from tuna_recipes.pipeline.config import PipelineConfig
from tuna_recipes.pipeline.run import VARIANTS, PipelineRun, step_settings

Context = dict[str, Any]
"""What the steps hand on: model paths by label (student, tuna_p, ...) and ranked files (data:prob, data:<tag>)."""


@dataclass
class Step:
    name: str
    kind: str
    """The resources it asks for: a field of ClusterConfig (data | sample | judge | reference | train | eval | report)."""
    needs: tuple[str, ...]
    key: str
    """What it computes, known before it runs: steps of several runs with one key are one job."""
    do: Callable[[PipelineRun, Context], None]
    shape: Shape
    job_only: bool = False
    """A job of its own on a cluster (one model's evaluation); in a local run the report step does its work."""


def train_shape(t: TrainerConfig) -> Shape:
    """Lightning's own numbers: one srun task per device, on ``num_nodes`` nodes (SLURMEnvironment reads them)."""
    devices = t.devices if isinstance(t.devices, int) and t.devices > 0 else 1
    return Shape(gpus_per_node=0 if t.accelerator == "cpu" else devices, nodes=t.num_nodes, tasks_per_node=devices)


def teacher_shape(cfg: PipelineConfig) -> Shape:
    t = cfg.teacher
    if t.backend in ("openai", "llamacpp") and t.method == "sampling":
        return Shape(gpus_per_node=0)  # an endpoint samples and returns the log-probs: no GPU here
    if t.backend == "vllm":
        return Shape(gpus_per_node=t.tensor_parallel_size)
    return Shape()


class Graph:
    """Builds the steps of one run in the order ``tuna pipeline`` runs them."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.steps: list[Step] = []
        self.run_key = str(Path(cfg.run_dir).resolve())
        self.model_key: dict[str, str] = {"student": f"model:{cfg.student}"}
        self.model_needs: dict[str, tuple[str, ...]] = {"student": ()}
        self.data_key: dict[str, str] = {}
        self.data_needs: dict[str, tuple[str, ...]] = {}

    def own(self, name: str) -> str:
        """The key of a step only its run computes."""
        return config_hash(["run", self.run_key, name])

    def add(self, name: str, kind: str, needs: tuple[str, ...], key: str, do: Callable[[PipelineRun, Context], None],
            shape: Shape | None = None, job_only: bool = False) -> None:
        self.steps.append(Step(name, kind, tuple(dict.fromkeys(needs)), key, do, shape or Shape(), job_only))

    def splits(self) -> tuple[str, ...]:
        """The verifiable splits (shared); the steps that read them need this one."""
        v = self.cfg.verifiable
        if v is None:
            raise TunaError("ranker verifier and the benchmarks verifiable/pairs need a `verifiable` section", field="verifiable")
        if not any(s.name == "verifiable_splits" for s in self.steps):
            sizes = {k: val for k, val in asdict(v).items() if k not in ("split_seed", "by", "eval_splits", "pairs_seed", "flip", "max_new_tokens")}
            self.add("verifiable_splits", "data", (), config_hash(["splits", sizes, v.split_seed]),
                     lambda run, ctx: run.verifiable_splits() and None)
        return ("verifiable_splits",)

    def train(self, name: str, stage: str, sc: StageConfig, start: str, data: str) -> None:
        """Train ``name`` from model ``start`` on ranked data ``data`` (the reference log-probs first where the loss
        reads them: a step shared by the runs that score one file under one model)."""
        needs = self.model_needs[start] + self.data_needs[data]
        if "ref_logprob" in required_candidate_fields(sc.loss):
            d = sc.data
            # the precision as configured (the job resolves "auto" on its own device; planning may run without one)
            precision = [sc.trainer.precision, sc.trainer.accelerator]
            key = config_hash(["reference", self.data_key[data], self.model_key[start], sc.model.logprob_mode, sc.model.dtype, precision,
                               {k: getattr(d, k) for k in ("template", "system_prompt", "max_length", "min_response_tokens", "overlong")}])
            self.add(f"reference_{name}", "reference", needs, key,
                     lambda run, ctx: run.reference_data(name, sc, ctx[start], Path(ctx[data])) and None)
            needs += (f"reference_{name}",)

        def fit(run: PipelineRun, ctx: Context) -> None:
            ctx[name] = run.train(name, stage, sc, ctx[start], Path(ctx[data]))

        self.add(name, "train", needs, self.own(name), fit, train_shape(sc.trainer))
        self.model_key[name], self.model_needs[name] = self.own(name), (name,)

    def teacher(self) -> None:
        cfg, t = self.cfg, self.cfg.teacher
        if cfg.prob_ranked:
            if not Path(cfg.prob_ranked).exists():
                raise TunaError("file does not exist", path=cfg.prob_ranked, field="prob_ranked")
            self.data_key["data:prob"], self.data_needs["data:prob"] = f"file:{Path(cfg.prob_ranked).resolve()}", ()
            return
        key = config_hash(["teacher", step_settings(t), asdict(cfg.prob_instructions), expand_data(cfg.prob_instructions.path), cfg.seed])

        def do(run: PipelineRun, ctx: Context) -> None:
            ctx["data:prob"] = str(run.teacher_data())

        self.add("teacher", "sample", (), key, do, teacher_shape(cfg))
        self.data_key["data:prob"], self.data_needs["data:prob"] = key, ("teacher",)

    def context(self, tag: str, generator: str) -> None:
        """``generator`` samples (a GPU job), the ranker ranks (a judge job: network and patience)."""
        cfg = self.cfg
        needs = self.model_needs[generator] + (self.splits() if cfg.ranker == "verifier" else ())
        src = asdict(cfg.context_instructions) if cfg.ranker != "verifier" else "verifiable-train"
        sample_key = config_hash(["sample", self.model_key[generator], asdict(cfg.student_sampling), src,
                                  expand_data(cfg.context_instructions.path), cfg.seed])
        self.add(f"sample_{tag}", "sample", needs, sample_key, lambda run, ctx: run.context_candidates(tag, ctx[generator]) and None)
        if cfg.ranker == "judge":
            ranker, name = step_settings(cfg.judge), f"judge_{tag}"
        else:
            ranker, name = {"verifier": {"by": cfg.verifiable.by, "flip": cfg.verifiable.flip}}, f"rank_{tag}"  # type: ignore[union-attr]
        key = config_hash(["rank", sample_key, cfg.ranker, ranker])

        def do(run: PipelineRun, ctx: Context) -> None:
            ctx[f"data:{tag}"] = str(run.context_data(tag, ctx[generator]))

        self.add(name, "judge" if cfg.ranker == "judge" else "data", (f"sample_{tag}",), key, do)
        self.data_key[f"data:{tag}"], self.data_needs[f"data:{tag}"] = key, (name,)

    def evaluation(self, labels: list[str]) -> None:
        """One job per evaluated model, then the report (the tables of every model, and the run's manifest)."""
        cfg = self.cfg
        benches = cfg.evaluation.benchmarks
        eval_needs: tuple[str, ...] = ()
        if any(b in ("verifiable", "pairs") for b in benches):
            v = cfg.verifiable
            needs = self.splits() + self.model_needs["student"]
            key = config_hash(["eval_data", self.model_key["student"], asdict(cfg.student_sampling), asdict(v), "pairs" in benches])

            def data(run: PipelineRun, ctx: Context) -> None:
                for split in v.eval_splits:  # type: ignore[union-attr]
                    if "pairs" in benches:
                        run.eval_pairs_data(split)

            self.add("eval_data", "sample", needs, key, data)
            eval_needs = ("eval_data",) + self.splits()
        for label in labels:
            self.add(f"eval_{label}", "eval", self.model_needs[label] + eval_needs, self.own(f"eval_{label}"),
                     lambda run, ctx, label=label: run.evaluate({label: ctx[label]}) and None, job_only=True)

        def report(run: PipelineRun, ctx: Context) -> None:
            models = {m: ctx[m] for m in self.model_key}
            tables = run.evaluate(models)
            run.man.data["models"] = models
            run.man.data["results"] = tables
            run.man.save()

        self.add("report", "report", tuple(f"eval_{label}" for label in labels) + eval_needs, self.own("report"), report)


def pipeline_steps(cfg: PipelineConfig) -> list[Step]:
    """The steps of one run, in the order ``run_pipeline`` runs them (each after the steps it needs)."""
    unknown = set(cfg.variants) - set(VARIANTS)
    if unknown:
        raise TunaError(f"unknown variants {sorted(unknown)} ({' | '.join(VARIANTS)})", field="variants")
    if cfg.ranker not in ("judge", "verifier"):
        raise TunaError(f"unknown ranker {cfg.ranker!r} (judge | verifier)", field="ranker")
    g = Graph(cfg)
    if cfg.sft is not None:
        def sft(run: PipelineRun, ctx: Context) -> None:
            ctx["student"] = run.train("sft", "sft", cfg.sft, cfg.student, run.sft_data())  # type: ignore[arg-type]

        g.add("sft", "train", (), g.own("sft"), sft, train_shape(cfg.sft.trainer))
        g.model_key["student"], g.model_needs["student"] = g.own("sft"), ("sft",)
    if any(v in cfg.variants for v in ("tuna_p", "tuna", "tuna_cp")):
        g.teacher()
        g.train("tuna_p", "prob-rank", cfg.prob_rank, "student", "data:prob")
    if "tuna" in cfg.variants:
        if cfg.context_ranked:
            if not Path(cfg.context_ranked).exists():
                raise TunaError("file does not exist", path=cfg.context_ranked, field="context_ranked")
            g.data_key["data:tuna"], g.data_needs["data:tuna"] = f"file:{Path(cfg.context_ranked).resolve()}", ()
        else:
            g.context("tuna", "tuna_p")
        g.train("tuna", "context-rank", cfg.context_rank, "tuna_p", "data:tuna")
    if any(v in cfg.variants for v in ("tuna_c", "tuna_cp", "best_of_n")):
        g.context("tuna_c", "student")
    if "tuna_c" in cfg.variants or "tuna_cp" in cfg.variants:
        g.train("tuna_c", "context-rank", cfg.context_rank, "student", "data:tuna_c")
    if "best_of_n" in cfg.variants:
        g.train("best_of_n", "sft", cfg.best_of_n, "student", "data:tuna_c")
    if "tuna_cp" in cfg.variants:
        g.train("tuna_cp", "prob-rank", cfg.prob_rank, "tuna_c", "data:prob")
    g.evaluation([label for label in cfg.evaluate if label in g.model_key])
    names = [s.name for s in g.steps]
    assert len(names) == len(set(names)), names
    return g.steps


def initial_context(cfg: PipelineConfig) -> Context:
    ctx: Context = {"student": cfg.student}
    if cfg.prob_ranked:
        ctx["data:prob"] = cfg.prob_ranked
    if cfg.context_ranked:
        ctx["data:tuna"] = cfg.context_ranked
    return ctx


def ancestors(steps: list[Step], name: str) -> set[str]:
    by = {s.name: s for s in steps}
    if name not in by:
        raise TunaError(f"no step {name!r} in this pipeline ({', '.join(by)})", field="step")
    out: set[str] = set()
    todo = list(by[name].needs)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(by[n].needs)
    return out


def execute(run: PipelineRun, step: str | None = None) -> dict[str, Any]:
    """Every step in order (``step`` None: the whole pipeline, each model evaluated by the report step), or one step
    after the steps it reads (finished: the manifest skips them, and they hand on their paths)."""
    steps = pipeline_steps(run.cfg)
    if step is None:
        chosen = {s.name for s in steps if not s.job_only}
    else:
        chosen = {n for n in ancestors(steps, step) if not next(s for s in steps if s.name == n).job_only} | {step}
    ctx = initial_context(run.cfg)
    ran = 0
    for s in steps:
        if s.name in chosen:
            s.do(run, ctx)
            ran += 1
    assert ran == len(chosen), (ran, chosen)
    return run.man.data


def run_pipeline(cfg: PipelineConfig, step: str | None = None, *, writer: bool = True) -> dict[str, Any]:
    """Run (or resume) every step in order (tuna_recipes.pipeline.steps); returns the manifest's data. ``step``: only
    that step, after the finished steps it reads (what a cluster job runs); ``writer`` False: a rank other than 0 of a
    multi-GPU job (it trains, the manifest is rank 0's)."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
        os.environ["TUNA_THREADS"] = str(cfg.threads)
    return execute(PipelineRun(cfg, writer=writer), step)
