"""Padding-free layouts of a [B, S, T] candidate batch, and their forward (issues #7, #12).

Two layouts, both built *inside* the forward from the padded batch of ``collate_padded`` (the data module,
its caching and its resumable sampler stay untouched; the collation costs a few ms against a multi-second
step):

* ``packed``: every (record, candidate) sequence ``prompt + response`` is a segment; segments are packed
  first-fit-decreasing into rows of ``capacity`` tokens (default: the longest segment, so a row's attention
  span, hence the quadratic attention cost per token, is never longer than in the padded layout). Each token
  gets its own position id (restarting at 0 per segment).
* ``prefix_shared``: one segment per record: ``prompt + response_1 + … + response_N``; the prompt is computed
  once, each response attends to the prompt and to itself only, and its positions continue from the prompt
  length (so RoPE and sliding windows see exactly the positions of the padded layout).

Each token carries its segment id, branch id (0: shared; k + 1: response k) and position id; the attention mask
of every attention path is derived from those by the one mask definition, ``tuna.attention.ranking_mask_mod``.
Padding slots at row ends form segments of their own (they attend to themselves only, so no softmax row is
empty).

The log-probs of response tokens are then taken from the hidden states of their predecessor positions with
the chunked LM head (``tuna.logprobs.chunked_response_logprobs``) and scattered back to the ``[B, S, T-1]``
layout the loss expects, so ``tuna_loss`` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from tuna.logprobs import causal_lm, chunked_response_logprobs, final_logit_softcap

PackMode = Literal["packed", "prefix_shared"]
PackAttention = Literal["auto", "spans", "flex", "mask"]


def default_attention(device: torch.device | str) -> str:
    """``flex`` on CUDA (where torch has FlexAttention), ``spans`` elsewhere (FlexAttention has no CPU backward)."""
    import importlib.util

    if torch.device(device).type == "cuda" and importlib.util.find_spec("torch.nn.attention.flex_attention"):  # torch >= 2.5
        return "flex"
    return "spans"


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
               pad_id: int = 0, multiple_of: int = 1) -> PackedBatch:
    """The padded ``[B, S, T]`` batch of ``collate_padded`` → a :class:`PackedBatch`.

    ``capacity``: row length; None packs into rows as long as the longest segment (a segment longer than
    ``capacity`` gets a row of its own); −1 puts everything in one row (span and flex attention).
    ``multiple_of``: the row length is rounded up to a multiple of it (FlexAttention's 128-token blocks)."""
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
    row_len = -(-row_len // multiple_of) * multiple_of
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
                p = spans[0][2]
                if p:
                    row_spans[r].append((col, col + p, col, col))
                row_spans[r].extend((col + st, col + st + rl, col, col + p) for _, st, _, rl in spans if rl)
            else:
                row_spans[r].append((col, col + n, col, col))
            for slot, start, p, rl in spans:
                # response token m (0-based) sits at start + m and is scored at log-prob column p − 1 + m; it is
                # predicted by the hidden state of the token before it: the last prompt token for m = 0, else
                # response token m − 1 of the same branch. With an empty prompt, token 0 has no predecessor and
                # is not scored (as in the padded layout, whose targets start at position 1).
                m0 = 0 if p else 1
                if rl <= m0:
                    continue
                if m0 == 0:
                    pred.append(torch.tensor([base + (p - 1 if mode == "prefix_shared" else start - 1)]))
                pred.append(torch.arange(base + start, base + start + rl - 1))  # tokens m ≥ 1
                tgt.append(torch.tensor(toks[start + m0 : start + rl]))
                out.append(slot * (t - 1) + torch.arange(p - 1 + m0, p - 1 + rl))
            col += n

    def cat(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)

    return PackedBatch(ids, pos, group, branch, cat(pred), cat(tgt), cat(out), sum(seg_lens), row_spans)


def _configs(lm: Any) -> list[Any]:
    """Every config object the model's modules hold (a multimodal model has several): the attention
    implementation is switched on each."""
    seen: dict[int, Any] = {}
    for m in lm.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def _switch_in(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
    from tuna.attention import FLEX_ATTENTION, SPAN_ATTENTION

    impl = SPAN_ATTENTION if kwargs.get("tuna_spans") is not None else FLEX_ATTENTION if kwargs.get("tuna_flex") is not None else None
    if impl is not None:
        cfgs = _configs(module)
        module._tuna_saved = [(c, c._attn_implementation_internal) for c in cfgs]
        for c in cfgs:
            c._attn_implementation_internal = impl


def _switch_back(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
    for c, v in module.__dict__.pop("_tuna_saved", []):
        c._attn_implementation_internal = v


def _install_switch_hooks(lm: Any) -> None:
    """Gradient checkpointing replays each layer's forward in backward, after the forward below has switched the
    model's attention implementation back. Hooks on the modules each layer calls switch it for the calls that carry
    a plan (the attention module's), in the forward and in that replay alike."""
    if getattr(lm, "_tuna_switch_hooks", False):
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"{type(lm).__name__}: gradient checkpointing with packed layouts needs transformers' "
                         "GradientCheckpointingLayer layers; use model.logprob_mode chunked")
    for layer in layers:
        for child in layer.children():
            child.register_forward_pre_hook(_switch_in, with_kwargs=True)
            child.register_forward_hook(_switch_back, with_kwargs=True, always_call=True)
    lm._tuna_switch_hooks = True


def packed_response_logprobs(
    model: Any, batch: dict[str, torch.Tensor], *, mode: PackMode = "packed", attention: PackAttention = "auto",
    capacity: int | None = None, chunk_tokens: int = 2048, compile: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_logps, token_mask)`` [B, S, T-1], equal to ``response_token_logprobs(mode='full')`` but computed
    on a padding-free (and, for ``prefix_shared``, prompt-once) layout.

    ``attention``:

    * ``spans``: everything in one row; :func:`tuna.attention.span_attention` (one SDPA call per sequence span);
      the CPU path;
    * ``flex``: everything in one row padded to a multiple of 128; :func:`tuna.attention.flex_attention_forward`
      (block-sparse FlexAttention, compiled once on CUDA; on CPU eager and forward only, for tests);
    * ``mask``: rows of ``capacity`` tokens, the model's own sdpa/eager attention with dense 4-D masks (portable,
      but computes the masked blocks too);
    * ``auto``: ``flex`` on CUDA, ``spans`` elsewhere.

    ``spans`` and ``flex`` are switched in through transformers' ``AttentionInterface`` for this call only.
    ``compile``: run the compiled FlexAttention kernel (None: on CUDA)."""
    from tuna.attention import (
        FLEX_ATTENTION,
        FLEX_BLOCK,
        SPAN_ATTENTION,
        FlexPlan,
        SpanPlan,
        layer_windows,
        model_attention_mask,
        register_attention,
    )

    lm = causal_lm(model)
    input_ids, labels = batch["input_ids"], batch["labels"]
    b, s, t = input_ids.shape
    device = input_ids.device
    if attention == "auto":
        attention = default_attention(device)
    if attention == "flex" and device.type == "cpu" and torch.is_grad_enabled() and any(p.requires_grad for p in lm.parameters()):
        raise ValueError("FlexAttention has no backward on CPU: use attention 'spans' (the default there) for training")
    layer_windows(lm.config)  # rejects layer types the mask does not describe, before any work
    pad_id = getattr(lm.config, "pad_token_id", None) or 0
    cpu_batch = {k: batch[k].cpu() for k in ("input_ids", "attention_mask", "labels")}
    if attention == "spans":
        pb = pack_batch(cpu_batch, mode=mode, capacity=-1, pad_id=pad_id)
    elif attention == "flex":
        pb = pack_batch(cpu_batch, mode=mode, capacity=-1, pad_id=pad_id, multiple_of=FLEX_BLOCK)
    elif attention == "mask":
        pb = pack_batch(cpu_batch, mode=mode, capacity=capacity, pad_id=pad_id)
    else:
        raise ValueError(f"unknown packed attention {attention!r} (auto | spans | flex | mask)")
    decoder = lm.get_decoder()
    ids, pos = pb.input_ids.to(device), pb.position_ids.to(device)
    segment, branch = pb.group.to(device), pb.branch.to(device)
    if attention == "mask":
        impl = getattr(lm.config, "_attn_implementation", None) or "sdpa"
        dtype = lm.get_input_embeddings().weight.dtype
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        mask = model_attention_mask(lm.config, segment, branch, pos, attn_implementation=impl, dtype=dtype)
        hidden = decoder(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
    else:
        register_attention()
        if attention == "spans":
            plan: Any = SpanPlan(pb.spans[0], segment, branch, pos)
            impl, extra = SPAN_ATTENTION, {"tuna_spans": plan}
        else:
            plan = FlexPlan(segment, branch, pos, compiled=device.type == "cuda" if compile is None else compile)
            impl, extra = FLEX_ATTENTION, {"tuna_flex": plan}
        # transformers >= 5.x names it is_activation_checkpointing (the old name warns); 4.x has only the old name
        checkpointing = "is_activation_checkpointing" if hasattr(type(lm), "is_activation_checkpointing") else "is_gradient_checkpointing"
        if getattr(lm, checkpointing, False):
            _install_switch_hooks(lm)
        cfgs = _configs(lm)
        saved = [c._attn_implementation_internal for c in cfgs]
        try:
            for c in cfgs:
                c._attn_implementation_internal = impl
            hidden = decoder(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False, **extra).last_hidden_state
        finally:
            for c, v in zip(cfgs, saved):
                c._attn_implementation_internal = v
        if plan.calls == 0:
            raise ValueError(f"{type(lm).__name__} does not route attention through transformers' AttentionInterface, so "
                             f"the packed layouts cannot run on it: use model.logprob_mode chunked")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    picked = chunked_response_logprobs(hidden[pb.pred_index.to(device)], lm.get_output_embeddings(), pb.target.to(device),
                                       softcap=final_logit_softcap(lm), chunk_tokens=chunk_tokens)
    out_index = pb.out_index.to(device)
    logps = torch.zeros(b * s * (t - 1), dtype=picked.dtype, device=device).index_copy(0, out_index, picked)
    token_mask = labels[..., 1:] != -100
    return logps.view(b, s, t - 1), token_mask


def layout_stats(batch: dict[str, torch.Tensor], *, mode: str = "padded", capacity: int | None = None,
                 multiple_of: int = 1) -> dict[str, int]:
    """Token counts of a batch under a layout: ``real`` (distinct tokens the model computes), ``slots`` (tensor
    positions incl. padding), ``rows`` and ``row_len``. ``padded`` = the released code's ``[B·N, T]`` layout;
    ``capacity`` and ``multiple_of`` as in :func:`pack_batch` (−1 and 128 for the flex path)."""
    attn = batch["attention_mask"]
    if mode == "padded":
        live = attn.flatten(0, 1).any(-1)
        return {"real": int(attn.sum()), "slots": int(live.sum()) * attn.shape[-1], "rows": int(live.sum()),
                "row_len": attn.shape[-1]}
    pb = pack_batch(batch, mode=mode, capacity=capacity, multiple_of=multiple_of)  # type: ignore[arg-type]
    return {"real": pb.num_tokens, "slots": pb.num_slots, "rows": pb.input_ids.shape[0], "row_len": pb.input_ids.shape[1]}
