"""Model FLOPs of a ranking training step and MFU against the device's dense bf16 peak (for the benchmarks).

Model FLOPs count the work the model needs for the tokens a layout computes (padding excluded), forward and
backward (x3: the backward costs twice the forward):

* linear layers: 2 · (matmul parameters of the decoder layers) per token;
* the LM head: 2 · V · d per position it is applied to (every position for the released step, response positions
  only for the chunked head);
* attention: 4 · (query heads · head dim) per attended (query, key) pair and layer (QKᵀ and AV), counting the
  pairs the mask allows (causal: n(n+1)/2 per sequence; prefix sharing: the prompt once, each response against
  the prompt and itself).

Embeddings, norms, activations and the optimizer are left out (the usual convention, PaLM appendix B).
``tests/test_mfu.py`` checks the formula against ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

PEAK_BF16_TFLOPS = [
    # (pattern on the lower-cased device name, dense bf16 TFLOP/s, no sparsity; NVIDIA datasheets)
    (r"h100.*nvl", 835.0),
    (r"h100.*pcie", 756.0),
    (r"h200.*nvl", 835.0),
    (r"gh200", 989.0),
    (r"h100|h200|h800", 989.0),  # SXM (torch names an H100 SXM "NVIDIA H100 80GB HBM3")
    (r"b200", 2250.0),
    (r"a100|a800", 312.0),
    (r"l40s", 362.0),
    (r"\bl4\b", 121.0),
]


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name()``), None when not in the table."""
    name = device_name.lower()
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops
    return None


@dataclass
class ModelShape:
    linear_params: int
    """Matmul parameters of the decoder layers (q, k, v, o and the MLP), all layers."""
    vocab: int
    hidden: int
    layers: int
    attn_width: int
    """Query heads x head dim."""

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = lm.get_decoder()
        linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
        cfg = getattr(lm.config, "text_config", lm.config)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(linear, lm.get_output_embeddings().weight.shape[0], cfg.hidden_size, cfg.num_hidden_layers,
                   cfg.num_attention_heads * head_dim)


def train_flops(shape: ModelShape, *, tokens: int, head_positions: int, attn_pairs: int) -> float:
    """Forward + backward model FLOPs for ``tokens`` through the decoder, the LM head on ``head_positions`` and
    ``attn_pairs`` attended (query, key) pairs per layer."""
    forward = (2 * shape.linear_params * tokens + 2 * shape.vocab * shape.hidden * head_positions
               + 4 * shape.attn_width * attn_pairs * shape.layers)
    return 3.0 * forward


def batch_work(batch: dict[str, torch.Tensor], mode: str) -> dict[str, int]:
    """Tokens, LM-head positions and causal attention pairs a layout needs for a padded ``[B, S, T]`` batch
    (``mode``: released | chunked | packed | prefix_shared; padding excluded)."""
    attn, labels = batch["attention_mask"], batch["labels"]
    lens = attn.sum(-1).tolist()
    resp = (labels != -100).sum(-1).tolist()
    tokens = positions = pairs = 0
    for rec_lens, rec_resp in zip(lens, resp):
        live = [(n, r) for n, r in zip(rec_lens, rec_resp) if n > 0]
        if not live:
            continue
        if mode == "prefix_shared":
            p = live[0][0] - live[0][1]
            tokens += p + sum(r for _, r in live)
            pairs += p * (p + 1) // 2 + sum(r * p + r * (r + 1) // 2 for _, r in live)
        else:
            tokens += sum(n for n, _ in live)
            pairs += sum(n * (n + 1) // 2 for n, _ in live)
        # the released step applies the LM head to every position of its padded batch (padding included, but
        # only real positions are counted as model FLOPs); the chunked head to the response positions
        positions += sum(n for n, _ in live) if mode == "released" else sum(r for _, r in live)
    return {"tokens": tokens, "head_positions": positions, "attn_pairs": pairs}
