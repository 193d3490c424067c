"""The fast log-prob paths of issue #7 (chunked, packed, prefix_shared) equal the plain ``full`` path:
per-token log-probs, the Tuna loss and every parameter gradient within 1e-5 in fp32, on real tokenised
candidates of different lengths and records with different N."""

from __future__ import annotations

import pytest
import torch

from tuna.attention import dense_mask
from tuna.data import DataConfig, collate_padded, tokenize_record
from tuna.forward import response_token_logprobs
from tuna.losses import LossConfig, tuna_loss
from tuna.packing import layout_stats, pack_batch, packed_response_logprobs

FAST_MODES = ["chunked", "packed", "prefix_shared", "packed/mask", "prefix_shared/mask"]
"""``x/mask``: the packed layout in rows with the model's own sdpa/eager attention and a 4-D block mask instead
of the (default) span attention."""


@pytest.fixture(scope="module")
def vicuna_items(shared_data, smol_tokenizer):
    """6 real Vicuna questions with 1–5 real answers each (different N), the answers cut after different numbers
    of words so the lengths differ within a record (a few to ~60 tokens; kept short for CI)."""
    from tuna.importers import import_vicuna_answers

    recs = import_vicuna_answers(shared_data / "vicuna_qa/old_eval_answers.jsonl.gz", shared_data / "vicuna_qa/question.jsonl")
    cfg = DataConfig(max_length=128, min_response_tokens=4)
    words = [3, 40, 14, 28, 7, 22, 5, 34, 18]
    items = []
    for i, (r, n) in enumerate(zip(recs[:6], [4, 2, 5, 1, 3, 4])):
        rec = r.model_dump()
        rec["candidates"] = rec["candidates"][:n]
        for k, c in enumerate(rec["candidates"]):
            c["text"] = " ".join(c["text"].split(" ")[: words[(i + k) % len(words)]])
        items.append(tokenize_record(rec, smol_tokenizer, cfg, mode="rank", with_gold=False))
    return items


def _grads(model, batch, mode, loss_cfg):
    model.zero_grad(set_to_none=True)
    if mode.endswith("/mask"):
        logps, mask = packed_response_logprobs(model, batch, mode=mode.split("/")[0], attention="mask")
    else:
        logps, mask = response_token_logprobs(model, batch, mode=mode)
    out = tuna_loss(logps, mask, batch["rank_mask"], batch.get("gold_mask"), loss_cfg)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), mask, out.loss.detach(), grads


def _check_equal(model, batch, loss_cfg, modes=FAST_MODES, atol=1e-5, rtol=0.0):
    ref_lp, ref_mask, ref_loss, ref_g = _grads(model, batch, "full", loss_cfg)
    assert ref_mask.any()
    for mode in modes:
        lp, mask, loss, g = _grads(model, batch, mode, loss_cfg)
        assert torch.equal(mask, ref_mask), mode
        torch.testing.assert_close(lp, ref_lp, atol=atol, rtol=rtol, msg=lambda m, mode=mode: f"{mode}: logps {m}")
        torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol, msg=lambda m, mode=mode: f"{mode}: loss {m}")
        assert g.keys() == ref_g.keys(), mode
        for name in ref_g:
            torch.testing.assert_close(g[name], ref_g[name], atol=atol, rtol=rtol,
                                       msg=lambda m, mode=mode, name=name: f"{mode}: grad {name} {m}")


@pytest.mark.parametrize(("attn", "loss_cfg"), [
    ("sdpa", LossConfig()), ("eager", LossConfig()), ("sdpa", LossConfig(pair_reduction="all_pairs_sum", mle_target="best"))],
    ids=["sdpa-released", "eager-released", "sdpa-paper"])
def test_fast_modes_equal_full_tiny(smol_tokenizer, vicuna_items, attn, loss_cfg):
    from tuna.models import tiny_model

    model = tiny_model(smol_tokenizer, seed=0)
    model.config._attn_implementation = attn
    batch = collate_padded(vicuna_items, smol_tokenizer.pad_token_id)
    assert len({int(n) for n in batch["rank_mask"].sum(-1)}) > 2  # different N in one batch
    _check_equal(model, batch, loss_cfg)


def test_fast_modes_equal_full_smollm2_2_layers(smol_dir, smol_tokenizer, vicuna_items):
    """The real SmolLM2-135M weights (GQA 9/3 heads, RoPE θ 1e5, tied embeddings) truncated to 2 layers."""
    from tuna.models import load_model

    model = load_model(smol_dir)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    model.config._attn_implementation = "sdpa"
    batch = collate_padded(vicuna_items[:3], smol_tokenizer.pad_token_id)
    # real weights give log-probs down to about -20 and gradients up to ~2 (layer norms), where fp32 summation order moves the
    # last digits: |Δ| ≤ 1e-5 + 1e-5·|x| there (the plain chunked path needs the same allowance)
    _check_equal(model, batch, LossConfig(), rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # the span attention is switched in for the call only


def test_pack_layout_and_mask(smol_tokenizer, vicuna_items):
    batch = collate_padded(vicuna_items, smol_tokenizer.pad_token_id)
    padded = layout_stats(batch)
    packed = layout_stats(batch, mode="packed")
    shared = layout_stats(batch, mode="prefix_shared")
    assert packed["real"] == padded["real"]  # same tokens, less padding
    assert packed["slots"] < padded["slots"]
    assert shared["real"] < packed["real"]  # prompt counted once per record
    pb = pack_batch(batch, mode="prefix_shared")
    m = dense_mask(pb.group, pb.branch, pb.position_ids)[:, 0]
    assert m.diagonal(dim1=-2, dim2=-1).all()  # every query (padding included) sees at least itself
    assert not m.triu(1).any()  # causal
    # a response token never sees another response of its record
    br = pb.branch
    cross = m & (br[:, :, None] > 0) & (br[:, None, :] > 0) & (br[:, :, None] != br[:, None, :])
    assert not cross.any()


def test_prefix_shared_rejects_different_prompts(smol_tokenizer, vicuna_items):
    batch = collate_padded(vicuna_items[:1], smol_tokenizer.pad_token_id)
    batch["input_ids"][0, 1, 0] += 1
    with pytest.raises(ValueError, match="one prompt per record"):
        pack_batch(batch, mode="prefix_shared")


@pytest.mark.parametrize("mode", ["packed", "prefix_shared"])
def test_training_module_uses_logprob_mode(smol_tokenizer, vicuna_items, mode, monkeypatch):
    """``ModelConfig.logprob_mode`` reaches ``TunaModule.compute`` (what training runs call): the batch is packed in
    that mode (the chunked path packs nothing), and the loss is the chunked path's."""
    from tuna import packing
    from tuna.config import ModelConfig, OptimConfig
    from tuna.models import tiny_model
    from tuna.stages.base import TunaModule

    packed_modes = []
    real_pack = packing.pack_batch
    monkeypatch.setattr(packing, "pack_batch", lambda *a, **kw: packed_modes.append(kw["mode"]) or real_pack(*a, **kw))
    model = tiny_model(smol_tokenizer, seed=0)
    batch = collate_padded(vicuna_items[:3], smol_tokenizer.pad_token_id)
    ref = TunaModule(ModelConfig(logprob_mode="chunked"), LossConfig(), OptimConfig(), model=model).compute(batch)
    assert packed_modes == []
    out = TunaModule(ModelConfig(logprob_mode=mode), LossConfig(), OptimConfig(), model=model).compute(batch)
    assert packed_modes == [mode]
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-5, rtol=0)
