"""The settings every ``tuna eval`` job shares: which model answers, with which prompt template, decoded how
(:class:`tuna.generation.GenerationConfig`, ``--generation.*``), run where (:class:`RuntimeConfig`, ``--runtime.*``),
and where its run folder goes. Each benchmark's job (``SuperNIJob``, ``LMentryJob``, ``VicunaJob``, ``VerifiableJob``)
extends :class:`EvalJob` with its own fields and the decoding defaults of its protocol; ``PairsJob``, which compares
log-likelihoods and generates nothing, extends :class:`BenchmarkJob`.

Kept free of heavy imports so that ``tuna --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuna.generation import GenerationConfig


@dataclass
class RuntimeConfig:
    """Where and how the evaluated model runs (none of it changes an answer's text, except dtype, which is hashed)."""

    backend: str = "auto"
    """auto (vLLM on a GPU where installed, else batched HF) | hf | openai | vllm."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda."""
    dtype: str = "auto"
    """Model weights dtype: auto (bf16 only where the device computes it natively) | float32 | bfloat16 | float16."""
    batch_size: int = 8
    """Prompts per generation batch."""
    base_url: str | None = None
    """OpenAI-compatible server for backend openai."""
    tokenizer: str | None = None
    """The served model's tokenizer (a folder or hub id) when the model is a server's model name."""
    max_model_len: int | None = None
    """The context window prompts must fit in (default: the model config's)."""


def greedy(max_new_tokens: int) -> GenerationConfig:
    """Greedy answers of at most ``max_new_tokens``: every benchmark's decoding here (reproducible answers)."""
    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)


@dataclass(kw_only=True)
class BenchmarkJob:
    """What every evaluation needs besides its benchmark's own settings."""

    model: str | None = None
    """The evaluated model (an embedded name, a HF folder or hub id, or a served model name with backend openai)."""
    template: str = "alpaca"
    """How the model sees each benchmark input: alpaca | chat | raw."""
    limit: int | None = None
    """Evaluate a slice (what it counts is the benchmark's: instances per task, examples per task, questions, records)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Where the model runs."""
    out_root: str = "runs/eval"
    """Where runs go: <out_root>/<benchmark>/<model>/<settings hash>/."""
    tags: dict[str, Any] | None = None
    """Free labels stored in results.json (e.g. {"name": "Tuna", "lambda": 0.5}) for `tuna report`."""


@dataclass(kw_only=True)
class EvalJob(BenchmarkJob):
    """An evaluation whose model answers: how it decodes."""

    generation: GenerationConfig = field(default_factory=lambda: greedy(GenerationConfig.max_new_tokens))
    # greedy; each benchmark's job sets its protocol's length
    """Decoding of the answers (one answer per item: generation.n is 1)."""
