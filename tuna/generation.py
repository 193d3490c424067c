"""How a model decodes: one config for every generate call in tuna.

The generators (:mod:`tuna.feedback.generators`) take a :class:`GenerationConfig` per call; ``tuna sample`` samples with
one (``SamplingConfig`` extends it with the prompt and the paper's diversity control), every ``tuna eval`` benchmark
generates its answers with one (``--generation.*``), and the pipeline's sections hold one. Each default lives here
once; a use that needs another default (greedy benchmark answers, N candidates) sets it where it is defined, with
its reason. Kept free of heavy imports so that ``tuna --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass
class GenerationConfig:
    """Decoding: how many tokens, how random, how many samples per prompt."""

    max_new_tokens: int = 256
    """Response length limit (new tokens)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling (1.0 = off)."""
    top_k: int = 50
    """Keep the k most likely tokens (0 = off). 50 is Hugging Face ``generate``'s default, which the released sampler
    (non_interactive_generate.py L125-136) used by not setting it; OpenAI-compatible APIs have no top-k (not sent)."""
    n: int = 1
    """Samples per prompt."""
    seed: int = 0
    """Sampling seed."""
    logprobs: bool = False
    """Return each sampled token's log-prob."""
    stop: list[str] | None = None
    """Stop strings (not part of the response)."""


def decoding_of(cfg: GenerationConfig, **changes: Any) -> GenerationConfig:
    """Just the decoding settings of ``cfg`` (a subclass such as ``SamplingConfig`` adds prompt settings), with
    ``changes``. A function, not a method: jsonargparse would turn a method of a command's dataclass into a
    subcommand."""
    return replace(GenerationConfig(**{f.name: getattr(cfg, f.name) for f in fields(GenerationConfig)}), **changes)
