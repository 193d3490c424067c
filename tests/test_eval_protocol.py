"""Protocols: labels and keys, what the paper pipeline evaluates with, where the pipeline evaluates, and the fit check
on every generation backend's path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from evaluation import protocol

REPO = Path(__file__).resolve().parents[1]


def _superni_fields(**over):
    f = {"items": 11810, "items_digest": "bc39ad4d75e8b593", "tasks": 119, "scope": "full", "num_pos_examples": 2,
         "max_source_length": 1024, "decoding": "greedy", "max_new_tokens": 128, "postprocess": "none", "template": "alpaca"}
    return {**f, **over}


def test_labels_name_the_scope_and_every_deviation():
    assert protocol.label("superni", _superni_fields()) == "full 119×100, 2-shot"
    assert protocol.label("superni", _superni_fields(scope="slice", tasks=8, items=16, num_pos_examples=0, max_new_tokens=48)) == \
        "slice 8 tasks, 16 inst., 0-shot, 48 new tok."
    assert protocol.label("lmentry", {"scope": "slice", "limit": 3, "max_new_tokens": 50, "decoding": "greedy", "truncate": False,
                                      "template": "alpaca"}) == "slice 3/task, approx."
    assert protocol.label("vicuna", {"questions": 80, "judge_model": "gpt-4-0613", "orders": "single", "parse": "strict",
                                     "template": "alpaca"}) == "80 q., judge gpt-4-0613, single order"


def test_keys_differ_exactly_when_fields_differ():
    a, b = _superni_fields(), _superni_fields(num_pos_examples=0)
    assert protocol.protocol_key(a) == protocol.protocol_key(dict(reversed(list(a.items()))))
    assert protocol.protocol_key(a) != protocol.protocol_key(b)
    assert protocol.protocol_key(a, ("num_pos_examples",)) == protocol.protocol_key(b, ("num_pos_examples",))


def test_chat_template_is_the_models_own_alpaca_is_a_fixed_text():
    from tuna.prompts import ALPACA_PROMPT_NO_INPUT

    fields, extra = protocol.template_fields("alpaca", None)
    assert fields == {"template": "alpaca", "template_digest": protocol.digest(ALPACA_PROMPT_NO_INPUT)} and extra == {}
    fields, extra = protocol.template_fields("chat", "tiny-random-llama")
    assert fields["template_digest"] == "model's own" and len(extra["chat_template_digest"]) == 16


def test_paper_pipeline_evaluates_with_the_official_protocols_on_the_gpu():
    from tuna_recipes.pipeline.config import build_config
    from tuna_recipes.pipeline.evaluate import run_device

    cfg = build_config(yaml.safe_load((REPO / "experiments/pipeline/paper.yaml").read_text()))
    e = cfg.evaluation
    assert (e.superni_data, e.superni_limit, e.superni_num_pos_examples, e.generation.max_new_tokens) == ("full", None, 2, 128)
    assert (e.lmentry_limit, e.vicuna_limit, e.vicuna_orders, e.vicuna_max_new_tokens) == (None, None, "single", 1024)
    assert e.vicuna_judge is not None and e.vicuna_judge.model == "gpt-4-0613" and e.vicuna_judge.backend == "openai"
    assert (e.runtime.backend, e.runtime.dtype, e.generation.temperature) == ("auto", "auto", 0.0)  # greedy
    trainers = [s.trainer for s in (cfg.sft, cfg.prob_rank, cfg.context_rank)]
    assert run_device(e, trainers) == "cuda"


def test_demo_evaluates_where_it_trains():
    from tuna_recipes.pipeline.config import PipelineConfig
    from tuna_recipes.pipeline.evaluate import run_device

    cfg = PipelineConfig()
    assert run_device(cfg.evaluation, [cfg.prob_rank.trainer, cfg.context_rank.trainer]) == "cpu"
    assert run_device(SimpleNamespace(runtime=SimpleNamespace(device="cuda:1")), []) == "cuda:1"
    assert cfg.evaluation.superni_num_pos_examples == 0  # the demo's cheaper choice; its column says 0-shot and slice


def test_backend_auto_is_hf_without_vllm_or_gpu(monkeypatch):
    import importlib.util

    from evaluation.predictions import resolve_backend

    assert resolve_backend("auto", "cpu") == "hf"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    assert resolve_backend("auto", "cuda") == "vllm" and resolve_backend("auto", "cpu") == "hf"
    assert resolve_backend("openai", "cuda") == "openai"


@pytest.mark.parametrize("backend", ["hf", "openai", "vllm"])
def test_every_backend_checks_that_prompts_fit(backend, tmp_path):
    """The check runs before any generator is built, whatever the backend: a prompt longer than the context fails
    with the item's id (generate_cached is given no generator, so reaching generation would build one and fail
    differently)."""
    from evaluation.config import RuntimeConfig, greedy
    from evaluation.predictions import generate_cached, prompt_budget
    from tuna.errors import TunaError

    rt = RuntimeConfig(backend=backend, max_model_len=64, tokenizer="tiny-random-llama" if backend == "openai" else None)
    budget = prompt_budget("tiny-random-llama", rt)
    assert budget.context == 64
    items = [{"id": "ok", "prompt": "short"}, {"id": "q-long", "prompt": " ".join(["word"] * 80)}]
    with pytest.raises(TunaError, match="item q-long: prompt 80 tokens \\+ 16 new tokens > the 64-token context"):
        generate_cached(items, tmp_path / f"{backend}.jsonl", model="tiny-random-llama", gen=greedy(16), runtime=rt, budget=budget)
    assert not (tmp_path / f"{backend}.jsonl").exists() or not (tmp_path / f"{backend}.jsonl").read_text()


def test_context_length_comes_from_the_model_config():
    from evaluation.config import RuntimeConfig
    from evaluation.predictions import context_length, prompt_budget
    from tuna.errors import TunaError

    assert context_length("tiny-random-llama") == 2048
    assert context_length("smollm2-135m-instruct") == 8192
    with pytest.raises(TunaError, match="pass --runtime.tokenizer"):
        prompt_budget("served-model-name", RuntimeConfig(backend="openai"))
