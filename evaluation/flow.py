"""The evaluation flow every benchmark follows, in one place:

    resolve the data → start the run folder (its settings hashed) → render and generate, cached → score
    → record the protocol → write scores.jsonl and results.json → print one line

A benchmark's runner (``evaluation.commands``, ``evaluation.verifiable_commands``) resolves its data, scores and
builds its protocol; an :class:`EvalRun` does the rest, the same way for each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.config import BenchmarkJob, EvalJob
from evaluation.predictions import (
    PromptBudget,
    Timer,
    decoding_fields,
    generate_cached,
    hashed_settings,
    prompt_budget,
    render,
    resolve_runtime,
    start_run,
    write_results,
)
from tuna.errors import TunaError
from tuna.generation import GenerationConfig


class EvalRun:
    """One benchmark run of one job: created when the job starts (the wall time counts from here), with the job's
    runtime resolved (``auto`` device, backend and dtype)."""

    def __init__(self, job: BenchmarkJob, benchmark: str):
        self.timer = Timer()
        self.job, self.benchmark = job, benchmark
        self.runtime = resolve_runtime(job.runtime)
        self.dir: Path | None = None
        self.settings: dict[str, Any] = {}
        self._budget: PromptBudget | None = None

    @property
    def model(self) -> str:
        if not self.job.model:
            raise TunaError("give --model (the model that answers)", field="model")
        return self.job.model

    def start(self, settings: dict[str, Any], *, generates: bool = True, model: str | None = None) -> Path:
        """The run folder for ``settings`` plus, when the run generates, the hashed prompt, decoding and runtime."""
        gen = hashed_settings(self.job.template, self.generation, self.runtime) if generates else {}
        self.settings = {**settings, **gen}
        self.dir = start_run(self.job.out_root, self.benchmark, model or self.model, self.settings)
        return self.dir

    @property
    def generation(self) -> GenerationConfig:
        if not isinstance(self.job, EvalJob):
            raise TypeError(f"{type(self.job).__name__} does not generate")
        return self.job.generation

    def budget(self) -> PromptBudget:
        """The model's tokenizer and context window (loaded once)."""
        if self._budget is None:
            self._budget = prompt_budget(self.model, self.runtime)
        return self._budget

    def render(self, texts: list[str], *, budget: bool = True) -> list[str]:
        """The benchmark inputs in the job's prompt template (the chat template is the budget's tokenizer's)."""
        return render(texts, self.job.template, self.model, tokenizer=self.budget().tokenizer if budget else None)

    def generate(self, items: list[dict[str, Any]], desc: str, *, budget: bool = True) -> dict[str, dict[str, Any]]:
        """Cached predictions for ``items`` in this run's predictions.jsonl; with ``budget`` every prompt is first
        checked to fit the context with its new tokens."""
        assert self.dir is not None, "start() first"
        return generate_cached(items, self.dir / "predictions.jsonl", model=self.model, gen=self.generation,
                               runtime=self.runtime, budget=self.budget() if budget else None, desc=desc)

    def protocol_decoding(self) -> dict[str, Any]:
        return decoding_fields(self.generation)

    def run_info(self) -> dict[str, Any]:
        """Where the model ran, as results.json records it."""
        return {"run": {"device": self.runtime.device, "dtype": self.runtime.dtype, "backend": self.runtime.backend}}

    def finish(self, metrics: dict[str, Any], extra: dict[str, Any], *, scores: list[dict[str, Any]] | None = None,
               model: str | None = None, tags: dict[str, Any] | None = None, directory: Path | None = None,
               settings: dict[str, Any] | None = None) -> Path:
        """Write scores.jsonl (when given) and results.json (``extra``: the protocol, the item scores' description,
        the run info) into the run folder, or ``directory`` below it; ``settings`` default to the run folder's."""
        from tuna.records import atomic_write_text

        d = directory or self.dir
        assert d is not None, "start() first"
        if scores is not None:
            atomic_write_text(d / "scores.jsonl", "".join(json.dumps(x) + "\n" for x in scores))
        return write_results(d, benchmark=self.benchmark, model=model or self.job.model,
                             settings=self.settings if settings is None else settings,
                             metrics=metrics, wall_time_s=self.timer(), tags=self.job.tags if tags is None else tags,
                             extra=extra)
