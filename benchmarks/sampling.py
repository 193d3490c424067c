"""Candidate sampling: N samples per prompt on SmolLM2-135M, CPU, real Alpaca instructions.

Ours: ``tuna.feedback.generators.make_generator("hf", ...)`` (left padding, each prompt encoded once and expanded
with ``num_return_sequences=N``, ``batch_size`` prompts per ``generate`` call).
Baseline: one sequence at a time, ``model.generate`` per prompt per sample (batch 1, no padding).
A second reference point, one ``generate`` call per prompt with ``num_return_sequences=N``, is reported too.

Tokens/s counts generated tokens up to and including EOS (what the sampler keeps); a batched row that finished
early still costs compute until its batch ends, which is included in the time. Same precision (fp32 weights),
same sampling settings (temperature 1, top-p 1, max_new_tokens); the baseline times a subset of the prompts
(``--baseline-prompts``), tokens/s is the comparable figure.

    python benchmarks/sampling.py            # ~4 min on 2 cores
    python benchmarks/sampling.py --quick
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from env import env_info, env_tag  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

from tuna.paths import data_dir  # noqa: E402

SHARED = data_dir()
OUT = REPO / "results" / "benchmarks" / "sampling.json"


def alpaca_prompts(n: int, tokenizer) -> list[str]:
    from tuna.prompts import render_prompt

    out = []
    with gzip.open(SHARED / "alpaca/alpaca_data_reconstructed.jsonl.gz", "rt") as f:
        for line in f:
            o = json.loads(line)
            out.append(render_prompt(o["instruction"], o.get("input") or "", template="alpaca", tokenizer=tokenizer))
            if len(out) == n:
                break
    return out


def count_tokens(seqs, prompt_len: int, eos: set[int]) -> int:
    total = 0
    for row in seqs[:, prompt_len:].tolist():
        n = len(row)
        for t, tid in enumerate(row):
            if tid in eos:
                n = t + 1
                break
        total += n
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--baseline-prompts", type=int, default=3)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (x n sequences)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.baseline_prompts, args.max_new_tokens, args.batch_size = 4, 1, 16, 4
    import torch

    from tuna.feedback.generators import make_generator
    from tuna.generation import GenerationConfig
    from tuna.models import load_tokenizer

    torch.set_num_threads(2)
    tok = load_tokenizer("smollm2-135m-instruct", padding_side="left")
    gen = make_generator("hf", "smollm2-135m-instruct", batch_size=args.batch_size, dtype="float32", tokenizer=tok)
    model = gen.model
    prompts = alpaca_prompts(args.prompts, tok)
    params = GenerationConfig(n=args.n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens, seed=0)
    eos_ids = model.generation_config.eos_token_id
    eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens,
              pad_token_id=tok.pad_token_id)

    # warm-up
    gen.generate(prompts[:1], GenerationConfig(n=1, max_new_tokens=4))

    env = env_info("cpu", "fp32")
    tag = env_tag(env)
    res = {"env": env, "config": {k: v for k, v in vars(args).items() if k != "out"} | {"model": "smollm2-135m-instruct", "precision": "fp32", "threads": torch.get_num_threads()}}
    # baseline: one sequence per generate call
    torch.manual_seed(0)
    t0 = time.perf_counter()
    toks = 0
    with torch.inference_mode():
        for p in prompts[: args.baseline_prompts]:
            enc = tok([p], return_tensors="pt", add_special_tokens=False)
            for _ in range(args.n):
                out = model.generate(**enc, **kw)
                toks += count_tokens(out, enc["input_ids"].shape[1], eos)
    dt = time.perf_counter() - t0
    res["one_at_a_time"] = {"s": round(dt, 2), "tokens": toks, "tokens_per_s": round(toks / dt, 2)}

    # reference: one call per prompt, N returns
    torch.manual_seed(0)
    t0 = time.perf_counter()
    toks = 0
    with torch.inference_mode():
        for p in prompts[: args.baseline_prompts]:
            enc = tok([p], return_tensors="pt", add_special_tokens=False)
            out = model.generate(**enc, num_return_sequences=args.n, **kw)
            toks += count_tokens(out, enc["input_ids"].shape[1], eos)
    dt = time.perf_counter() - t0
    res["per_prompt_n_returns"] = {"s": round(dt, 2), "tokens": toks, "tokens_per_s": round(toks / dt, 2)}

    # ours: batched, N returns per prompt
    t0 = time.perf_counter()
    gens = gen.generate(prompts, params)
    dt = time.perf_counter() - t0
    toks = sum(g.num_tokens for gs in gens for g in gs)
    res["batched_generator"] = {"s": round(dt, 2), "tokens": toks, "tokens_per_s": round(toks / dt, 2),
                                "sequences": sum(len(gs) for gs in gens)}
    base = res["one_at_a_time"]["tokens_per_s"]
    res["speedup_vs_one_at_a_time"] = round(res["batched_generator"]["tokens_per_s"] / base, 2)
    res["speedup_vs_per_prompt_n_returns"] = round(res["batched_generator"]["tokens_per_s"] / res["per_prompt_n_returns"]["tokens_per_s"], 2)
    print(f"sampling N={args.n}, max_new_tokens={args.max_new_tokens}, fp32, {torch.get_num_threads()} threads {tag}")
    for k in ("one_at_a_time", "per_prompt_n_returns", "batched_generator"):
        r = res[k]
        print(f"  {k:22s} {r['tokens']:6d} tok in {r['s']:7.2f} s = {r['tokens_per_s']:7.2f} tok/s  {tag}")
    print(f"  speed-up vs one-at-a-time x{res['speedup_vs_one_at_a_time']}, vs per-prompt N returns x{res['speedup_vs_per_prompt_n_returns']}  {tag}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
