"""``tuna pipeline``: the whole method from one config, every step recorded in the run's manifest.

    instruction-tuned student ──(optional SFT)──▶ student
    teacher samples N per instruction, scores them        ─▶ prob ranked sets      (shared by a sweep's runs)
    (DPO/IPO: the starting model scores them once)        ─▶ ranked.ref.jsonl      (shared)
    ProbRank(student)                                     ─▶ Tuna_p
    Tuna_p samples N, the judge ranks them                ─▶ context.tuna.ranked.jsonl
    ContextRank(Tuna_p)                                   ─▶ Tuna
    student samples N, the judge ranks them               ─▶ context.tuna_c.ranked.jsonl
    ContextRank(student)                                  ─▶ Tuna_c
    evaluation of every model, then the tables            ─▶ results/<name>/
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from tuna.config import StageConfig, TrainConfig
from tuna.errors import TunaError
from tuna.feedback.config import GeneratorConfig, ScoringConfig
from tuna.hashing import config_hash, file_hash, model_hash
from tuna.importers import import_alpaca, load_inputs
from tuna.paths import expand_data
from tuna.records import write_records
from tuna_recipes.pipeline.config import InstructionSlice, PipelineConfig
from tuna_recipes.pipeline.evaluate import evaluate_model, run_device
from tuna_recipes.pipeline.manifest import Manifest
from tuna_recipes.pipeline.report import make_report

VARIANTS = ("tuna_p", "tuna_c", "tuna", "tuna_cp", "best_of_n")

NOT_IN_STEP_KEYS = frozenset({"unreachable_timeout", "tensor_parallel_size", "mode", "batch_dir", "batch_max_requests",
                              "batch_max_bytes", "batch_poll_interval", "batch_poll_max_interval", "batch_max_submits",
                              "dry_run", "expected_completion_tokens", "reasks"})
"""Settings that change only when or how a step gives up, is sent, or how many GPUs it spreads over (the judge's
sync | batch mode and its knobs, its re-asks of unreadable replies, vLLM's tensor parallelism), never what a finished
step computed: left out of the step keys, so that setting them (or their arrival in an older run's config) keeps the
run's finished steps."""


def step_settings(section: Any) -> Any:
    """A config section as a step key holds it: ``asdict`` without :data:`NOT_IN_STEP_KEYS`, at any depth."""
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in NOT_IN_STEP_KEYS}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(asdict(section))


class PipelineRun:
    """One run folder: its config, its manifest, and the steps that fill it."""

    def __init__(self, cfg: PipelineConfig, *, writer: bool = True):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shared = (self.dir / "shared").resolve()  # a sweep links every run's shared/ to one folder: key by the real path
        self.man = Manifest(self.dir, asdict(cfg), writer=writer)

    def instructions(self, s: InstructionSlice, *, kind: str = "any"):
        return load_inputs(expand_data(s.path), limit=s.limit, offset=s.offset, kind=kind)

    # ------------------------------------------------------------------------------------------- data steps

    def sft_data(self) -> Path:
        s = self.cfg.sft_instructions
        src, out = expand_data(s.path), self.dir / "sft.records.jsonl"
        self.man.run("sft_data", {"src": src, "slice": asdict(s)}, [out],
                     lambda: write_records(out, import_alpaca(src, limit=s.limit, offset=s.offset)))
        return out

    def teacher_data(self) -> Path:
        """The teacher samples and scores (probabilistic ranking); keyed by the teacher's settings, so the runs of a
        sweep over training knobs share them."""
        from tuna.feedback.sampling import sample_candidates
        from tuna.feedback.scoring import score_candidates

        cfg, t = self.cfg, self.cfg.teacher
        key = config_hash([step_settings(t), asdict(cfg.prob_instructions), expand_data(cfg.prob_instructions.path), cfg.seed])
        cands = self.shared / f"prob-{key}" / "candidates.jsonl"
        ranked = self.shared / f"prob-{key}" / f"ranked-beta{t.beta}.jsonl"
        sampling = replace(t, seed=cfg.seed, logprobs=t.method == "sampling")
        self.man.run("teacher_sample", {"teacher": step_settings(t), "slice": asdict(cfg.prob_instructions)}, [cands],
                     lambda: sample_candidates(self.instructions(cfg.prob_instructions), str(cands), t, sampling) and None,
                     shared_marker=cands.with_suffix(".done"))
        scoring = ScoringConfig(method=t.method, beta=t.beta, model=t.scorer or t.model, template=t.template,
                                system_prompt=t.system_prompt)
        self.man.run("teacher_score", {"candidates": file_hash(cands), "method": t.method, "beta": t.beta, "scorer": t.scorer},
                     [ranked], lambda: score_candidates(load_inputs(str(cands), fmt="tuna"), str(ranked), scoring) and None,
                     shared_marker=ranked.with_suffix(".done"))
        return ranked

    def verifiable_splits(self) -> dict[str, Path]:
        """The train / val / held-out instruction files of ``verifiable`` (shared by the runs of a sweep)."""
        from evaluation.verifiable import SplitSizes, make_splits
        from tuna.paths import data_file

        v = self.cfg.verifiable
        if v is None:
            raise TunaError("ranker verifier and the benchmarks verifiable/pairs need a `verifiable` section", field="verifiable")
        sizes = {f.name: getattr(v, f.name) for f in fields(SplitSizes)}
        d = self.shared / f"verifiable-{config_hash([sizes, v.split_seed])}"
        paths = {name: d / f"{name}.jsonl" for name in ("train", "val", "heldout")}

        def make() -> None:
            splits = make_splits(superni_data=data_file("superni/superni_test_slice.jsonl.gz"),
                                 lmentry_data=data_file("lmentry/lmentry_tasks.json.gz"), sizes=SplitSizes(**sizes),
                                 seed=v.split_seed)
            for name, recs in splits.items():
                write_records(paths[name], recs)

        self.man.run("verifiable_splits", {"sizes": sizes, "seed": v.split_seed}, list(paths.values()), make,
                     shared_marker=d / "splits.done")
        return paths

    def rank(self, cands: Path, ranked: Path) -> None:
        """The contextual ranker on a candidate file: the LLM judge, or each item's verifier (degraded on purpose when
        ``verifiable.flip`` is set)."""
        from tuna.feedback.judge import judge_candidates

        if self.cfg.ranker == "verifier":
            from evaluation.verifiable_commands import rank

            v = self.cfg.verifiable
            rank(str(cands), str(ranked), by=v.by, flip=v.flip, seed=self.cfg.seed)  # type: ignore[union-attr]
        elif self.cfg.ranker == "judge":
            judge_candidates(load_inputs(str(cands), fmt="tuna", min_candidates=2), str(ranked),
                             replace(self.cfg.judge, seed=self.cfg.seed))
        else:
            raise TunaError(f"unknown ranker {self.cfg.ranker!r} (judge | verifier)", field="ranker")

    def context_candidates(self, tag: str, generator: str) -> Path:
        """The model ``generator`` samples its own candidates (contextual ranking). Keyed by the generator's content
        and the settings, so the runs of a sweep that start from one model share them."""
        from tuna.feedback.sampling import sample_candidates

        cfg, s = self.cfg, self.cfg.student_sampling
        src = cfg.context_instructions
        if cfg.ranker == "verifier":
            src = replace(src, path=str(self.verifiable_splits()["train"]))
        key = config_hash([model_hash(generator), asdict(s), asdict(src), expand_data(src.path), cfg.seed])
        cands = self.shared / f"context-{key}" / "candidates.jsonl"
        gen = GeneratorConfig(model=generator, backend="hf", dtype=s.dtype, batch_size=s.batch_size)
        self.man.run(f"sample_{tag}", {"generator": generator, "gen_hash": model_hash(generator), "sampling": asdict(s),
                                       "slice": asdict(src)}, [cands],
                     lambda: sample_candidates(self.instructions(src), str(cands), gen, replace(s, seed=cfg.seed)) and None,
                     shared_marker=cands.with_suffix(".done"))
        return cands

    def context_data(self, tag: str, generator: str) -> Path:
        """The ranker ranks ``generator``'s own candidates (:meth:`context_candidates`)."""
        cfg = self.cfg
        cands = self.context_candidates(tag, generator)
        ranker = step_settings(cfg.judge) if cfg.ranker == "judge" else {"verifier": {"by": cfg.verifiable.by, "flip": cfg.verifiable.flip}}  # type: ignore[union-attr]
        ranked = cands.parent / f"ranked-{config_hash([cfg.ranker, ranker])}.jsonl"

        def do_rank() -> dict[str, Any]:
            self.rank(cands, ranked)
            summary = ranked.with_name(ranked.name.removesuffix(".jsonl") + ".summary.json")
            return {"judge": json.loads(summary.read_text())} if summary.exists() else {}

        self.man.run(f"{'judge' if cfg.ranker == 'judge' else 'rank'}_{tag}", {"candidates": file_hash(cands), "ranker": cfg.ranker,
                                                                              "settings": ranker}, [ranked], do_rank,
                     shared_marker=ranked.with_suffix(".done"))
        return ranked

    def eval_pairs_data(self, split: str) -> Path:
        """The starting student's samples on a split's instructions (held-out or validation), ranked by the verifier:
        the sets pair accuracy is measured on (no model trains on them). One draw (``verifiable.pairs_seed``), shared by
        every run and training seed."""
        from evaluation.verifiable_commands import rank
        from tuna.feedback.sampling import sample_candidates

        cfg, s, v = self.cfg, self.cfg.student_sampling, self.cfg.verifiable
        if split in v.pairs_files:  # type: ignore[union-attr]
            return self.committed_pairs(split, expand_data(v.pairs_files[split]))  # type: ignore[union-attr]
        src = InstructionSlice(path=str(self.verifiable_splits()[split]), offset=0, limit=None)
        key = config_hash([model_hash(cfg.student), asdict(s), asdict(src), v.pairs_seed, v.by])  # type: ignore[union-attr]
        d = self.shared / f"pairs-{key}"
        cands, ranked = d / "candidates.jsonl", d / "ranked.jsonl"
        gen = GeneratorConfig(model=cfg.student, backend="hf", dtype=s.dtype, batch_size=s.batch_size)
        self.man.run(f"sample_{split}_pairs", {"generator": cfg.student, "sampling": asdict(s), "slice": asdict(src),
                                               "seed": v.pairs_seed}, [cands],  # type: ignore[union-attr]
                     lambda: sample_candidates(self.instructions(src), str(cands), gen, replace(s, seed=v.pairs_seed)) and None,  # type: ignore[union-attr]
                     shared_marker=cands.with_suffix(".done"))
        self.man.run(f"rank_{split}_pairs", {"candidates": file_hash(cands), "by": v.by}, [ranked],  # type: ignore[union-attr]
                     lambda: rank(str(cands), str(ranked), by=v.by) and None, shared_marker=ranked.with_suffix(".done"))  # type: ignore[union-attr]
        return ranked

    def committed_pairs(self, split: str, path: str) -> Path:
        """A committed draw of ``split``'s pair sets (``verifiable.pairs_files``), checked to hold only that split's items."""
        from tuna.records import read_records

        f = Path(path)
        if not f.exists():
            raise TunaError(f"the committed pair sets of split {split} are missing: {f}", field=f"verifiable.pairs_files.{split}")
        ids = {r.id for r in read_records(self.verifiable_splits()[split])}
        stray = [r.id for r in read_records(f, kind="ranked") if r.id not in ids]
        if stray:
            raise TunaError(f"{len(stray)} sets are not {split} items (e.g. {stray[0]}): a draw of other splits or seeds",
                            path=f, field=f"verifiable.pairs_files.{split}")
        return f

    def reference_data(self, name: str, sc: StageConfig, start: str, ranked: Path) -> Path:
        """The starting model's log-probs of the ranked candidates (DPO, IPO), shared by the runs of a sweep."""
        from tuna.feedback.reference import score_reference
        from tuna.precision import resolve_precision

        d = sc.data
        bf16 = resolve_precision(sc.trainer.precision, sc.trainer.accelerator) == "bf16-mixed"  # as training will run
        inputs = {"ranked": file_hash(ranked), "model": start, "model_hash": model_hash(start), "mode": sc.model.logprob_mode,
                  "dtype": sc.model.dtype, "autocast_bf16": bf16,
                  "data": {k: getattr(d, k) for k in ("template", "system_prompt", "max_length", "min_response_tokens", "overlong")}}
        out = self.shared / f"ref-{config_hash(inputs)}" / "ranked.ref.jsonl"
        self.man.run(f"reference_{name}", inputs, [out], lambda: score_reference(
            load_inputs(str(ranked), fmt="tuna", kind="ranked"), str(out), start, replace(d, num_candidates=None),
            logprob_mode=sc.model.logprob_mode, batch_size=d.batch_size, dtype=sc.model.dtype, autocast_bf16=bf16,
            source=str(ranked)) and None, shared_marker=out.with_suffix(".done"))
        return out

    # ------------------------------------------------------------------------------------------- training

    def train(self, name: str, stage: str, sc: StageConfig, start: str, data: Path) -> str:
        """Train ``stage`` from the model ``start`` on ``data`` into ``<run>/<name>/hf``."""
        from tuna.losses import required_candidate_fields
        from tuna.train import run_training

        out = self.dir / name
        if "ref_logprob" in required_candidate_fields(sc.loss):
            data = self.reference_data(name, sc, start, data)

        def fit() -> dict[str, Any]:
            tc = TrainConfig(model=replace(sc.model, name_or_path=start), data=replace(sc.data, train_file=str(data)),
                             loss=sc.loss, optim=sc.optim, trainer=sc.trainer, out_dir=str(out), seed=self.cfg.seed)
            run_training(stage, tc)
            if not self.man.writer:  # another rank of a multi-GPU job: rank 0 writes the summary and records it
                return {}
            summary = json.loads((out / "train_summary.json").read_text())
            return {"train": {"global_step": summary["global_step"], "metrics": summary["metrics"]}}

        self.man.run(name, {"stage": stage, "cfg": asdict(sc), "start": start, "start_hash": model_hash(start),
                            "data": file_hash(data)}, [out / "hf"], fit)
        return str(out / "hf")

    # ------------------------------------------------------------------------------------------- evaluation

    def evaluate(self, models: dict[str, str]) -> dict[str, Any]:
        cfg = self.cfg
        device = run_device(cfg.evaluation, [s.trainer for s in (cfg.sft, cfg.prob_rank, cfg.context_rank) if s is not None])
        # (step suffix, benchmark, split, data file): the verifiable benchmarks run once per evaluated split
        jobs: list[tuple[str, str, str | None, str | None]] = []
        for bench in cfg.evaluation.benchmarks:
            if bench in ("verifiable", "pairs"):
                if cfg.verifiable is None:
                    raise TunaError(f"benchmark {bench} needs a `verifiable` section", field="verifiable")
                for split in cfg.verifiable.eval_splits:
                    data = self.verifiable_splits()[split] if bench == "verifiable" else self.eval_pairs_data(split)
                    jobs.append((f"{bench}@{split}", bench, split, str(data)))
            else:
                jobs.append((bench, bench, None, None))
        for label in cfg.evaluate:
            if label not in models:
                continue
            for name, bench, split, data in jobs:
                out = self.dir / "eval" / label / f"{name}.json"
                self.man.run(f"eval_{label}_{name}", {"model": models[label], "model_hash": model_hash(models[label]),
                                                      "bench": bench, "eval": step_settings(cfg.evaluation), "judge": step_settings(cfg.judge),
                                                      "device": device, "data": file_hash(data) if data else None, "split": split,
                                                      "verifiable": asdict(cfg.verifiable) if data else None},  # type: ignore[arg-type]
                             [out], lambda label=label, bench=bench, out=out, data=data, split=split: evaluate_model(
                                 bench, models[label], label, out, cfg.evaluation, cfg.judge, run_name=cfg.name, device=device,
                                 data=data, verifiable=cfg.verifiable, split=split))
        baseline = "student" if "student" in cfg.evaluate else None
        return make_report(self.dir / "eval", cfg.results_dir, manifest=self.man.data, baseline=baseline,
                           paper=cfg.paper_numbers)
