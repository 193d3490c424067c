"""From a batch of [B, S, T] slots to per-token response log-probs, the way the loss needs them.

Four modes, tested equal (``tests/test_forward.py``, ``tests/test_perf_equivalence.py``):

* ``full``: the released code's way: logits for every position, a full-vocabulary log-softmax, gather.
* ``chunked`` (default): run the decoder, keep the hidden states of response positions only, and apply the
  LM head to those in chunks with a fused ``logit[y] − logsumexp`` (no ``[B·S, T, V]`` tensors at all).

* ``packed`` / ``prefix_shared``: no padding between candidates (``tuna.packing``): sequences packed into rows
  with per-sequence positions and a block-diagonal causal 4-D mask; ``prefix_shared`` also computes each
  record's prompt once (its responses attend to it and to themselves only). Both use the chunked LM head.

Slots that hold no sequence (records with fewer candidates than the batch's largest) are skipped.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from tuna.losses import reference_token_logprobs

LogprobMode = Literal["full", "chunked", "packed", "prefix_shared"]


def _causal_lm(model: Any) -> Any:
    """The transformers CausalLM under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _softcap(model: Any) -> float | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", cfg)
    return getattr(cfg, "final_logit_softcapping", None)


def chunked_response_logprobs(
    hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, *, softcap: float | None = None,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """Log-probs of ``targets [M]`` given ``hidden [M, H]``, ``chunk_tokens`` positions at a time."""
    out = []
    for s in range(0, hidden.shape[0], chunk_tokens):
        logits = lm_head(hidden[s : s + chunk_tokens]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        tgt = targets[s : s + chunk_tokens]
        out.append(logits.gather(-1, tgt[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros((0,), dtype=torch.float32)


def response_token_logprobs(
    model: Any, batch: dict[str, torch.Tensor], *, mode: LogprobMode = "chunked", chunk_tokens: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_logps, token_mask)`` of shape [B, S, T-1] for the padded slot layout of ``collate_padded``."""
    if mode in ("packed", "prefix_shared"):
        from tuna.packing import packed_response_logprobs

        return packed_response_logprobs(model, batch, mode=mode, chunk_tokens=chunk_tokens)
    input_ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b, s, t = input_ids.shape
    flat_ids, flat_attn, flat_labels = input_ids.view(b * s, t), attn.view(b * s, t), labels.view(b * s, t)
    live = flat_attn.any(-1).nonzero().squeeze(-1)  # skip empty slots
    ids, am, lab = flat_ids[live], flat_attn[live], flat_labels[live]
    target = lab[:, 1:]
    mask = target != -100
    if mode == "full":
        logits = model(input_ids=ids, attention_mask=am).logits
        logps_live = reference_token_logprobs(logits, lab)
    elif mode == "chunked":
        lm = _causal_lm(model)
        hidden = lm.get_decoder()(input_ids=ids, attention_mask=am).last_hidden_state[:, :-1]
        picked = chunked_response_logprobs(hidden[mask], lm.get_output_embeddings(), target[mask],
                                           softcap=_softcap(lm), chunk_tokens=chunk_tokens)
        logps_live = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
        logps_live = logps_live.masked_scatter(mask, picked)
    else:
        raise ValueError(f"unknown logprob mode {mode!r} (full | chunked | packed | prefix_shared)")
    logps = torch.zeros((b * s, t - 1), dtype=logps_live.dtype, device=logps_live.device)
    logps = logps.index_copy(0, live, logps_live)
    full_mask = torch.zeros((b * s, t - 1), dtype=torch.bool, device=mask.device).index_copy(0, live, mask)
    return logps.view(b, s, t - 1), full_mask.view(b, s, t - 1)
