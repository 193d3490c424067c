"""The original-Alpaca regulariser (``data.regularizer``): which rows reach which loss term.

The reference is the released ``TunaTrainer.compute_loss`` (custom.py L24-56), written out below independently of
tuna and applied to the same batch tensors. With ``copies`` every row has the same K, as the released training
files must (train_tuna.py L254 asserts it per map batch and the collator stacks [bs, K, L]), so tuna's batch has the
released layout and the two losses can be compared number for number.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tuna.config import DataConfig, LossConfig, ModelConfig, OptimConfig
from tuna.data import RankedCandidatesDataModule
from tuna.errors import TunaError
from tuna.importers import import_tuna_davinci, import_tuna_gpt4_ranking
from tuna.records import write_records
from tuna.stages.base import TunaModule

RELEASED = Path(__file__).parent / "fixtures" / "released"
MARGIN, MLE_WEIGHT = 0.1, 1.0


def released_compute_loss(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """custom.py L30-56, line by line (its attention mask: the batch's, as the released collator's ``ne(pad)`` with
    the separate [PAD] of the released LLaMA run). Returns (loss, mle, rank)."""
    bs, num_cand, seq_len = inputs["input_ids"].size()
    input_ids = inputs["input_ids"].view(bs * num_cand, seq_len)
    attention_mask = inputs["attention_mask"].view(bs * num_cand, seq_len)
    labels = inputs["labels"].clone()
    label_mask = labels.ne(-100)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels.view(bs * num_cand, seq_len),
                   return_dict=True)
    logits = output.logits.view(bs, num_cand, seq_len, -1)
    lprobs = torch.nn.functional.log_softmax(logits.float(), dim=-1)
    labels.masked_fill_(~label_mask, 0)
    lprobs = lprobs[:, :, :-1, :].gather(dim=-1, index=labels[:, :, 1:, None]).squeeze(-1)
    token_lprobs = (lprobs * label_mask[:, :, 1:].type_as(lprobs)).sum(dim=-1) / label_mask[:, :, 1:].sum(dim=-1).type_as(lprobs)
    loss = 0
    for i in range(1, num_cand):
        pos_scores = token_lprobs[:, :-i].contiguous().view(-1)
        neg_scores = token_lprobs[:, i:].contiguous().view(-1)
        ones = torch.ones_like(pos_scores)
        loss_fn = nn.MarginRankingLoss(MARGIN * i)
        loss += loss_fn(pos_scores, neg_scores, ones)
    return MLE_WEIGHT * output.loss + loss, output.loss, loss


def batch_of(records, tok, tmp_path: Path, name: str, *, with_gold: bool = False, **data) -> dict:
    path = tmp_path / f"{name}.jsonl"
    write_records(path, records)
    cfg = DataConfig(train_file=str(path), batch_size=64, shuffle=False, length_grouped=False, max_length=512,
                     cache_dir=str(tmp_path / "cache"), **data)
    dm = RankedCandidatesDataModule(cfg, tok, mode="rank", with_gold=with_gold)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def module(model, **loss) -> TunaModule:
    return TunaModule(ModelConfig(), LossConfig(margin=MARGIN, mle_weight=MLE_WEIGHT, **loss), OptimConfig(), model=model)


def grads(model, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=False)])


@pytest.fixture()
def davinci():
    return import_tuna_davinci(RELEASED / "davinci_003_w_prob.jsonl")


def test_copies_rows_enter_both_terms_as_in_the_released_loss(davinci, tiny_model, smol_tokenizer, tmp_path):
    batch = batch_of(davinci, smol_tokenizer, tmp_path, "copies", regularizer="copies")
    ids = batch["ids"]
    assert ids == ["davinci-0", "davinci-1", "davinci-2", "davinci-3"] + [f"orig-alpaca-davinci-{i}" for i in range(4)]
    assert batch["input_ids"].shape[:2] == (8, 4) and bool(batch["rank_mask"].all())
    for i in range(4, 8):  # each regulariser row: its gold four times, the very same tokens in every slot
        assert all(torch.equal(batch["input_ids"][i, 0], batch["input_ids"][i, k]) for k in range(1, 4))
        gold_ids = batch["labels"][i, 0][batch["labels"][i, 0] != -100].tolist()
        assert smol_tokenizer.decode(gold_ids[:-1]) == davinci[i - 4].gold

    out = module(tiny_model).compute(batch)
    ref, ref_mle, ref_rank = released_compute_loss(tiny_model, batch)
    torch.testing.assert_close(out.rank, ref_rank, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mle, ref_mle, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads(tiny_model, out.loss), grads(tiny_model, ref), rtol=1e-4, atol=1e-7)

    # The regulariser rows' hinge terms are the constants d·m: they add to each per-distance mean without a
    # gradient, but they are half the pairs at every distance, so the ranking gradient of the real pairs is halved.
    alone = module(tiny_model).compute(batch_of(davinci, smol_tokenizer, tmp_path, "none"))
    scores = out.scores.detach()
    assert torch.equal(scores[4:, 0:1].expand(-1, 4), scores[4:])  # identical copies, identical scores
    expect = sum((alone_sum_d(alone.scores.detach(), d) + 4 * (4 - d) * MARGIN * d) / (8 * (4 - d)) for d in range(1, 4))
    torch.testing.assert_close(out.rank.detach(), torch.tensor(expect), rtol=1e-5, atol=1e-6)
    # (the two batches pad to different lengths: float noise of ~1e-8; the gradients reach 0.5, mean |g| 2e-4)
    torch.testing.assert_close(grads(tiny_model, out.rank), 0.5 * grads(tiny_model, alone.rank), rtol=1e-4, atol=1e-7)

    # MLE: a token mean over the ranking candidates' tokens and four copies of each gold's tokens
    n_rank_tokens = int((batch["labels"][:4] != -100).sum()) - 4 * 4  # the loss's shifted labels: one fewer per slot
    n_reg_tokens = int((batch["labels"][4:] != -100).sum()) - 4 * 4
    assert n_reg_tokens == 4 * sum(len(smol_tokenizer(r.gold, add_special_tokens=False)["input_ids"]) for r in davinci)
    assert n_rank_tokens > 0


def alone_sum_d(scores: torch.Tensor, d: int) -> float:
    """The sum of the hinge terms at rank distance d (a plain loop over records and pairs)."""
    total = 0.0
    for row in scores.tolist():
        for i in range(len(row) - d):
            total += max(0.0, row[i + d] - row[i] + MARGIN * d)
    return total


def test_mle_only_rows_reach_the_mle_term_alone(davinci, tiny_model, smol_tokenizer, tmp_path):
    batch = batch_of(davinci, smol_tokenizer, tmp_path, "mle_only", regularizer="mle_only")
    assert batch["rank_mask"][4:].tolist() == [[True, False, False, False]] * 4  # one slot, never paired
    out = module(tiny_model).compute(batch)
    alone = module(tiny_model).compute(batch_of(davinci, smol_tokenizer, tmp_path, "none"))
    torch.testing.assert_close(out.rank, alone.rank, rtol=0, atol=0)  # same pairs, same denominators
    # the MLE term is the token mean over the ranking tokens and one copy of each gold (computed here by hand)
    from tuna.forward import response_token_logprobs

    logps, mask = response_token_logprobs(tiny_model, batch, mode="full")
    slots = batch["rank_mask"][..., None] & mask
    torch.testing.assert_close(out.mle, -(logps * slots).sum() / slots.sum(), rtol=1e-5, atol=1e-6)
    assert int(mask[4:].sum()) == sum(len(smol_tokenizer(r.gold, add_special_tokens=False)["input_ids"]) + 1 for r in davinci)

    # with mle_target=gold, the regulariser's gold is a gold slot (and still never ranked)
    gb = batch_of(davinci, smol_tokenizer, tmp_path, "mle_only_gold", regularizer="mle_only", with_gold=True)
    assert not gb["rank_mask"][4:].any() and gb["gold_mask"][4:].tolist() == [[True, False, False, False, False]] * 4
    assert gb["gold_mask"][:4, 4].all()  # the ranking records' own gold slots


def test_top_candidate_and_regularizer_sources(davinci, smol_tokenizer, tmp_path):
    batch = batch_of(davinci, smol_tokenizer, tmp_path, "top", regularizer="top_candidate")
    assert batch["input_ids"].shape[:2] == (4, 5) and bool(batch["rank_mask"].all())  # gold first, then the 4
    first = batch["labels"][0, 0][batch["labels"][0, 0] != -100].tolist()
    assert smol_tokenizer.decode(first[:-1]) == davinci[0].gold

    # a separate file of gold pairs, at half the records' count
    b = batch_of(davinci, smol_tokenizer, tmp_path, "file", regularizer="copies",
                 regularizer_file=str(RELEASED / "alpaca_data.json"), regularizer_ratio=0.5)
    assert b["ids"][4:] == ["orig-alpaca-alpaca-0", "orig-alpaca-alpaca-1"]

    # GPT-4 records get their gold from the Alpaca file; without gold the regulariser names the problem
    gpt4 = import_tuna_gpt4_ranking(RELEASED / "gpt-4-ranking.json", alpaca=RELEASED / "alpaca_data.json")
    assert [r.gold is not None for r in gpt4] == [True, True, True]
    bare = import_tuna_gpt4_ranking(RELEASED / "gpt-4-ranking.json")
    with pytest.raises(TunaError, match=r"bare.jsonl: field 'gold': data.regularizer=copies needs gold responses"):
        batch_of(bare, smol_tokenizer, tmp_path, "bare", regularizer="copies")
    with pytest.raises(ValueError, match="data.regularizer must be"):
        DataConfig(regularizer="mix")
