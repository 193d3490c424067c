"""One mask definition (``tuna.attention.ranking_mask_mod``) and the three attention paths built on it (issue #12).

* the dense mask equals an independent per-pair reference written from the padded layout's semantics;
* every packed layout × attention path gives the per-token log-probs of the plain padded forward (fp32, 1e-5)
  on real tokenised candidates with ragged N, an empty response, padding and sliding windows: a tiny random
  Llama (GQA), a tiny random Gemma 3 (sliding and full layers, final-logit softcap) and a tiny random Gemma 2
  (attention-logit softcap through FlexAttention's ``score_mod``);
* FlexAttention has no backward on CPU, so flex is compared on forward outputs here; the span path (the CPU
  training path) is compared on loss and gradients too, with sliding windows and gradient checkpointing;
* compiled flex (CPU inductor) serves batches of different lengths with one compilation;
* the CUDA tests (skipped without a GPU) compare loss and gradients of flex with the padded path and fail on a
  recompile between steps.
"""

from __future__ import annotations

import pytest
import torch

from tuna.attention import dense_mask, layer_windows, ranking_mask_mod
from tuna.data import DataConfig, collate_padded, tokenize_record
from tuna.forward import resolve_logprob_mode, response_token_logprobs
from tuna.losses import LossConfig, tuna_loss
from tuna.models import set_activation_checkpointing
from tuna.packing import pack_batch, packed_response_logprobs

WINDOW = 16
"""Sliding window of the tiny Gemma configs: the test sequences run to ~110 tokens, so it cuts."""


@pytest.fixture(scope="module")
def items(shared_data, smol_tokenizer):
    """6 real Vicuna questions with 1–5 real answers each (ragged N), cut to different lengths (4–110 tokens),
    one answer emptied (a slot with a prompt and no response tokens)."""
    from tuna.importers import import_vicuna_answers

    recs = import_vicuna_answers(shared_data / "vicuna_qa/old_eval_answers.jsonl.gz", shared_data / "vicuna_qa/question.jsonl")
    cfg = DataConfig(max_length=128, min_response_tokens=4)
    words = [3, 40, 14, 28, 7, 22, 5, 34, 18]
    out = []
    for i, (r, n) in enumerate(zip(recs[:6], [4, 2, 5, 1, 3, 4])):
        rec = r.model_dump()
        rec["candidates"] = rec["candidates"][:n]
        for k, c in enumerate(rec["candidates"]):
            c["text"] = " ".join(c["text"].split(" ")[: words[(i + k) % len(words)]])
        out.append(tokenize_record(rec, smol_tokenizer, cfg, mode="rank", with_gold=False))
    out[2]["responses"][3] = []
    return out


@pytest.fixture(scope="module")
def batch(items, smol_tokenizer):
    b = collate_padded(items, smol_tokenizer.pad_token_id)
    assert len({int(n) for n in (b["attention_mask"].sum(-1) > 0).sum(-1)}) > 2  # ragged N
    assert ((b["attention_mask"].sum(-1) > 0) & ((b["labels"] != -100).sum(-1) == 0)).sum() == 1  # one empty response
    assert (b["attention_mask"] == 0).any()  # padding
    return b


def tiny_gemma3(vocab: int, pad_id: int, window: int = WINDOW, layer_types: tuple[str, ...] = ("sliding", "full", "sliding", "full")):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=len(layer_types),
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                           sliding_window=window, final_logit_softcapping=30.0, pad_token_id=pad_id,
                           layer_types=[f"{t}_attention" for t in layer_types])
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return Gemma3ForCausalLM(cfg)


def tiny_gemma2(vocab: int, pad_id: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                       attn_logit_softcapping=5.0, final_logit_softcapping=30.0, pad_token_id=pad_id,
                       layer_types=["sliding_attention", "full_attention"], attn_implementation="eager")
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():  # random init gives |scores| < 1, where a softcap does little: scale q and k up
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


@pytest.fixture(scope="module")
def models(smol_tokenizer):
    from tuna.models import tiny_model

    v, pad = len(smol_tokenizer), smol_tokenizer.pad_token_id
    return {"llama": tiny_model(smol_tokenizer, seed=0), "gemma3": tiny_gemma3(v, pad), "gemma2": tiny_gemma2(v, pad)}


# ------------------------------------------------------------------------------------------------ the mask


def reference_allowed(pb, window: int | None) -> torch.Tensor:
    """Per pair, from the padded layout's semantics (independent of ``ranking_mask_mod``'s formula): a token stands
    for the padded slots it appears in (a response token: its slot; a shared token: every slot of its segment); q
    may see kv iff both are in one segment, share a slot, and kv is at an earlier or equal position within the
    window. Padding (negative segment ids) sees only itself."""
    seg, br, pos = pb.group.tolist(), pb.branch.tolist(), pb.position_ids.tolist()
    rows, length = pb.group.shape
    out = torch.zeros((rows, 1, length, length), dtype=torch.bool)
    for r in range(rows):
        for q in range(length):
            for kv in range(length):
                if seg[r][q] < 0 or seg[r][kv] < 0:
                    out[r, 0, q, kv] = q == kv
                    continue
                shared_slot = br[r][q] == 0 or br[r][kv] == 0 or br[r][q] == br[r][kv]
                ok = seg[r][q] == seg[r][kv] and shared_slot and pos[r][kv] <= pos[r][q]
                if window is not None:
                    ok = ok and pos[r][q] - pos[r][kv] < window
                out[r, 0, q, kv] = ok
    return out


@pytest.mark.parametrize("mode", ["packed", "prefix_shared"])
@pytest.mark.parametrize("window", [None, 7])
def test_dense_mask_equals_per_pair_reference(batch, mode, window):
    small = {k: batch[k][:3] for k in ("input_ids", "attention_mask", "labels")}  # 3 records: keeps the loop short
    pb = pack_batch(small, mode=mode, capacity=None, multiple_of=16)
    rows, length = pb.group.shape
    assert (pb.group < 0).any()  # padding at row ends
    got = dense_mask(pb.group, pb.branch, pb.position_ids, window)
    ref = reference_allowed(pb, window)
    assert got.shape == ref.shape == (rows, 1, length, length)
    assert ref.numel() > 20_000  # pairs checked
    assert torch.equal(got, ref)


@pytest.mark.parametrize("mode", ["packed", "prefix_shared"])
@pytest.mark.parametrize("window", [None, 7, 10_000])
def test_span_masks_tile_the_dense_mask(batch, mode, window):
    """The span path computes exactly the dense mask's allowed pairs: each span's block (its mask, or causal where
    it has none) equals the dense mask there, and the dense mask allows nothing outside the spans' blocks."""
    from tuna.attention import SpanPlan

    pb = pack_batch({k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, mode=mode, capacity=-1)
    dense = dense_mask(pb.group, pb.branch, pb.position_ids, window)[0, 0]
    plan = SpanPlan(pb.spans[0], pb.group, pb.branch, pb.position_ids)
    covered = torch.zeros_like(dense)
    for (qs, qe, ps, pe), mask in zip(plan.spans, plan.masks(window)):
        kv = torch.cat([torch.arange(ps, pe), torch.arange(qs, qe)])
        if mask is None:
            mask = torch.ones((qe - qs, qe - qs), dtype=torch.bool).tril()
            assert pe == ps
        assert torch.equal(dense[qs:qe][:, kv], mask)
        covered[torch.arange(qs, qe)[:, None], kv[None, :]] = True
    assert len(plan.spans) >= 15 and not (dense & ~covered).any()


def test_mask_mod_rules(batch):
    """Spot checks of the definition on a prefix-shared record: a response sees its prompt and itself, never a
    sibling response; the window cuts on position ids (so a later response still sees its whole recent prompt)."""
    one = {k: batch[k][:1] for k in ("input_ids", "attention_mask", "labels")}
    pb = pack_batch(one, mode="prefix_shared", capacity=-1)
    seg, br, pos = pb.group, pb.branch, pb.position_ids
    full = dense_mask(seg, br, pos)[0, 0]
    p = int((br[0] == 0).sum())
    last = int(torch.nonzero(br[0] == int(br[0].max()))[0])  # first token of the last response
    assert full[last, :p].all() and not full[last, p:last].any() and full[last, last]
    win = dense_mask(seg, br, pos, 5)[0, 0]
    assert win[last].sum() == 5 and win[last, p - 4 : p].all()  # 4 prompt tokens + itself: positions p-4 .. p
    mod = ranking_mask_mod(seg, br, pos)
    assert bool(mod(0, 0, torch.tensor(last), torch.tensor(0))) and not bool(mod(0, 0, torch.tensor(0), torch.tensor(last)))


def test_layer_windows():
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig

    assert layer_windows(LlamaConfig()) == {None: None}
    assert layer_windows(MistralConfig(sliding_window=4096)) == {None: 4096}
    g = Gemma3TextConfig(sliding_window=512, num_hidden_layers=6)
    assert layer_windows(g) == {"full_attention": None, "sliding_attention": 512}
    g.layer_types = ["chunked_attention"] * 6
    with pytest.raises(ValueError, match="chunked_attention"):
        layer_windows(g)


# ------------------------------------------------------------------------------------------------ forward equality

CASES = [("llama", "sdpa"), ("llama", "eager"), ("gemma3", "sdpa"), ("gemma3", "eager"), ("gemma2", "eager")]
LAYOUTS = [(m, a) for m in ("packed", "prefix_shared") for a in ("spans", "mask", "flex")]


@pytest.mark.parametrize(("name", "impl"), CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_layouts_equal_padded_forward(models, batch, name, impl):
    """Per-token log-probs of every layout × attention path (6) equal the padded forward's (the model's own
    attention with its own masks, windows and softcaps), fp32, 1e-5."""
    model = models[name]
    model.config._attn_implementation = impl
    with torch.no_grad():
        ref, ref_mask = response_token_logprobs(model, batch, mode="full")
        checked = 0
        for mode, attention in LAYOUTS:
            lp, mask = packed_response_logprobs(model, batch, mode=mode, attention=attention)
            assert torch.equal(mask, ref_mask)
            torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0, msg=lambda m, mode=mode, a=attention: f"{mode}/{a}: {m}")
            checked += 1
    assert checked == 6 and ref_mask.sum() == 441
    assert model.config._attn_implementation == impl  # switched in for the call only


def test_sliding_window_matters_in_these_tests(smol_tokenizer, batch, monkeypatch):
    """Control: the window changes the padded forward's log-probs on this batch, and a span path that ignores it
    is caught, so the equalities above would fail if a path dropped the window."""
    from tuna.attention import SpanPlan

    v, pad = len(smol_tokenizer), smol_tokenizer.pad_token_id
    narrow, wide = tiny_gemma3(v, pad), tiny_gemma3(v, pad, window=4096)
    with torch.no_grad():
        a, _ = response_token_logprobs(narrow, batch, mode="full")
        b, _ = response_token_logprobs(wide, batch, mode="full")
        masks = SpanPlan.masks
        monkeypatch.setattr(SpanPlan, "masks", lambda self, window: masks(self, None))
        c, _ = packed_response_logprobs(narrow, batch, mode="prefix_shared", attention="spans")
    assert (a - b).abs().max() > 1e-2
    assert (a - c).abs().max() > 1e-2


def test_attention_softcap_matters_in_these_tests(smol_tokenizer, batch):
    """Control: Gemma 2's attention softcap (5.0 in the tiny config, scores scaled up) changes the log-probs, so the flex
    ``score_mod`` and the span path's softcap are exercised by the equalities above."""
    model = tiny_gemma2(len(smol_tokenizer), smol_tokenizer.pad_token_id)
    with torch.no_grad():
        a, _ = packed_response_logprobs(model, batch, mode="prefix_shared", attention="flex")
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        b, _ = packed_response_logprobs(model, batch, mode="prefix_shared", attention="flex")
    assert (a - b).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------ training (CPU: spans)


def _loss_and_grads(model, batch, mode):
    model.zero_grad(set_to_none=True)
    lp, mask = response_token_logprobs(model, batch, mode=mode)
    loss = tuna_loss(lp, mask, batch["rank_mask"], batch["gold_mask"], LossConfig()).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-checkpointing"])
def test_spans_train_equal_padded_gemma3(smol_tokenizer, batch, checkpointing):
    """Loss and every gradient of the span path equal the padded path's on the sliding-window Gemma 3, also when
    gradient checkpointing replays the layers in backward (after the attention implementation was switched back)."""
    model = tiny_gemma3(len(smol_tokenizer), smol_tokenizer.pad_token_id)
    model.config._attn_implementation = "sdpa"
    model.train()
    ref_loss, ref_g = _loss_and_grads(model, batch, "full")
    if checkpointing:
        set_activation_checkpointing(model, True)
    for mode in ("packed", "prefix_shared"):
        loss, g = _loss_and_grads(model, batch, mode)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
        assert g.keys() == ref_g.keys() and len(g) > 20
        for n in ref_g:
            torch.testing.assert_close(g[n], ref_g[n], atol=1e-5, rtol=1e-5, msg=lambda m, n=n, mode=mode: f"{mode} {n}: {m}")


def test_flex_on_cpu_refuses_training(models, batch):
    with pytest.raises(ValueError, match="no backward on CPU"):
        packed_response_logprobs(models["llama"], batch, mode="prefix_shared", attention="flex")


def test_auto_mode(models):
    llama = models["llama"]
    assert resolve_logprob_mode("auto", llama, "cpu") == "chunked"  # the CPU default stays the plain path
    assert resolve_logprob_mode("auto", llama, "cuda") == "prefix_shared"
    assert resolve_logprob_mode("chunked", llama, "cuda") == "chunked"

    class NoBackend(torch.nn.Module):
        _supports_attention_backend = False

    assert resolve_logprob_mode("auto", NoBackend(), "cuda") == "chunked"
    with pytest.raises(ValueError, match="unknown logprob mode"):
        resolve_logprob_mode("fast", llama, "cpu")


# ------------------------------------------------------------------------------------------------ compiled flex


@pytest.mark.slow
def test_compiled_flex_one_compilation_for_any_length(smol_tokenizer, batch):
    """Compiled FlexAttention (inductor's CPU kernel; forward only there) over three batches of different packed
    lengths: equal to the span path, and compiled once (a recompile raises).

    The model has a sliding window on every layer: torch 2.13's CPU flex template fails to build (C++ error
    ``cur_qSplitSize4 was not declared``) for the window-free mask under dynamic shapes, a CPU-inductor bug; CUDA
    runs the Triton template (tested by the CUDA tests below)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tuna.attention import compiled_flex_attention

    model = tiny_gemma3(len(smol_tokenizer), smol_tokenizer.pad_token_id, layer_types=("sliding", "sliding"))
    model.config._attn_implementation = "sdpa"
    parts = [{k: batch[k][i:j] for k in ("input_ids", "attention_mask", "labels")} for i, j in [(0, 2), (2, 6), (1, 4)]]
    lengths = set()
    torch._dynamo.reset()
    compiled_flex_attention.cache_clear()
    before = counters["stats"]["unique_graphs"]
    try:
        with torch.no_grad():
            for i, part in enumerate(parts):
                lp, _ = packed_response_logprobs(model, part, mode="prefix_shared", attention="flex", compile=True)
                ref, _ = packed_response_logprobs(model, part, mode="prefix_shared", attention="spans")
                torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
                lengths.add(pack_batch(part, mode="prefix_shared", capacity=-1, multiple_of=128).input_ids.shape[1])
                if i == 0:
                    torch._dynamo.config.error_on_recompile = True
    finally:
        torch._dynamo.config.error_on_recompile = False
    assert len(lengths) >= 2  # different row lengths reached the compiled kernel
    assert counters["stats"]["unique_graphs"] - before == 1


# ------------------------------------------------------------------------------------------------ CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("name", ["llama", "gemma3", "gemma2"])
def test_cuda_flex_trains_equal_padded(models, batch, name):
    """On CUDA: loss and gradients of packed/prefix_shared with compiled FlexAttention equal the padded path's
    (fp32; different kernels and summation orders: 1e-4)."""
    import copy

    model = copy.deepcopy(models[name]).cuda().train()
    cb = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    ref_loss, ref_g = _loss_and_grads(model, cb, "full")
    for mode in ("packed", "prefix_shared"):
        loss, g = _loss_and_grads(model, cb, mode)
        torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-4)
        assert g.keys() == ref_g.keys()
        for n in ref_g:
            torch.testing.assert_close(g[n], ref_g[n], atol=1e-4, rtol=1e-3, msg=lambda m, n=n, mode=mode: f"{mode} {n}: {m}")


@cuda
def test_cuda_flex_no_recompile_between_steps(models, batch):
    """Four bf16-autocast training steps on batches of different packed lengths: the first compiles flex (forward
    and backward), no later step recompiles (``error_on_recompile``), and the default mode on CUDA is flex."""
    import copy

    import torch._dynamo

    model = copy.deepcopy(models["gemma3"]).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    assert resolve_logprob_mode("auto", model, "cuda") == "prefix_shared"
    parts = [{k: v[i:j].cuda() for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 2} for i, j in [(0, 2), (2, 6), (1, 4), (0, 6)]]
    try:
        for i, part in enumerate(parts):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                lp, mask = response_token_logprobs(model, part, mode="auto")
                loss = tuna_loss(lp, mask, part["rank_mask"], part["gold_mask"], LossConfig()).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            assert torch.isfinite(loss)
            if i == 0:
                torch._dynamo.config.error_on_recompile = True
    finally:
        torch._dynamo.config.error_on_recompile = False
