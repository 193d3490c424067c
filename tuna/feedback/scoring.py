"""Teacher scoring for probabilistic ranking: score = Σ log p / len**β, higher is better (β = 1: the released data's
``avg_token_prob``, "the average token log probability", per the released README; docs/fidelity.md, row "teacher").

* ``sampling``: the candidates' own ``token_logprobs`` (the teacher sampled them, as text-davinci-003 did).
* ``forced``: teacher-forced log-probs of any responses under a local HF model. Prompt and response are
  tokenised separately and concatenated (no boundary merge), the response gets EOS appended (as the
  training data does), and log-probs are computed only on response positions, in chunks (never a
  ``[B, T, V]`` log-softmax copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuna.errors import TunaError
from tuna.feedback.config import ScoringConfig
from tuna.prompts import TemplateName, prompt_has_special_tokens, render_prompt
from tuna.records import Ranking, Record


def rank_by_scores(rec: Record, sums: list[float], lengths: list[int], *, beta: float, model: str, source: str) -> Record:
    """Order candidates best-first by ``sum/len**beta`` (stable: ties keep their order)."""
    scores = [s / max(n, 1) ** beta for s, n in zip(sums, lengths)]
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise TunaError(f"candidate {bad[0]} has a non-finite log-likelihood", field=f"record {rec.id}")
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    cands = []
    for k in order:
        c = rec.candidates[k].model_copy()
        c.score = float(scores[k])
        cands.append(c)
    ranking = Ranking(by="teacher", model=model, method=f"logprob/len^{beta}",
                      details={"source": source, "beta": beta, "order": order,
                               "logprob": [float(sums[k]) for k in order], "length": [int(lengths[k]) for k in order]})
    return rec.model_copy(update={"candidates": cands, "ranking": ranking})


def score_sampling(rec: Record, *, beta: float = 1.0, model: str | None = None) -> Record:
    """Rank by the candidates' own ``token_logprobs``."""
    for i, c in enumerate(rec.candidates):
        if not c.token_logprobs:
            raise TunaError(f"candidate {i} has no token_logprobs (sample with logprobs, or use method: forced)",
                            field=f"record {rec.id}")
    sources = {c.source for c in rec.candidates if c.source}
    name = model or (sources.pop() if len(sources) == 1 else "sampler")
    return rank_by_scores(rec, [sum(c.token_logprobs or []) for c in rec.candidates],
                          [len(c.token_logprobs or []) for c in rec.candidates], beta=beta, model=name, source="sampling")


@dataclass
class ForcedScorer:
    """Teacher-forced response log-probs under a local causal LM, ``batch_size`` sequences per forward pass."""

    model: Any
    tokenizer: Any
    template: TemplateName = "alpaca"
    system_prompt: str | None = None
    batch_size: int = 8
    autocast_bf16: bool = False
    device: str = "cpu"
    max_length: int = 1024
    append_eos: bool = True
    chunk_tokens: int = 1024

    def _encode(self, rec: Record) -> tuple[list[int], list[list[int]]]:
        tok = self.tokenizer
        prompt = render_prompt(rec.instruction, rec.input, template=self.template, tokenizer=tok,
                               system_prompt=self.system_prompt, prompt=rec.prompt)
        add = not prompt_has_special_tokens(self.template) and rec.prompt is None
        p_ids = tok(prompt, add_special_tokens=add)["input_ids"]
        eos = [tok.eos_token_id] if self.append_eos else []
        return p_ids, [tok(c.text, add_special_tokens=False)["input_ids"] + eos for c in rec.candidates]

    def token_logprobs(self, records: list[Record]) -> list[list[list[float]]]:
        """Per record, per candidate: the response tokens' log-probs."""
        import torch

        from tuna.logprobs import causal_lm, chunked_response_logprobs, final_logit_softcap

        seqs: list[tuple[int, int, list[int], int]] = []  # (record, candidate, ids, prompt length)
        for r, rec in enumerate(records):
            p_ids, resps = self._encode(rec)
            for c, resp in enumerate(resps):
                ids = (p_ids + resp)[-self.max_length :]  # keep the response; cut the prompt's head if too long
                seqs.append((r, c, ids, max(len(ids) - len(resp), 1)))
        out: list[list[list[float]]] = [[[] for _ in rec.candidates] for rec in records]
        lm = causal_lm(self.model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][2]))  # similar lengths together: less padding
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast_bf16):
            for b in range(0, len(order), self.batch_size):
                batch = [seqs[i] for i in order[b : b + self.batch_size]]
                t = max(len(s[2]) for s in batch)
                ids = torch.full((len(batch), t), pad, dtype=torch.long)
                am = torch.zeros((len(batch), t), dtype=torch.long)
                mask = torch.zeros((len(batch), t - 1), dtype=torch.bool)
                for j, (_, _, s, plen) in enumerate(batch):
                    ids[j, : len(s)] = torch.tensor(s)
                    am[j, : len(s)] = 1
                    mask[j, plen - 1 : len(s) - 1] = True  # logits at t-1 predict response token t
                ids, am, mask = ids.to(self.device), am.to(self.device), mask.to(self.device)
                hidden = lm.get_decoder()(input_ids=ids, attention_mask=am).last_hidden_state[:, :-1]
                picked = chunked_response_logprobs(hidden[mask], lm.get_output_embeddings(), ids[:, 1:][mask],
                                                   softcap=final_logit_softcap(lm), chunk_tokens=self.chunk_tokens).float().cpu()
                counts = mask.sum(-1).tolist()
                off = 0
                for (r, c, _, _), k in zip(batch, counts):
                    out[r][c] = picked[off : off + k].tolist()
                    off += k
        return out

    def score(self, records: list[Record], *, beta: float = 1.0, model_name: str = "teacher") -> list[Record]:
        lps = self.token_logprobs(records)
        return [rank_by_scores(rec, [sum(x) for x in lp], [len(x) for x in lp], beta=beta, model=model_name, source="forced")
                for rec, lp in zip(records, lps)]


def score_candidates(records: list[Record], out: str, cfg: ScoringConfig, *, chunk_size: int = 16) -> str:
    """Rank each candidate set of ``records`` not yet in ``out`` by the teacher's ``sum(logp)/len**beta``
    (``tuna score``; the pipeline's teacher scoring)."""
    import time

    from tuna.feedback.sampling import chunks, set_threads_from_env
    from tuna.records import JsonlAppender

    if cfg.method not in ("sampling", "forced"):
        raise TunaError(f"unknown method {cfg.method!r} (sampling | forced)", field="method")
    t0 = time.monotonic()
    with JsonlAppender(out) as app:
        todo = [r for r in records if r.id not in app.done_ids]
        if cfg.method == "sampling":
            for r in todo:
                app.write(score_sampling(r, beta=cfg.beta, model=cfg.model))
        elif todo:
            if not cfg.model:
                raise TunaError("method forced needs a teacher model", field="model")
            set_threads_from_env()
            from tuna.models import load_model, load_tokenizer
            from tuna.precision import device_type, resolve_dtype

            device = device_type(cfg.device)
            tok = load_tokenizer(cfg.model)
            lm = load_model(cfg.model, dtype=resolve_dtype(cfg.dtype, device), tokenizer=tok).to(device).eval()
            scorer = ForcedScorer(lm, tok, template=cfg.template, system_prompt=cfg.system_prompt,  # type: ignore[arg-type]
                                  batch_size=cfg.batch_size, autocast_bf16=cfg.autocast_bf16, device=device,
                                  max_length=cfg.max_length)
            for chunk in chunks(todo, chunk_size):
                for r in scorer.score(chunk, beta=cfg.beta, model_name=cfg.model):
                    app.write(r)
    dt = time.monotonic() - t0
    print(f"scored {len(todo)} records ({len(records) - len(todo)} already done) by {cfg.method} in {dt:.1f} s -> {out}")
    return out
