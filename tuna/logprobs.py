"""Model-side helpers every log-prob path shares: the CausalLM under a wrapper, its final-logit softcap, and the
LM head applied to chosen hidden states only (``chunked_response_logprobs``).

Used by ``tuna.forward`` (the training paths), ``tuna.packing`` (the padding-free layouts) and the in-process
scorer and sampler of ``tuna.feedback``; it imports none of them."""

from __future__ import annotations

from typing import Any

import torch


def causal_lm(model: Any) -> Any:
    """The transformers CausalLM under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_config(model: Any) -> Any:
    """The language model's config (``text_config`` of a multimodal config such as Gemma 3's, else the config)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "text_config", cfg)


def final_logit_softcap(model: Any) -> float | None:
    """``final_logit_softcapping`` of Gemma 2/3 configs (``tanh(logit / c) · c``), None for other models."""
    return getattr(text_config(model), "final_logit_softcapping", None)


def chunked_response_logprobs(
    hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, *, softcap: float | None = None,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """Log-probs of ``targets [M]`` given ``hidden [M, H]``, ``chunk_tokens`` positions at a time: the LM head and a
    fused ``logit[y] − logsumexp`` in fp32 per chunk, so no ``[M, V]`` tensor exists beyond one chunk."""
    out = []
    for s in range(0, hidden.shape[0], chunk_tokens):
        logits = lm_head(hidden[s : s + chunk_tokens]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        tgt = targets[s : s + chunk_tokens]
        out.append(logits.gather(-1, tgt[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros((0,), dtype=torch.float32)
