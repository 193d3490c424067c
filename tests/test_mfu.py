"""The model-FLOPs formula of the benchmarks (``benchmarks/mfu.py``) against torch's own FLOP counter, and the
peak table's name matching."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from mfu import ModelShape, batch_work, peak_tflops, train_flops  # noqa: E402


@pytest.mark.parametrize("n", [37, 64])
def test_train_flops_equal_flop_counter(smol_tokenizer, n):
    """Forward + backward of the tiny Llama (GQA) on one n-token sequence with eager attention (which computes
    all n² pairs): the formula equals ``FlopCounterMode``'s count of every matmul exactly."""
    from torch.utils.flop_counter import FlopCounterMode

    from tuna.models import tiny_model

    model = tiny_model(smol_tokenizer, seed=0)
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 1000, (1, n))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.float().sum().backward()
    shape = ModelShape.of(model)
    assert shape.linear_params == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)  # 2 layers: q, o; k, v (GQA); MLP
    formula = train_flops(shape, tokens=n, head_positions=n, attn_pairs=n * n)
    assert counter.get_total_flops() == formula


def test_batch_work_counts_pairs():
    # one record: prompt 3, responses 2 and 4 (slots right-padded to T = 7), one empty slot
    attn = torch.tensor([[[1] * 5 + [0] * 2, [1] * 7, [0] * 7]])
    labels = torch.full((1, 3, 7), -100)
    labels[0, 0, 3:5] = 1
    labels[0, 1, 3:7] = 1
    padded = batch_work({"attention_mask": attn, "labels": labels}, "packed")
    shared = batch_work({"attention_mask": attn, "labels": labels}, "prefix_shared")
    released = batch_work({"attention_mask": attn, "labels": labels}, "released")
    assert padded == {"tokens": 12, "head_positions": 6, "attn_pairs": 15 + 28}
    assert shared == {"tokens": 9, "head_positions": 6, "attn_pairs": 6 + (2 * 3 + 3) + (4 * 3 + 10)}
    assert released["head_positions"] == 12


def test_peak_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("Tesla T4") is None
