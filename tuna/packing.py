"""Padding-free layouts of a [B, S, T] candidate batch, and their forward (issue #7).

Two layouts, both built *inside* the forward from the padded batch of ``collate_padded`` (the data module,
its caching and its resumable sampler stay untouched; the collation costs a few ms against a multi-second
step):

* ``packed``: every (record, candidate) sequence ``prompt + response`` is a segment; segments are packed
  first-fit-decreasing into rows of ``capacity`` tokens (default: the longest segment, so a row's attention
  span, hence the quadratic attention cost per token, is never longer than in the padded layout). Each token
  gets its own position id (restarting at 0 per segment) and a block-diagonal causal mask keeps segments apart.
* ``prefix_shared``: one segment per record: ``prompt + response_1 + … + response_N``; the prompt is computed
  once, each response attends to the prompt and to itself only, and its positions continue from the prompt
  length (so RoPE sees exactly the positions of the padded layout). Segments are then packed like above.

The attention mask is a 4-D tensor ``[rows, 1, L, L]`` which transformers 5.x passes through unchanged
(``masking_utils._preprocess_mask_arguments``: "If the mask is already 4D, simply return as-is"): boolean
(True = attend) for ``sdpa``, additive (0 / dtype-min) for ``eager``. Padding slots at row ends attend to
themselves only, so no softmax row is empty (no NaN).

The log-probs of response tokens are then taken from the hidden states of their predecessor positions with
the chunked LM head (``tuna.forward.chunked_response_logprobs``) and scattered back to the ``[B, S, T-1]``
layout the loss expects, so ``tuna_loss`` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

PackMode = Literal["packed", "prefix_shared"]


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    """[R, L] token ids (pad id at row ends)."""
    position_ids: torch.Tensor
    """[R, L] per-segment positions."""
    group: torch.Tensor
    """[R, L] segment id per token (−1 − column for padding, unique, so padding only sees itself)."""
    branch: torch.Tensor
    """[R, L] 0 for shared tokens (the prompt under prefix sharing; all tokens under plain packing), k+1 for
    the tokens of response k under prefix sharing."""
    pred_index: torch.Tensor
    """[M] flat index (row·L + col) of the hidden state that predicts each response token."""
    target: torch.Tensor
    """[M] the response tokens."""
    out_index: torch.Tensor
    """[M] flat index into the [B·S, T-1] log-prob layout."""
    num_tokens: int
    """Real tokens in the packed rows (prompt counted once per record under prefix sharing)."""
    spans: list[list[tuple[int, int, int, int]]]
    """Per row, the attention spans in row order ``(q_start, q_end, prefix_start, prefix_end)``: queries
    ``[q_start, q_end)`` attend causally to themselves and fully to ``[prefix_start, prefix_end)`` (empty for a
    sequence or a shared prompt; the record's prompt for a response under prefix sharing)."""

    @property
    def num_slots(self) -> int:
        return self.input_ids.numel()


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_batch(batch: dict[str, torch.Tensor], *, mode: PackMode = "packed", capacity: int | None = None,
               pad_id: int = 0) -> PackedBatch:
    """The padded ``[B, S, T]`` batch of ``collate_padded`` → a :class:`PackedBatch`.

    ``capacity``: row length; None packs into rows as long as the longest segment (a segment longer than
    ``capacity`` gets a row of its own); −1 puts everything in one row (for the span attention)."""
    input_ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b, s, t = input_ids.shape
    lens = attn.sum(-1).tolist()  # [B][S] prompt + response lengths (right-padded)
    resp_lens = (labels != -100).sum(-1).tolist()
    ids_list = input_ids.tolist()

    # segments: list of (token ids, positions, branch ids, [(slot, first token offset in segment, prompt_len, resp_len)])
    segments: list[tuple[list[int], list[int], list[int], list[tuple[int, int, int, int]]]] = []
    for i in range(b):
        live = [k for k in range(s) if lens[i][k] > 0]
        if not live:
            continue
        if mode == "prefix_shared":
            p = lens[i][live[0]] - resp_lens[i][live[0]]
            prompt = ids_list[i][live[0]][:p]
            for k in live:
                if lens[i][k] - resp_lens[i][k] != p or ids_list[i][k][:p] != prompt:
                    raise ValueError(f"prefix_shared needs one prompt per record (record {i}, slot {k} differs)")
            toks, pos, br, spans = list(prompt), list(range(p)), [0] * p, []
            for k in live:
                r = resp_lens[i][k]
                spans.append((i * s + k, len(toks), p, r))
                toks += ids_list[i][k][p : p + r]
                pos += range(p, p + r)
                br += [k + 1] * r
            segments.append((toks, pos, br, spans))
        elif mode == "packed":
            for k in live:
                n, r = lens[i][k], resp_lens[i][k]
                segments.append((ids_list[i][k][:n], list(range(n)), [0] * n, [(i * s + k, n - r, n - r, r)]))
        else:
            raise ValueError(f"unknown pack mode {mode!r} (packed | prefix_shared)")

    seg_lens = [len(sg[0]) for sg in segments]
    cap = sum(seg_lens) if capacity == -1 else max(max(seg_lens, default=1), capacity or 0)
    bins = _first_fit_decreasing(seg_lens, cap)
    rows = len(bins)
    row_len = max((sum(seg_lens[j] for j in bn) for bn in bins), default=1)
    ids = torch.full((rows, row_len), pad_id, dtype=torch.long)
    pos = torch.zeros((rows, row_len), dtype=torch.long)
    group = -1 - torch.arange(rows * row_len, dtype=torch.long).view(rows, row_len)
    branch = torch.zeros((rows, row_len), dtype=torch.long)
    pred, tgt, out = [], [], []
    row_spans: list[list[tuple[int, int, int, int]]] = []
    for r, bn in enumerate(bins):
        col = 0
        row_spans.append([])
        for j in bn:
            toks, ps, br, spans = segments[j]
            n = len(toks)
            ids[r, col : col + n] = torch.tensor(toks)
            pos[r, col : col + n] = torch.tensor(ps)
            branch[r, col : col + n] = torch.tensor(br)
            group[r, col : col + n] = j
            base = r * row_len + col
            if mode == "prefix_shared":
                p = spans[0][2] if spans else n
                row_spans[r].append((col, col + p, col, col))
                row_spans[r].extend((col + st, col + st + rl, col, col + p) for _, st, _, rl in spans if rl)
            else:
                row_spans[r].append((col, col + n, col, col))
            for slot, start, p, rl in spans:
                if rl == 0:
                    continue
                # response token m (0-based) sits at start + m; it is predicted by the hidden state of the token
                # before it: the last prompt token for m = 0, else response token m − 1 of the same branch
                first_pred = base + (p - 1 if mode == "prefix_shared" else start - 1)
                pred.append(torch.tensor([first_pred]))
                pred.append(torch.arange(base + start, base + start + rl - 1))
                tgt.append(torch.tensor(toks[start : start + rl]))
                out.append(slot * (t - 1) + torch.arange(p - 1, p - 1 + rl))
            col += n

    def cat(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)

    return PackedBatch(ids, pos, group, branch, cat(pred), cat(tgt), cat(out), sum(seg_lens), row_spans)


def attention_mask_4d(pb: PackedBatch, *, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """``[R, 1, L, L]`` mask: same segment, causal in the row, and (shared token or same response branch)."""
    g, br = pb.group, pb.branch
    L = g.shape[1]
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    allowed = (g[:, :, None] == g[:, None, :]) & causal & ((br[:, None, :] == 0) | (br[:, :, None] == br[:, None, :]))
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        out = torch.zeros(allowed.shape, dtype=dtype)
        return out.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"packed layouts need attn_implementation sdpa or eager, got {attn_implementation!r}")


SPAN_ATTENTION = "tuna_spans"


def span_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                   scaling: float | None = None, dropout: float = 0.0, tuna_spans: Any = None, **kwargs: Any):
    """Variable-length attention for one packed row (a transformers ``AttentionInterface`` function).

    ``query [1, H, L, D]``, ``key/value [1, H_kv, L, D]``; ``tuna_spans`` = ``(q_start, q_end, prefix_start,
    prefix_end, mask)`` in row order covering the row: each span's queries attend causally to the span and
    fully to its prefix (``mask`` is the ``[q, prefix + q]`` boolean mask then, else None and plain causal SDPA).
    Only the unmasked blocks are computed: no padding, no cross-sequence work, no quadratic mask."""
    if query.shape[0] != 1:
        raise ValueError("span attention expects a single packed row")
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # GQA: the math/flash CPU kernels want equal heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    outs = []
    for qs, qe, ps, pe, mask in tuna_spans:
        q = query[:, :, qs:qe]
        if mask is None:
            o = torch.nn.functional.scaled_dot_product_attention(q, key[:, :, qs:qe], value[:, :, qs:qe], is_causal=True,
                                                                 scale=scaling, dropout_p=dropout)
        else:
            k = torch.cat([key[:, :, ps:pe], key[:, :, qs:qe]], dim=2)
            v = torch.cat([value[:, :, ps:pe], value[:, :, qs:qe]], dim=2)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, dropout_p=dropout)
        outs.append(o)
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _register_span_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SPAN_ATTENTION, span_attention)


def _span_args(pb: PackedBatch, device: torch.device) -> list[tuple[int, int, int, int, torch.Tensor | None]]:
    out = []
    for qs, qe, ps, pe in pb.spans[0]:
        mask = None
        if pe > ps:
            q, p = qe - qs, pe - ps
            mask = torch.ones((q, p + q), dtype=torch.bool, device=device)
            mask[:, p:] = torch.ones((q, q), dtype=torch.bool, device=device).tril()
        out.append((qs, qe, ps, pe, mask))
    return out


def _configs(lm: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for m in lm.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def packed_response_logprobs(
    model: Any, batch: dict[str, torch.Tensor], *, mode: PackMode = "packed", attention: Literal["spans", "mask"] = "spans",
    capacity: int | None = None, chunk_tokens: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_logps, token_mask)`` [B, S, T-1], equal to ``response_token_logprobs(mode='full')`` but computed
    on a padding-free (and, for ``prefix_shared``, prompt-once) layout.

    ``attention='spans'`` (default): everything in one row, attention by :func:`span_attention` (exact
    variable-length attention, registered with transformers' ``AttentionInterface`` and switched in for this
    call only). ``attention='mask'``: rows of ``capacity`` tokens with the model's own sdpa/eager attention and
    a 4-D block mask (portable, but computes the masked blocks too)."""
    from tuna.forward import _causal_lm, _softcap, chunked_response_logprobs

    lm = _causal_lm(model)
    input_ids, labels = batch["input_ids"], batch["labels"]
    b, s, t = input_ids.shape
    device = input_ids.device
    pad_id = getattr(lm.config, "pad_token_id", None) or 0
    pb = pack_batch({k: batch[k].cpu() for k in ("input_ids", "attention_mask", "labels")}, mode=mode,
                    capacity=-1 if attention == "spans" else capacity, pad_id=pad_id)
    decoder = lm.get_decoder()
    ids, pos = pb.input_ids.to(device), pb.position_ids.to(device)
    if attention == "spans":
        _register_span_attention()
        cfgs = _configs(lm)
        saved = [c._attn_implementation_internal for c in cfgs]
        try:
            for c in cfgs:
                c._attn_implementation_internal = SPAN_ATTENTION
            hidden = decoder(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False,
                             tuna_spans=_span_args(pb, device)).last_hidden_state
        finally:
            for c, v in zip(cfgs, saved):
                c._attn_implementation_internal = v
    elif attention == "mask":
        impl = getattr(lm.config, "_attn_implementation", None) or "sdpa"
        dtype = lm.get_input_embeddings().weight.dtype
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        mask = attention_mask_4d(pb, attn_implementation=impl, dtype=dtype).to(device)
        hidden = decoder(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
    else:
        raise ValueError(f"unknown packed attention {attention!r} (spans | mask)")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    picked = chunked_response_logprobs(hidden[pb.pred_index.to(device)], lm.get_output_embeddings(), pb.target.to(device),
                                       softcap=_softcap(lm), chunk_tokens=chunk_tokens)
    out_index = pb.out_index.to(device)
    logps = torch.zeros(b * s * (t - 1), dtype=picked.dtype, device=device).index_copy(0, out_index, picked)
    token_mask = labels[..., 1:] != -100
    return logps.view(b, s, t - 1), token_mask


def layout_stats(batch: dict[str, torch.Tensor], *, mode: str = "padded", capacity: int | None = None) -> dict[str, int]:
    """Token counts of a batch under a layout: ``real`` (distinct tokens the model computes), ``slots`` (tensor
    positions incl. padding), ``rows`` and ``row_len``. ``padded`` = the released code's ``[B·N, T]`` layout."""
    attn = batch["attention_mask"]
    if mode == "padded":
        live = attn.flatten(0, 1).any(-1)
        return {"real": int(attn.sum()), "slots": int(live.sum()) * attn.shape[-1], "rows": int(live.sum()),
                "row_len": attn.shape[-1]}
    pb = pack_batch(batch, mode=mode, capacity=capacity)  # type: ignore[arg-type]
    return {"real": pb.num_tokens, "slots": pb.num_slots, "rows": pb.input_ids.shape[0], "row_len": pb.input_ids.shape[1]}
