"""The tokens the student trains on are the tokens the released code trained on.

The released tokenisation is written out below from ``train_tuna.py`` (L217-262, the map function the training
script runs, and the collator L271-279), independently of tuna, and run on the released-schema fixtures. tuna's
side is what ``RankedCandidatesDataModule`` puts in a batch after ``tuna import``. Where tuna differs on purpose
(a response that merges with the prompt's last token when the two are tokenised together), the test pins the
difference down to the seam.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tuna.data import DataConfig, RankedCandidatesDataModule
from tuna.importers import import_tuna_davinci, import_tuna_gpt4_ranking, import_tuna_train
from tuna.models import ensure_pad_token
from tuna.records import write_records

RELEASED = Path(__file__).parent / "fixtures" / "released"
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- the released code


def released_tokenizer(tok):
    """The tokenizer as train_tuna.py L298-318 leaves it. The released run used LLaMA, which has no pad token, so
    the script added "[PAD]" (L305-310): a pad id no text produces. SmolLM2's pad is its EOS, which the released
    masking (L228: labels == pad -> -100) would also remove from every label; we reproduce the LLaMA situation."""
    ref = copy.deepcopy(tok)
    ref.padding_side = "right"
    ref.model_max_length = 512
    if ref.pad_token is None or ref.pad_token_id == ref.eos_token_id:
        ref.add_special_tokens({"pad_token": "[PAD]"})
    return ref


def released_tokenize(rows: list[dict], tok) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """tokenize_function + _tokenize (train_tuna.py L248-262, L211-246), one map batch."""
    instructions = [r["instruction"] for r in rows]
    outputs = [r["output"] for r in rows]
    scores = [r["score"] for r in rows]
    sources = [[f"{inst}{out}{tok.eos_token}" for out in output] for inst, output in zip(instructions, outputs)]
    ss_sorted = [sorted(zip(source, score), key=lambda x: x[1], reverse=True) for source, score in zip(sources, scores)]
    sources_sorted = [[s[0] for s in ss] for ss in ss_sorted]
    input_ids = [tok(s, return_tensors="pt", padding="longest", max_length=tok.model_max_length, truncation=True).input_ids
                 for s in sources_sorted]
    labels = copy.deepcopy(input_ids)
    labels = [lab.masked_fill_(lab == tok.pad_token_id, IGNORE_INDEX) for lab in labels]
    instructions_tokenized = tok(instructions, return_tensors="pt", padding="longest", max_length=tok.model_max_length,
                                 truncation=True).input_ids
    length = instructions_tokenized.ne(tok.pad_token_id).sum(dim=-1).tolist()
    for i, n in enumerate(length):
        labels[i][:, :n] = IGNORE_INDEX
    return input_ids, labels


def released_sequences(rows: list[dict], tok) -> list[list[tuple[list[int], list[int]]]]:
    """Per row, per candidate (best-first): (token ids without padding, labels without padding)."""
    ids, labels = released_tokenize(rows, tok)
    out = []
    for x, y in zip(ids, labels):
        seqs = []
        for xi, yi in zip(x, y):
            keep = xi.ne(tok.pad_token_id)  # the collator's attention mask (L278)
            seqs.append((xi[keep].tolist(), yi[keep].tolist()))
        out.append(seqs)
    return out


# ----------------------------------------------------------------------------------------------- tuna


def tuna_sequences(records, tok, tmp_path: Path, name: str, **data) -> dict[str, list[tuple[list[int], list[int]]]]:
    path = tmp_path / f"{name}.jsonl"
    write_records(path, records)
    cfg = DataConfig(train_file=str(path), batch_size=64, shuffle=False, length_grouped=False, max_length=512,
                     cache_dir=str(tmp_path / "cache"), **data)
    dm = RankedCandidatesDataModule(cfg, tok, mode="rank")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    out = {}
    for i, rid in enumerate(batch["ids"]):
        seqs = []
        for k in range(batch["input_ids"].shape[1]):
            n = int(batch["attention_mask"][i, k].sum())
            if n:
                seqs.append((batch["input_ids"][i, k, :n].tolist(), batch["labels"][i, k, :n].tolist()))
        out[rid] = seqs
    return out


def word_start_tokenizer():
    """A small tokenizer that marks word starts like LLaMA's SentencePiece ("▁" before every word, and before the
    first word of any text it is given) and adds a BOS, trained on the fixtures' text. It stands in for the LLaMA
    tokenizer the released run used (not available offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.dumps(json.loads(p.read_text())) for p in RELEASED.glob("*.json")] * 20
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                                      show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    ensure_pad_token(fast)  # as tuna.models.load_tokenizer does
    return fast


@pytest.fixture(scope="module", params=["smol", "gemma", "word_start"])
def tok(request, smol_tokenizer):
    """SmolLM2's byte-level BPE (no BOS; pad = EOS), Gemma-3's vocabulary (adds BOS) and a LLaMA-like word-start
    marking one (adds BOS; a response tokenised on its own starts with "▁")."""
    if request.param == "smol":
        return smol_tokenizer
    if request.param == "word_start":
        return word_start_tokenizer()
    from tuna.models import load_tokenizer

    return load_tokenizer("gemma3-270m")


def seam_merges(prompt: str, text: str, tok) -> bool:
    """Whether tokenising prompt + text changes the prompt's own tokens (the two merge across the seam)."""
    p = tok(prompt)["input_ids"]
    return tok(prompt + text)["input_ids"][: len(p)] != p


def test_imported_training_files_give_the_released_tokens(tok, smol_tokenizer, tmp_path):
    ref = released_tokenizer(tok)
    checked = merged = 0
    for name in ("train.davinci_003_w_prob.w_orig_alpaca.json", "train.gpt-4-ranking.w_orig_alpaca.json"):
        rows = json.loads((RELEASED / name).read_text())
        records = import_tuna_train(RELEASED / name)
        released = released_sequences(rows, ref)
        ours = tuna_sequences(records, tok, tmp_path, name)
        for rec, row, rel in zip(records, rows, released):
            mine = ours[rec.id]
            assert len(mine) == len(rel) == len(row["output"])
            for (ids, labels), (rids, rlabels), cand in zip(mine, rel, rec.candidates):
                if not seam_merges(rec.prompt, cand.text, tok):
                    assert ids == rids and labels == rlabels, (name, rec.id, cand.text)
                else:
                    # The one deliberate difference: the released labels start inside the token that merges the
                    # prompt's end with the response's start, so those characters were never a label. tuna keeps
                    # the prompt's tokens and tokenises such a response on its own: the sequences agree up to the
                    # seam and the response text agrees after it.
                    merged += 1
                    p = len(tok(rec.prompt)["input_ids"])
                    assert ids[: p - 1] == rids[: p - 1] and ids[p - 1] != rids[p - 1]
                    assert labels[:p] == [IGNORE_INDEX] * p and rlabels[:p] == [IGNORE_INDEX] * p
                    assert ids[p:] == tok(cand.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                    assert tok.decode(rids[p - 1 :]).endswith(tok.decode(ids[p:]).removeprefix(cand.text[:1]))
                checked += 1
    assert checked == 48  # 8 + 4 rows of 4 candidates
    if tok is smol_tokenizer:
        assert merged == 5  # the responses that start with "-": ":" and "-" merge into one token


def test_separate_response_tokens_differ_from_the_released_ones_where_a_tokenizer_marks_word_starts(tok, tmp_path):
    """data.response_tokens: separate tokenises each response on its own. A byte-level BPE gives the same tokens;
    a tokenizer that marks word starts puts "▁" on every response's first word, which the released code (prompt and
    response tokenised together, "Response:" directly followed by the text) never trained on."""
    records = import_tuna_train(RELEASED / "train.davinci_003_w_prob.w_orig_alpaca.json")
    in_context = tuna_sequences(records, tok, tmp_path, "a")
    separate = tuna_sequences(records, tok, tmp_path, "b", response_tokens="separate")
    pairs = [(a, b) for r in records for a, b in zip(in_context[r.id], separate[r.id])]
    differ = sum(a != b for a, b in pairs)
    assert len(pairs) == 32
    if isinstance(tok.backend_tokenizer.pre_tokenizer, type(None)) or "Metaspace" not in str(tok.backend_tokenizer.pre_tokenizer):
        assert differ == 0
    else:
        assert differ == 32  # every response's first token
        p = len(tok(records[0].prompt)["input_ids"])
        first_sep = tok.convert_ids_to_tokens(separate[records[0].id][0][0][p])
        first_ctx = tok.convert_ids_to_tokens(in_context[records[0].id][0][0][p])
        assert first_sep.startswith("▁") and not first_ctx.startswith("▁")


def test_released_source_files_give_the_training_files_tokens(tok, tmp_path):
    """Importing the released source data (the davinci file, gpt-4-ranking.json) and mixing the original Alpaca
    rows in with data.regularizer=copies gives the same rows, prompts, candidate order and tokens as the
    fixtures' training files (whose original-Alpaca rows have the inferred shape: the gold as every candidate)."""
    pairs = [
        (import_tuna_davinci(RELEASED / "davinci_003_w_prob.jsonl"), "train.davinci_003_w_prob.w_orig_alpaca.json"),
        (import_tuna_gpt4_ranking(RELEASED / "gpt-4-ranking.json", alpaca=RELEASED / "alpaca_data.json")[:2],
         "train.gpt-4-ranking.w_orig_alpaca.json"),
    ]
    checked = 0
    for records, train_name in pairs:
        mixed = tuna_sequences(records, tok, tmp_path, train_name + ".src", regularizer="copies")
        trained = tuna_sequences(import_tuna_train(RELEASED / train_name), tok, tmp_path, train_name)
        assert len(mixed) == len(trained) == 2 * len(records)  # one original-Alpaca row per ranking record
        ours = sorted(mixed.values())
        theirs = sorted(trained.values())
        assert ours == theirs
        checked += len(ours)
    assert checked == 12
