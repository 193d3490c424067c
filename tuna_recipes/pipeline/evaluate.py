"""The pipeline's evaluation step: one benchmark on one model, on the run's device, through ``evaluation.commands``
(one place per benchmark), its results.json copied to the step's marker file."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from tuna.errors import TunaError


@contextlib.contextmanager
def judge_endpoint(judge: Any):
    """(model, backend, base_url) for an OpenAI-compatible judge; a ``llamacpp`` judge gets a local server (watched by
    every client of its URL, so the reviewer's client restarts it once if it dies; tuna.feedback.endpoint)."""
    if judge.backend == "llamacpp":
        from tuna.feedback.server import LlamaCppServer

        with LlamaCppServer(judge.model, n_ctx=judge.n_ctx) as server:
            yield server.model, "openai", server.base_url
    else:
        yield judge.model, judge.backend, judge.base_url


def run_device(ecfg: Any, trainers: list[Any]) -> str:
    """Where evaluation runs: ``evaluation.device``, or with ``auto`` the device the run trains on (cuda when a stage
    trains on a GPU, cpu when they train on the CPU, else cuda when available)."""
    from tuna.precision import device_type

    if ecfg.device != "auto":
        return ecfg.device
    accels = {str(t.accelerator) for t in trainers}
    if accels & {"gpu", "cuda"}:
        return "cuda"
    if accels == {"cpu"}:
        return "cpu"
    return device_type("auto")


def evaluate_model(bench: str, model: str, label: str, out: Path, ecfg: Any, judge: Any, *, run_name: str,
                   device: str = "auto", data: str | None = None, verifiable: Any = None, split: str | None = None) -> dict[str, Any]:
    """Run one benchmark on one model on ``device``; copies its results.json to ``out`` (the step's marker).
    ``data``: the split file of the verifiable and pairs benchmarks (the pipeline makes it), ``split`` its name."""
    from evaluation import commands as ev

    out_root = str(out.parent.parent / "runs")
    tags = {"name": label, "run": run_name}
    common = dict(template=ecfg.template, batch_size=ecfg.batch_size, backend=ecfg.backend, dtype=ecfg.dtype, device=device,
                  out_root=out_root, tags=tags)
    if bench == "superni":
        path = ev.eval_superni(model=model, data=ecfg.superni_data, limit=ecfg.superni_limit, num_pos_examples=ecfg.superni_num_pos_examples,
                               max_new_tokens=ecfg.max_new_tokens, **common)
    elif bench == "lmentry":
        path = ev.eval_lmentry(model=model, limit=ecfg.lmentry_limit, max_new_tokens=min(ecfg.max_new_tokens, 50), **common)
    elif bench == "vicuna":
        vj = ecfg.vicuna_judge or judge
        orders = {"orders": ecfg.vicuna_orders} if ecfg.vicuna_orders else {}
        with judge_endpoint(vj) as (jmodel, jbackend, jurl):
            path = ev.eval_vicuna(model=model, opponent=ecfg.vicuna_opponent, limit=ecfg.vicuna_limit, judge_model=jmodel,
                                  judge_backend=jbackend, judge_base_url=jurl, judge_api_key_env=vj.api_key_env,
                                  judge_api_key_file=vj.api_key_file,
                                  judge_grammar="score_grammar" if vj.constrain == "rank_grammar" else "none",
                                  judge_concurrency=vj.concurrency, judge_timeout=vj.timeout,
                                  judge_max_retries=vj.max_retries, judge_unreachable_timeout=vj.unreachable_timeout,
                                  max_cost=vj.max_cost,
                                  price_per_1k_prompt=vj.price_per_1k_prompt,
                                  price_per_1k_completion=vj.price_per_1k_completion,
                                  max_new_tokens=ecfg.vicuna_max_new_tokens or ecfg.max_new_tokens * 2, **orders, **common)
    elif bench == "verifiable":
        from evaluation.verifiable_commands import eval_verifiable

        path = eval_verifiable(model=model, data=str(data), by=verifiable.by, max_new_tokens=verifiable.max_new_tokens, split=split,
                               **common)
    elif bench == "pairs":
        from evaluation.verifiable_commands import eval_pairs

        # prefix-shared: each set's prompt once (the same scores as the padded layout, tested), 8 sets per forward
        path = eval_pairs(model=model, data=str(data), template=ecfg.template, device=device, out_root=out_root, tags=tags,
                          logprob_mode="prefix_shared", batch_size=8, split=split)
    else:
        raise TunaError(f"unknown benchmark {bench!r} (superni | lmentry | vicuna | verifiable | pairs)", field="evaluation.benchmarks")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out)
    res = json.loads(Path(path).read_text())
    extra: dict[str, Any] = {"metrics": {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))},
                             "protocol": res.get("protocol", {}).get("label")}
    if "judge_ledger" in res["metrics"]:
        extra["judge"] = res["metrics"]["judge_ledger"]
    return extra
