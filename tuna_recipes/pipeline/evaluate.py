"""The pipeline's evaluation step: one benchmark on one model, on the run's device, as the job `tuna eval <benchmark>`
runs (``evaluation.commands``, ``evaluation.verifiable_commands``): the evaluation section's generation and runtime
configs and the judge's config go into the job as they are; its results.json is copied to the step's marker file."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from evaluation.config import BenchmarkJob
from tuna.errors import TunaError
from tuna.feedback.config import JudgeConfig
from tuna_recipes.pipeline.config import EvalConfig, VerifiableConfig


def run_device(ecfg: EvalConfig, trainers: list[Any]) -> str:
    """Where evaluation runs: ``evaluation.runtime.device``, or with ``auto`` the device the run trains on (cuda when a
    stage trains on a GPU, cpu when they train on the CPU, else cuda when available)."""
    from tuna.precision import device_type

    if ecfg.runtime.device != "auto":
        return ecfg.runtime.device
    accels = {str(t.accelerator) for t in trainers}
    if accels & {"gpu", "cuda"}:
        return "cuda"
    if accels == {"cpu"}:
        return "cpu"
    return device_type("auto")


def benchmark_job(bench: str, common: dict[str, Any], ecfg: EvalConfig, judge: JudgeConfig, *, data: str | None = None,
                  verifiable: VerifiableConfig | None = None, split: str | None = None) -> BenchmarkJob:
    """The job of ``bench`` for the pipeline's settings; ``common``: model, template, runtime, out_root and tags."""
    from evaluation.commands import LMentryJob, SuperNIJob, VicunaJob
    from evaluation.verifiable_commands import PairsJob, VerifiableJob

    gen = ecfg.generation
    if bench == "superni":
        return SuperNIJob(**common, data=ecfg.superni_data, limit=ecfg.superni_limit,
                          num_pos_examples=ecfg.superni_num_pos_examples, generation=gen)
    if bench == "lmentry":  # upstream's 50 new tokens at most
        return LMentryJob(**common, limit=ecfg.lmentry_limit, generation=replace(gen, max_new_tokens=min(gen.max_new_tokens, 50)))
    if bench == "vicuna":
        orders = {"orders": ecfg.vicuna_orders} if ecfg.vicuna_orders else {}
        return VicunaJob(**common, opponent=ecfg.vicuna_opponent, limit=ecfg.vicuna_limit, judge=ecfg.vicuna_judge or judge,
                         generation=replace(gen, max_new_tokens=ecfg.vicuna_max_new_tokens or gen.max_new_tokens * 2), **orders)
    if bench in ("verifiable", "pairs") and verifiable is None:
        raise TunaError(f"benchmark {bench} needs a `verifiable` section", field="verifiable")
    if bench == "verifiable":
        return VerifiableJob(**common, data=str(data), by=verifiable.by, split=split,  # type: ignore[union-attr]
                             generation=replace(gen, max_new_tokens=verifiable.max_new_tokens))  # type: ignore[union-attr]
    if bench == "pairs":
        # prefix-shared: each set's prompt once (the same scores as the padded layout, tested), 8 sets per forward;
        # float32, as `tuna eval pairs`: exact comparisons
        rt = replace(common["runtime"], backend="hf", dtype="float32", batch_size=8)
        return PairsJob(**{**common, "runtime": rt}, data=str(data), logprob_mode="prefix_shared", split=split)
    raise TunaError(f"unknown benchmark {bench!r} (superni | lmentry | vicuna | verifiable | pairs)", field="evaluation.benchmarks")


def evaluate_model(bench: str, model: str, label: str, out: Path, ecfg: EvalConfig, judge: JudgeConfig, *, run_name: str,
                   device: str = "auto", data: str | None = None, verifiable: VerifiableConfig | None = None,
                   split: str | None = None) -> dict[str, Any]:
    """Run one benchmark on one model on ``device``; copies its results.json to ``out`` (the step's marker).
    ``data``: the split file of the verifiable and pairs benchmarks (the pipeline makes it), ``split`` its name."""
    from evaluation import commands, verifiable_commands

    common = {"model": model, "template": ecfg.template, "runtime": replace(ecfg.runtime, device=device),
              "out_root": str(out.parent.parent / "runs"), "tags": {"name": label, "run": run_name}}
    job = benchmark_job(bench, common, ecfg, judge, data=data, verifiable=verifiable, split=split)
    path = {**commands.RUNNERS, **verifiable_commands.RUNNERS}[type(job)](job)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out)
    res = json.loads(Path(path).read_text())
    extra: dict[str, Any] = {"metrics": {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))},
                             "protocol": res.get("protocol", {}).get("label")}
    if "judge_ledger" in res["metrics"]:
        extra["judge"] = res["metrics"]["judge_ledger"]
    return extra
