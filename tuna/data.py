"""``RankedCandidatesDataModule``: the one data module of all three stages.

Each record becomes one prompt and S response *slots*: the ranked candidates best-first (ranking stages),
plus the gold response in an extra slot when the MLE target is ``gold``; in ``sft`` mode one slot holding
the gold response (or the top-ranked candidate).

Tokenisation (with ``datasets``, cached on disk) gives each record one prompt (its ids are shared by all its
slots) and each response its own ids, so the labels start exactly at the first response token. A response's ids
are those it gets when prompt + response are tokenised together (``data.response_tokens: in_context``): the
tokens the released code trained on, which matters for tokenizers that mark a word start (SentencePiece's
"▁" on a text of its own). Where the two merge across the seam (``:`` + ``-`` into ``:-``), the released code's
labels start inside the merged token and the response's first characters were never a label; there the
response is tokenised on its own (tests/test_fidelity_tokens.py shows both). The response gets the EOS token
appended, and the prompt the tokenizer's BOS unless its text already starts with it (as generation does).

Original-Alpaca regularisation (``data.regularizer``, docs/fidelity.md "data mix"): the released training
files mix the Alpaca examples back into both ranking stages. ``copies`` adds one row per gold response with the
gold as every one of the K candidates: the ranking term's hinge pairs of such a row are constants d·m (no
gradient) that still count in each per-distance mean, and its K copies count in the token-mean MLE term, exactly
as in the released loss. ``mle_only`` adds the gold as a single slot that only the MLE term sees;
``top_candidate`` prepends each record's own gold as its best candidate instead of adding rows.

Policies (documented in the README):

* **Different N:** records keep all their candidates (``num_candidates`` caps them at the top k); a batch
  pads to its largest N and the loss masks the missing slots, so a record with 3 candidates contributes its
  3 pairs-distances and nothing else. A record with one candidate contributes only to the MLE term.
* **Truncation:** no candidate is left without response tokens. If the prompt would leave fewer than
  ``min_response_tokens`` for the response, the prompt is cut from the left (``overlong: truncate``; the
  end of the prompt, where the instruction meets ``### Response:``, is kept) or the run stops with the
  record named (``overlong: error``). Responses are then cut to fit ``max_length``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from tuna.config import DataConfig
from tuna.errors import TunaError
from tuna.importers import read_gold_pairs
from tuna.prompts import render_prompt
from tuna.records import Candidate, Ranking, Record, read_records

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- tokenising


def adds_bos(prompt: str, tokenizer: Any) -> bool:
    """Whether tokenising ``prompt`` should add the tokenizer's special tokens: yes, unless the text already starts
    with the BOS token (chat templates write it). The released code tokenised its rendered prompts with the
    defaults, so its LLaMA sequences start with BOS (train_tuna.py L217-225); generation uses the same rule."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos))


def response_ids(prompt: str, prompt_ids: list[int], text: str, tokenizer: Any, *, in_context: bool) -> tuple[list[int], bool]:
    """``(ids of text, merged)``: with ``in_context``, the ids that follow ``prompt_ids`` in the tokenisation of
    ``prompt + text`` (``merged`` is True, and the text is tokenised on its own, when that tokenisation does not
    start with ``prompt_ids``: the two merge across the seam); else the text tokenised on its own."""
    if in_context:
        joint = tokenizer(prompt + text, add_special_tokens=adds_bos(prompt, tokenizer))["input_ids"]
        if joint[: len(prompt_ids)] == prompt_ids:
            return joint[len(prompt_ids) :], False
    return tokenizer(text, add_special_tokens=False)["input_ids"], in_context


def tokenize_record(
    rec: dict[str, Any],
    tokenizer: Any,
    cfg: DataConfig,
    *,
    mode: Literal["rank", "sft"],
    with_gold: bool,
) -> dict[str, Any]:
    """One record → ``prompt_ids`` and ``responses`` (token ids incl. EOS), ``n_rank``, ``gold_slot``, and per slot
    the ranker's ``scores`` and the reference model's ``ref_logps``/``ref_tokens`` (NaN / -1 where absent).

    A regulariser row (``rec["regularizer"] == "mle_only"``) has one slot, its gold: ranked (so the MLE term of
    any target but ``gold`` sees it) and never paired, or with ``with_gold`` the gold slot and no ranked slot."""
    prompt = render_prompt(
        rec["instruction"], rec.get("input") or "", template=cfg.template, tokenizer=tokenizer,
        system_prompt=cfg.system_prompt, prompt=rec.get("prompt"),
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=adds_bos(prompt, tokenizer))["input_ids"]
    eos = tokenizer.eos_token_id
    gold = rec.get("gold")
    gold_slot = -1
    texts: list[str]
    slots: list[dict[str, Any]]  # per slot, the candidate it holds ({}: a gold or SFT slot, no ranker score)
    if mode == "sft":
        texts = [gold] if cfg.sft_target == "gold" and gold is not None else [rec["candidates"][0]["text"]]
        slots = [{}]
        n_rank = 1
    elif rec.get("regularizer") == "mle_only":
        texts, slots = [gold], [{}]
        n_rank, gold_slot = (0, 0) if with_gold else (1, -1)
    else:
        cands = rec["candidates"][: cfg.num_candidates] if cfg.num_candidates else rec["candidates"]
        texts, slots = [c["text"] for c in cands], list(cands)
        if cfg.regularizer == "top_candidate" and gold is not None and not rec.get("regularizer"):
            texts, slots = [gold, *texts], [{}, *slots]
        n_rank = len(texts)
        if with_gold and gold is not None:
            texts.append(gold)
            slots.append({})
            gold_slot = n_rank
    responses, merged = [], 0
    for t in texts:
        ids, seam = response_ids(prompt, prompt_ids, t, tokenizer, in_context=cfg.response_tokens == "in_context")
        responses.append(ids + [eos])
        merged += seam
    scores = [_float_or_nan(c.get("score")) for c in slots]
    ref_logps = [_float_or_nan(c.get("ref_logprob")) for c in slots]
    ref_tokens = [int(c["ref_tokens"]) if c.get("ref_tokens") is not None else -1 for c in slots]

    room = cfg.max_length - cfg.min_response_tokens
    truncated = False
    if len(prompt_ids) > room:
        if cfg.overlong == "error":
            raise TunaError(
                f"record {rec['id']!r}: prompt has {len(prompt_ids)} tokens; with max_length={cfg.max_length} and "
                f"min_response_tokens={cfg.min_response_tokens} at most {room} fit (set data.overlong=truncate or raise max_length)",
                field="prompt" if rec.get("prompt") is not None else "instruction",
            )
        prompt_ids = prompt_ids[len(prompt_ids) - room :]
        truncated = True
    budget = cfg.max_length - len(prompt_ids)
    if any(len(r) > budget for r in responses):
        truncated = True
    responses = [r[:budget] for r in responses]
    if rec.get("regularizer"):
        # a regulariser row's candidates are one gold answer repeated: every pair term of the reference-based
        # objectives is a constant whatever the reference log-prob, so any shared value will do
        ref_logps, ref_tokens = [0.0] * len(responses), [len(r) for r in responses]
    return {
        "id": rec["id"],
        "prompt_ids": prompt_ids,
        "responses": responses,
        "n_rank": n_rank,
        "gold_slot": gold_slot,
        "truncated": truncated,
        "seam_merges": merged,
        "length": len(prompt_ids) + max(len(r) for r in responses),
        "scores": scores,
        "ref_logps": ref_logps,
        "ref_tokens": ref_tokens,
    }


def regularizer_records(records: list[Record], cfg: DataConfig, source: str = "<memory>") -> list[Record]:
    """The extra rows of ``data.regularizer`` (copies | mle_only) for the ranked ``records`` of one stage.

    Gold pairs come from ``data.regularizer_file`` or else from the records' own ``gold``; ``regularizer_ratio``
    takes that many rows per record from the start. ``copies`` rows repeat the gold as K candidates, K being the
    records' largest candidate count (the released files have one K for every row: train_tuna.py L254 asserts it)."""
    if cfg.regularizer not in ("copies", "mle_only"):
        return []
    if cfg.regularizer_file:
        pairs = read_gold_pairs(cfg.regularizer_file)
        where = cfg.regularizer_file
    else:
        pairs = [r for r in records if r.gold is not None]
        where = source
    if not pairs:
        raise TunaError(f"data.regularizer={cfg.regularizer} needs gold responses, and none of the {len(records)} records has "
                        "one (set data.regularizer_file to Alpaca data, or data.regularizer: none; files imported with "
                        "--fmt tuna-train already hold their regulariser rows)", path=where, field="gold")
    if cfg.regularizer_ratio is not None:
        pairs = pairs[: round(cfg.regularizer_ratio * len(records))]
    k = max(len(r.candidates[: cfg.num_candidates or None]) for r in records) if cfg.regularizer == "copies" else 1
    taken = {r.id for r in records}
    out = []
    for i, p in enumerate(pairs):
        rid = f"orig-alpaca-{p.id}"
        while rid in taken:
            rid += "'"
        taken.add(rid)
        out.append(Record(id=rid, instruction=p.instruction, input=p.input, prompt=p.prompt, gold=p.gold,
                          candidates=[Candidate(text=p.gold or "", score=0.0, source="orig_alpaca") for _ in range(k)],
                          ranking=Ranking(by="gold", method=f"regularizer:{cfg.regularizer}"),
                          provenance={"regularizer": cfg.regularizer, "from": str(where), "index": i}))
    return out


def _float_or_nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    return _fingerprint(type(tokenizer).__name__, len(vocab), sorted(vocab.items())[:: max(1, len(vocab) // 500)],
                        getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id, tokenizer.bos_token_id)


def tokenize_records(
    records: list[Record], tokenizer: Any, cfg: DataConfig, *, mode: Literal["rank", "sft"], with_gold: bool,
    source: str = "<memory>", regularizer: list[Record] | None = None,
):
    """Tokenise with ``datasets`` and cache the result on disk, keyed by records, tokenizer and settings.
    ``regularizer`` rows (from :func:`regularizer_records`) follow the records."""
    import datasets

    from tuna.models import cache_root

    datasets.disable_progress_bars()
    rows = [r.model_dump(include={"id", "instruction", "input", "candidates", "gold", "prompt"}) | {"regularizer": ""}
            for r in records]
    rows += [r.model_dump(include={"id", "instruction", "input", "candidates", "gold", "prompt"}) | {"regularizer": cfg.regularizer}
             for r in regularizer or []]
    for row in rows:  # what tokenize_record reads (and the cache key covers)
        row["candidates"] = [{"text": c["text"], "score": c["score"], "ref_logprob": c["ref_logprob"],
                              "ref_tokens": c["ref_tokens"]} for c in row["candidates"]]
    key = _fingerprint(rows, _tokenizer_fingerprint(tokenizer), asdict(cfg) | {"train_file": None, "val_file": None,
                       "batch_size": None, "shuffle": None, "limit": None}, mode, with_gold)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "datasets"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / f"tok-{key}.arrow"
    ds = datasets.Dataset.from_list(rows)

    def fn(rec: dict[str, Any]) -> dict[str, Any]:
        try:
            return tokenize_record(rec, tokenizer, cfg, mode=mode, with_gold=with_gold)
        except TunaError as e:
            from tuna.records import line_of_id

            raise TunaError(e.message, path=source, line=line_of_id(source, rec["id"]), field=e.field) from None

    out = ds.map(fn, remove_columns=ds.column_names, cache_file_name=str(cache_file), load_from_cache_file=True,
                 desc="tokenising", new_fingerprint=key)
    n_trunc = sum(out["truncated"])
    if n_trunc:
        log.warning("%d of %d records were truncated to max_length=%d", n_trunc, len(out), cfg.max_length)
    n_merged = sum(out["seam_merges"])
    if n_merged:
        log.info("%d responses merge with the end of their prompt when tokenised together; they were tokenised on "
                 "their own (the released code's labels would start inside the merged token)", n_merged)
    if regularizer:
        log.info("data.regularizer=%s: %d original-Alpaca rows mixed with %d records", cfg.regularizer, len(regularizer),
                 len(records))
    return out


# ----------------------------------------------------------------------------------------------- batching


def collate_padded(items: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """[B, S, T] right-padded layout: every slot holds prompt + response; prompt and padding labels are -100.

    ``rank_mask [B, S]`` marks ranked candidates, ``gold_mask [B, S]`` the gold slot; ``rank_scores [B, S]`` holds
    the ranker's scores (ties) and ``ref_logps [B, S]`` the reference model's summed log-probs (NaN: absent)."""
    b = len(items)
    s = max(len(it["responses"]) for it in items)
    t = max(len(it["prompt_ids"]) + len(r) for it in items for r in it["responses"])
    input_ids = torch.full((b, s, t), pad_id, dtype=torch.long)
    labels = torch.full((b, s, t), -100, dtype=torch.long)
    attn = torch.zeros((b, s, t), dtype=torch.long)
    rank_mask = torch.zeros((b, s), dtype=torch.bool)
    gold_mask = torch.zeros((b, s), dtype=torch.bool)
    rank_scores = torch.full((b, s), float("nan"), dtype=torch.float32)
    ref_logps = torch.full((b, s), float("nan"), dtype=torch.float32)
    real = 0
    for i, it in enumerate(items):
        p = it["prompt_ids"]
        for k, r in enumerate(it["responses"]):
            seq = p + r
            input_ids[i, k, : len(seq)] = torch.tensor(seq)
            labels[i, k, len(p) : len(seq)] = torch.tensor(r)
            attn[i, k, : len(seq)] = 1
            real += len(seq)
        rank_mask[i, : it["n_rank"]] = True
        if it.get("scores") is not None:
            rank_scores[i, : len(it["scores"])] = torch.tensor(it["scores"], dtype=torch.float32)
            ref_logps[i, : len(it["ref_logps"])] = torch.tensor(it["ref_logps"], dtype=torch.float32)
        if it["gold_slot"] >= 0:
            gold_mask[i, it["gold_slot"]] = True
    return {
        "ids": [it["id"] for it in items],
        "input_ids": input_ids,
        "attention_mask": attn,
        "labels": labels,
        "rank_mask": rank_mask,
        "gold_mask": gold_mask,
        "rank_scores": rank_scores,
        "ref_logps": ref_logps,
        "num_real_tokens": torch.tensor(real),
        "num_slot_tokens": torch.tensor(int(sum(len(it["responses"]) for it in items) * t)),
    }


def check_required_fields(records: list[Record], require: dict[str, str], path: str, num_candidates: int | None) -> None:
    """Every candidate the loss sees carries the fields in ``require``; else one line naming file, line and field."""
    from tuna.records import line_of_id

    for rec in records:
        for k, cand in enumerate(rec.candidates[: num_candidates or None]):
            for name, who in require.items():
                if getattr(cand, name) is None:
                    if name == "ref_logprob":
                        how = (f"make them once with `tuna reference --input {path} --model <the model training starts "
                               f"from> --out {_ref_path(path)}` (same data.template and data.max_length as training)")
                    else:
                        how = ("rank the candidates with a ranker that writes scores (tuna score, tuna judge), or give "
                               "loss.pro_temperature a fixed value")
                    raise TunaError(f"{who} needs {name} on every candidate: {how}", path=path,
                                    line=line_of_id(path, rec.id), field=f"candidates[{k}].{name}")


def _ref_path(path: str) -> str:
    p = Path(path)
    return str(p.with_name(p.name.removesuffix(".jsonl") + ".ref.jsonl"))


def check_reference_tokens(ds: Any, path: str) -> None:
    """The reference log-probs were scored on exactly the response tokens training scores (same template,
    tokenizer and truncation): their stored token counts must match."""
    from tuna.records import line_of_id

    for row in ds.select_columns(["id", "n_rank", "responses", "ref_tokens"]):
        for k in range(row["n_rank"]):
            want, have = len(row["responses"][k]), row["ref_tokens"][k]
            if have != want:
                msg = (f"the reference log-prob was scored on {have} response tokens, training scores {want}: it was made "
                       "with other data settings (template, max_length, tokenizer); rerun `tuna reference` with the training's"
                       if have >= 0 else "missing: the number of response tokens ref_logprob was scored on (`tuna reference` "
                       "writes it, so that training can check it scores the same tokens)")
                raise TunaError(msg, path=path, line=line_of_id(path, row["id"]), field=f"candidates[{k}].ref_tokens")


class EpochBatchSampler:
    """Deterministic batches per (seed, epoch): optional shuffling and length grouping, sharded over DDP ranks,
    and a one-shot ``skip`` so a run resumed mid-epoch continues with exactly the batches it had not seen."""

    def __init__(self, lengths: list[int], batch_size: int, *, shuffle: bool, length_grouped: bool, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size = lengths, batch_size
        self.shuffle, self.length_grouped, self.seed = shuffle, length_grouped, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained on)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def _all_batches(self) -> list[list[int]]:
        idx = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(idx)
        if self.length_grouped:
            group = self.batch_size * 16
            idx = [i for g in range(0, len(idx), group) for i in sorted(idx[g : g + group], key=lambda j: -self.lengths[j])]
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.shuffle and self.length_grouped:
            rng.shuffle(batches)
        per_rank = math.ceil(len(batches) / self.world_size)
        batches = batches + batches[: per_rank * self.world_size - len(batches)]  # equal count on every rank
        return batches[self.rank :: self.world_size]

    def __iter__(self):
        batches = self._all_batches()
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        yield from batches[skip:]

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.world_size)


class RankedCandidatesDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, tokenizer: Any, *, mode: Literal["rank", "sft"] = "rank", with_gold: bool = False,
                 seed: int = 0, require: dict[str, str] | None = None):
        """``require``: candidate fields every (used) candidate must carry → who needs them (for the error message),
        e.g. ``{"ref_logprob": "loss.objective=dpo"}``."""
        super().__init__()
        self.cfg, self.tokenizer, self.mode, self.with_gold, self.seed = cfg, tokenizer, mode, with_gold, seed
        self.require = dict(require or {})
        self.train_ds = self.val_ds = None
        self._resume: dict[str, int] | None = None
        self._train_sampler: EpochBatchSampler | None = None

    def _load(self, path: str, *, train: bool = True):
        records = read_records(path, kind="ranked" if self.mode == "rank" else "any")
        if self.cfg.limit:
            records = records[: self.cfg.limit]
        if self.cfg.skip_all_tied:
            kept = [r for r in records if r.ranking is None or len({c.score for c in r.candidates}) > 1]
            log.info("data.skip_all_tied: %d of %d ranked sets have a ranking (the rest tie throughout)", len(kept), len(records))
            if not kept:
                raise TunaError("every ranked set ties throughout: nothing to learn (data.skip_all_tied)", path=path, field="candidates")
            records = kept
        if self.mode == "sft":
            for r in records:
                if r.gold is None and r.ranking is None:
                    raise TunaError("SFT needs a gold response or a ranked set", path=path, field=f"record {r.id}: gold")
        if self.mode == "rank" and not any(len(r.candidates[: self.cfg.num_candidates or None]) >= 2 for r in records):
            raise TunaError("no record has 2 or more candidates: there is nothing to rank (the ranking loss would be 0)",
                            path=path, line=1, field="candidates")
        if self.with_gold:
            missing = [r.id for r in records if r.gold is None]
            if missing:
                raise TunaError(f"loss.mle_target=gold but {len(missing)} record(s) have no gold (first: {missing[0]})",
                                path=path, field="gold")
        if self.mode == "rank" and self.cfg.regularizer == "top_candidate" and not any(r.gold is not None for r in records):
            raise TunaError("data.regularizer=top_candidate needs records with a gold response", path=path, field="gold")
        if self.mode == "rank":
            check_required_fields(records, self.require, path, self.cfg.num_candidates)
        reg = regularizer_records(records, self.cfg, path) if train and self.mode == "rank" else []
        ds = tokenize_records(records, self.tokenizer, self.cfg, mode=self.mode, with_gold=self.with_gold, source=path,
                              regularizer=reg)
        if self.mode == "rank" and "ref_logprob" in self.require:
            check_reference_tokens(ds, path)
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is None:
            if not self.cfg.train_file:
                raise TunaError("no training data given", field="data.train_file")
            self.train_ds = self._load(self.cfg.train_file)
        if self.val_ds is None and self.cfg.val_file:
            self.val_ds = self._load(self.cfg.val_file, train=False)

    def _loader(self, ds, *, train: bool) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        sampler = EpochBatchSampler(
            list(ds["length"]), self.cfg.batch_size, shuffle=self.cfg.shuffle and train,
            length_grouped=self.cfg.length_grouped, seed=self.seed, rank=rank, world_size=world,
        )
        if train:
            self._train_sampler = sampler
            if self._resume is not None:
                sampler.resume_at(self._resume["epoch"], self._resume["batches_done"])
        pad = self.tokenizer.pad_token_id
        return DataLoader(ds.with_format(None), batch_sampler=sampler, collate_fn=lambda b: collate_padded(b, pad),
                          num_workers=self.cfg.num_workers)

    # Exact mid-epoch resume: Lightning stores this in every checkpoint and gives it back before the loaders
    # are built; the batch sampler then skips the batches of the current epoch that were already trained on.
    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or self._train_sampler is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state) if state else None

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, train=True)

    def val_dataloader(self):
        return self._loader(self.val_ds, train=False) if self.val_ds is not None else []
