"""From a batch of [B, S, T] slots to per-token response log-probs, the way the loss needs them.

Modes (``model.logprob_mode``), tested equal (``tests/test_perf_equivalence.py``, ``tests/test_attention.py``):

* ``full``: the released code's way: logits for every position, a full-vocabulary log-softmax, gather.
* ``chunked``: run the decoder, keep the hidden states of response positions only, and apply the LM head to
  those in chunks with a fused ``logit[y] − logsumexp`` (no ``[B·S, T, V]`` tensors at all).
* ``packed`` / ``prefix_shared``: no padding between candidates (``tuna.packing``): sequences packed into one
  row with per-sequence positions; ``prefix_shared`` also computes each record's prompt once (its responses
  attend to it and to themselves only). Attention by FlexAttention on CUDA, by one SDPA call per span
  elsewhere (``tuna.attention``). Both use the chunked LM head.
* ``auto`` (default): ``prefix_shared`` on CUDA for models whose attention goes through transformers'
  ``AttentionInterface`` (FlexAttention: block-sparse, compiled, trains), ``chunked`` elsewhere (on a CPU the
  span loop's speed-up is opt-in; see docs/performance.md).

Slots that hold no sequence (records with fewer candidates than the batch's largest) are skipped.
"""

from __future__ import annotations

from typing import Any

import torch

from tuna.config import LogprobMode
from tuna.logprobs import causal_lm, chunked_response_logprobs, final_logit_softcap
from tuna.losses import reference_token_logprobs

LOGPROB_MODES = ("auto", "full", "chunked", "packed", "prefix_shared")


def resolve_logprob_mode(mode: str, model: Any, device: torch.device | str) -> str:
    """``auto`` → ``prefix_shared`` on CUDA where the model supports transformers' attention interface (and torch
    has FlexAttention), else ``chunked``; other modes pass through."""
    if mode not in LOGPROB_MODES:
        raise ValueError(f"unknown logprob mode {mode!r} ({' | '.join(LOGPROB_MODES)})")
    if mode != "auto":
        return mode
    from tuna.packing import default_attention

    lm = causal_lm(model)
    if default_attention(device) == "flex" and getattr(lm, "_supports_attention_backend", False):
        return "prefix_shared"
    return "chunked"


def response_token_logprobs(
    model: Any, batch: dict[str, torch.Tensor], *, mode: LogprobMode = "auto", chunk_tokens: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_logps, token_mask)`` of shape [B, S, T-1] for the padded slot layout of ``collate_padded``."""
    input_ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    mode = resolve_logprob_mode(mode, model, input_ids.device)  # type: ignore[assignment]
    if mode in ("packed", "prefix_shared"):
        from tuna.packing import packed_response_logprobs

        return packed_response_logprobs(model, batch, mode=mode, chunk_tokens=chunk_tokens)  # type: ignore[arg-type]
    b, s, t = input_ids.shape
    flat_ids, flat_attn, flat_labels = input_ids.view(b * s, t), attn.view(b * s, t), labels.view(b * s, t)
    live = flat_attn.any(-1).nonzero().squeeze(-1)  # skip empty slots
    ids, am, lab = flat_ids[live], flat_attn[live], flat_labels[live]
    target = lab[:, 1:]
    mask = target != -100
    if mode == "full":
        logits = model(input_ids=ids, attention_mask=am).logits
        logps_live = reference_token_logprobs(logits, lab)
    else:  # chunked
        lm = causal_lm(model)
        hidden = lm.get_decoder()(input_ids=ids, attention_mask=am).last_hidden_state[:, :-1]
        picked = chunked_response_logprobs(hidden[mask], lm.get_output_embeddings(), target[mask],
                                           softcap=final_logit_softcap(lm), chunk_tokens=chunk_tokens)
        logps_live = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
        logps_live = logps_live.masked_scatter(mask, picked)
    logps = torch.zeros((b * s, t - 1), dtype=logps_live.dtype, device=logps_live.device)
    logps = logps.index_copy(0, live, logps_live)
    full_mask = torch.zeros((b * s, t - 1), dtype=torch.bool, device=mask.device).index_copy(0, live, mask)
    return logps.view(b, s, t - 1), full_mask.view(b, s, t - 1)
