"""Attention for the padding-free ranking layouts of ``tuna.packing``: one mask definition, three ways to apply it.

The mask (:func:`ranking_mask_mod`, in FlexAttention's ``mask_mod`` form) is built from per-token ids the packer
assigns: the segment (one sequence under ``packed``, one record under ``prefix_shared``), the branch (0 for
tokens every branch sees: the shared prompt, or every token of a plain sequence; k + 1 for response k) and the
position id::

    causal(q, kv) & same_segment(q, kv) & (kv is shared | same_branch(q, kv)) [& pos(q) - pos(kv) < window]

The window term is the sliding-window rule of transformers' ``masking_utils.sliding_window_overlay``
(``kv_idx > q_idx - sliding_window``), written on position ids so that a response placed after its record's
other responses still sees exactly the prompt tokens it sees in the padded layout.

Everything below derives from that one function:

* :func:`dense_mask`: ``[R, 1, L, L]`` for the model's own sdpa/eager attention
  (``torch.nn.attention.flex_attention.create_mask``), one per window size (:func:`model_attention_mask`);
* :class:`FlexPlan`: one ``BlockMask`` per window size, built once per step and shared by every layer, for
  :func:`flex_attention_forward` (CUDA; compiled once, the row length marked dynamic);
* :class:`SpanPlan`: per-span boolean masks for :func:`span_attention`, the CPU path (one SDPA call per
  sequence span: no padded, cross-sequence or cross-response block is computed).

The two attention functions are transformers ``AttentionInterface`` functions: the model computes q, k, v as
usual and calls them once per layer with its own ``scaling``, ``softcap`` (Gemma 2's attention logit softcap)
and ``sliding_window`` (Gemma 2/3, Mistral, Qwen 2/3 sliding layers); the plan travels in the forward's
``**kwargs``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

SPAN_ATTENTION = "tuna_spans"
FLEX_ATTENTION = "tuna_flex"
FLEX_BLOCK = 128
"""FlexAttention's default sparse block size; the flex row length is a multiple of it."""

MaskMod = Callable[[Any, Any, Any, Any], Any]


def ranking_mask_mod(segment: torch.Tensor, branch: torch.Tensor, position: torch.Tensor,
                     window: int | None = None) -> MaskMod:
    """The one mask definition: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` over ``[R, L]`` per-token ids (True =
    attend). Works on index tensors of any broadcastable shape and under FlexAttention's vmap/compile."""

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        allowed = (kv_idx <= q_idx) & (segment[b, q_idx] == segment[b, kv_idx])
        allowed = allowed & ((branch[b, kv_idx] == 0) | (branch[b, q_idx] == branch[b, kv_idx]))
        if window is not None:
            allowed = allowed & (position[b, q_idx] - position[b, kv_idx] < window)
        return allowed

    return mask_mod


def layer_windows(config: Any) -> dict[str | None, int | None]:
    """Sliding window per attention layer type: ``{layer_type: window or None}`` for configs with ``layer_types``
    and a sliding layer (Gemma 2/3, Qwen 2/3 with sliding layers), else ``{None: window}`` (Llama: no window;
    Mistral: ``config.sliding_window`` on every layer)."""
    cfg = getattr(config, "text_config", config)
    window = getattr(cfg, "sliding_window", None)
    types = list(getattr(cfg, "layer_types", None) or [])
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"layer types {sorted(unknown)} are not supported by the packed layouts "
                         "(model.logprob_mode chunked works for every model)")
    if not types:
        return {None: window}
    if "sliding_attention" not in types:
        return {None: None}
    return {t: (window if t == "sliding_attention" else None) for t in sorted(set(types))}


def dense_mask(segment: torch.Tensor, branch: torch.Tensor, position: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """``[R, 1, L, L]`` boolean mask (True = attend) of :func:`ranking_mask_mod`."""
    from torch.nn.attention.flex_attention import create_mask

    r, length = segment.shape
    return create_mask(ranking_mask_mod(segment, branch, position, window), r, 1, length, length, device=segment.device)


def model_attention_mask(config: Any, segment: torch.Tensor, branch: torch.Tensor, position: torch.Tensor, *,
                         attn_implementation: str, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The ``attention_mask`` argument for the model's own ``sdpa`` (boolean) or ``eager`` (additive 0 / dtype-min)
    attention: one 4-D mask, or for models with sliding layers a dict ``{layer_type: mask}`` (transformers models
    with ``layer_types`` take such a dict as their per-layer-type masks); one mask per window size."""
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"packed layouts with attention=mask need attn_implementation sdpa or eager, got {attn_implementation!r}")
    windows = layer_windows(config)
    by_window: dict[int | None, torch.Tensor] = {}
    for w in windows.values():
        if w not in by_window:
            allowed = dense_mask(segment, branch, position, w)
            if attn_implementation == "eager":
                allowed = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)
            by_window[w] = allowed
    if list(windows) == [None]:
        return by_window[windows[None]]
    return {t: by_window[w] for t, w in windows.items()}  # type: ignore[misc]


def _check_kwargs(dropout: float, kwargs: dict[str, Any], name: str) -> None:
    if dropout:
        raise ValueError(f"{name} attention does not implement attention dropout (set the model's attention_dropout to 0)")
    for k in ("s_aux", "position_bias"):
        if kwargs.get(k) is not None:
            raise ValueError(f"{name} attention does not implement {k} (model.logprob_mode chunked works for every model)")


# ------------------------------------------------------------------------------------------------ spans (CPU)


@dataclass
class SpanPlan:
    """The span attention's view of one packed row: spans ``(q_start, q_end, prefix_start, prefix_end)`` in row
    order, and their masks per window (derived from :func:`ranking_mask_mod`, memoised)."""

    spans: list[tuple[int, int, int, int]]
    segment: torch.Tensor
    branch: torch.Tensor
    position: torch.Tensor
    calls: int = 0
    """Attention calls served (one per layer): 0 after a forward means the model bypassed the interface."""
    _masks: dict[int | None, list[torch.Tensor | None]] = field(default_factory=dict)

    def masks(self, window: int | None) -> list[torch.Tensor | None]:
        """Per span, its ``[q, prefix + q]`` boolean mask, or None where the mask is plain causal (no prefix, no
        window cut): SDPA's ``is_causal`` kernel then runs without a mask."""
        if window not in self._masks:
            mod = ranking_mask_mod(self.segment, self.branch, self.position, window)
            device = self.segment.device
            out: list[torch.Tensor | None] = []
            for qs, qe, ps, pe in self.spans:
                if pe == ps and (window is None or qe - qs <= window):
                    out.append(None)  # a span is one segment and one branch: without a prefix or a window cut, causal
                    continue
                q_idx = torch.arange(qs, qe, device=device)
                kv_idx = torch.cat([torch.arange(ps, pe, device=device), q_idx])
                mask = mod(0, 0, q_idx[:, None], kv_idx[None, :])
                out.append(mask)
            self._masks[window] = out
        return self._masks[window]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *, scaling: float | None,
            softcap: float | None) -> torch.Tensor:
    if softcap is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling)
    # SDPA has no logit softcap: the eager formula of Gemma 2 (tanh cap before the mask, softmax in fp32)
    scores = q @ k.transpose(-1, -2) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def span_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                   scaling: float | None = None, dropout: float = 0.0, softcap: float | None = None,
                   sliding_window: int | None = None, tuna_spans: SpanPlan | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Variable-length attention for one packed row (a transformers ``AttentionInterface`` function).

    ``query [1, H, L, D]``, ``key/value [1, H_kv, L, D]``; each span's queries attend to the span's own earlier
    tokens and to its prefix, as :class:`SpanPlan` says. Only the unmasked blocks are computed."""
    if tuna_spans is None:
        raise ValueError(f"{SPAN_ATTENTION} attention needs a SpanPlan (it is switched in by tuna.packing only)")
    if query.shape[0] != 1:
        raise ValueError("span attention expects a single packed row")
    _check_kwargs(dropout, kwargs, "span")
    tuna_spans.calls += 1
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # GQA: the CPU flash/math kernels want equal heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    outs = []
    for (qs, qe, ps, pe), mask in zip(tuna_spans.spans, tuna_spans.masks(sliding_window)):
        k, v = key[:, :, qs:qe], value[:, :, qs:qe]
        if pe > ps:
            k = torch.cat([key[:, :, ps:pe], k], dim=2)
            v = torch.cat([value[:, :, ps:pe], v], dim=2)
        outs.append(_attend(query[:, :, qs:qe], k, v, mask, scaling=scaling, softcap=softcap))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


# ------------------------------------------------------------------------------------------------ flex (CUDA)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention() -> Callable:
    """``flex_attention`` compiled once per process with dynamic shapes (the row length changes every step and
    is marked dynamic, so a new length does not recompile)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


@functools.cache
def softcap_score_mod(softcap: float) -> Callable:
    """``score_mod`` for an attention logit softcap: ``softcap · tanh(score / softcap)`` (one function per value,
    so compiled code keyed on it is reused)."""

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return softcap * torch.tanh(score / softcap)

    return score_mod


def _mark_dynamic(t: torch.Tensor | None, dims: range) -> None:
    if t is not None:
        for d in dims:
            torch._dynamo.maybe_mark_dynamic(t, d)


@dataclass
class FlexPlan:
    """FlexAttention's view of packed rows ``[R, L]`` (L a multiple of 128): one ``BlockMask`` per window size,
    built on first use in the step and shared by every layer; ``compiled`` runs the compiled kernel (CUDA),
    else eager ``flex_attention`` (forward only on CPU)."""

    segment: torch.Tensor
    branch: torch.Tensor
    position: torch.Tensor
    compiled: bool = True
    calls: int = 0
    _block_masks: dict[int | None, Any] = field(default_factory=dict)

    def block_mask(self, window: int | None) -> Any:
        if window not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            r, length = self.segment.shape
            mod = ranking_mask_mod(self.segment, self.branch, self.position, window)
            bm = create_block_mask(mod, r, None, length, length, device=self.segment.device, BLOCK_SIZE=FLEX_BLOCK)
            if self.compiled:  # the row length changes every step: keep it symbolic in the compiled kernel
                for t in (self.segment, self.branch, self.position):
                    _mark_dynamic(t, range(1, 2))
                for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                             "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
                    t = getattr(bm, name, None)
                    _mark_dynamic(t, range(2, t.dim()) if t is not None else range(0))
            self._block_masks[window] = bm
        return self._block_masks[window]


def flex_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                           scaling: float | None = None, dropout: float = 0.0, softcap: float | None = None,
                           sliding_window: int | None = None, tuna_flex: FlexPlan | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """FlexAttention over packed rows (a transformers ``AttentionInterface`` function): the plan's block mask for
    this layer's window, GQA by ``enable_gqa`` (no K/V copies), the softcap as a ``score_mod``."""
    from torch.nn.attention.flex_attention import flex_attention

    if tuna_flex is None:
        raise ValueError(f"{FLEX_ATTENTION} attention needs a FlexPlan (it is switched in by tuna.packing only)")
    _check_kwargs(dropout, kwargs, "flex")
    tuna_flex.calls += 1
    kernel = flex_attention
    if tuna_flex.compiled:
        kernel = compiled_flex_attention()
        for t in (query, key, value):
            _mark_dynamic(t, range(2, 3))
    out = kernel(query, key, value, score_mod=softcap_score_mod(float(softcap)) if softcap else None,
                 block_mask=tuna_flex.block_mask(sliding_window), scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Register :func:`span_attention` and :func:`flex_attention_forward` with transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SPAN_ATTENTION, span_attention)
    AttentionInterface.register(FLEX_ATTENTION, flex_attention_forward)
