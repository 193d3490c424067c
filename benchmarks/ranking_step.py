"""Ranking training step (forward + Tuna loss + backward + AdamW step) at N = 4 on SmolLM2-135M, CPU.

Baseline: the released code's step (``benchmarks/released_step.py``: padded [B·N, T] batch, HF CE + full-vocab
log_softmax + gather + per-distance MarginRankingLoss loop). Ours: ``tuna.forward.response_token_logprobs``
with ``chunked`` / ``packed`` / ``prefix_shared`` + ``tuna.losses.tuna_loss``. Same model, same precision, same
micro-batches of records, interleaved repeats (median reported).

Data: the 80 Vicuna questions with the first 4 of the 7 real answers each (alpaca-13b, bard, gpt35, llama-13b:
lengths ~50–470 tokens), tokenised with the Alpaca template at max_length 512 (the released code's), batched by
``EpochBatchSampler`` (length-grouped, as the data module does).

Tokens/s counts *real* tokens (prompt + response of every candidate, what the released code's batch holds
without padding); the padding each layout computes on top is reported separately.

Peak memory: torch's CPU allocator is invisible to tracemalloc, so each variant runs in a fresh subprocess on the
largest micro-batch: one warm-up step (gradients and the AdamW state come to exist), then the kernel's RSS
high-water mark is reset and one steady-state step measured. ``peak_rss_mb`` is the process peak in that step;
``step_peak_mb`` is that peak minus the RSS held before it (activations, vocabulary-sized tensors, transients:
what the layout decides; weights, gradients and optimizer state are the same for every layout).

    python benchmarks/ranking_step.py            # fp32, ~4 min on 2 cores
    python benchmarks/ranking_step.py --quick    # 1 batch, 1 repeat
    python benchmarks/ranking_step.py --bf16     # bf16 autocast for every variant
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from released_step import released_compute_loss  # noqa: E402

from tuna.data import DataConfig, EpochBatchSampler, collate_padded, tokenize_record  # noqa: E402
from tuna.forward import response_token_logprobs  # noqa: E402
from tuna.losses import LossConfig, mle_settings, tuna_loss  # noqa: E402
from tuna.packing import layout_stats  # noqa: E402

SHARED = Path(os.environ.get("TUNA_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "results" / "benchmarks" / "ranking_step.json"
VARIANTS = ["released", "chunked", "packed", "prefix_shared"]


def load_items(n_cand: int = 4, max_length: int = 512):
    from tuna.models import load_tokenizer, resolve
    from tuna.records import import_vicuna_answers

    tok = load_tokenizer(resolve("smollm2-135m-instruct"))
    recs = import_vicuna_answers(SHARED / "vicuna_qa/old_eval_answers.jsonl.gz", SHARED / "vicuna_qa/question.jsonl")
    cfg = DataConfig(max_length=max_length)
    items = []
    for r in recs:
        rec = r.model_dump()
        rec["candidates"] = rec["candidates"][:n_cand]
        items.append(tokenize_record(rec, tok, cfg, mode="rank", with_gold=False))
    return tok, items


def batches(items, batch_records: int, *, length_grouped: bool = True, seed: int = 0):
    sampler = EpochBatchSampler([it["length"] for it in items], batch_records, shuffle=True, length_grouped=length_grouped,
                                seed=seed)
    return [[items[i] for i in b] for b in sampler]


def padding_report(items, pad_id: int, batch_records: int) -> dict:
    """Padding share of one epoch under each layout, with and without length grouping (no model needed)."""
    rep = {}
    for grouped in (False, True):
        layouts = {"padded": ("padded", None), "packed": ("packed", -1), "prefix_shared": ("prefix_shared", -1),
                   "packed_rows_mask": ("packed", None), "prefix_shared_rows_mask": ("prefix_shared", None)}
        tot = {m: {"real": 0, "slots": 0} for m in layouts}
        for b in batches(items, batch_records, length_grouped=grouped):
            batch = collate_padded(b, pad_id)
            for m, (mode, cap) in layouts.items():
                st = layout_stats(batch, mode=mode, capacity=cap)
                tot[m]["real"] += st["real"]
                tot[m]["slots"] += st["slots"]
        rep["length_grouped" if grouped else "random_batches"] = {
            m: {"computed_tokens": v["slots"], "padding_share": round(1 - v["real"] / v["slots"], 4)} for m, v in tot.items()}
    return rep


def make_step(variant: str, model, opt, loss_cfg: LossConfig, bf16: bool):
    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if variant == "released":
                loss = released_compute_loss(model, batch, margin=loss_cfg.margin, mle_weight=mle_settings(loss_cfg)[0])
            else:
                logps, mask = response_token_logprobs(model, batch, mode=variant)
                loss = tuna_loss(logps, mask, batch["rank_mask"], batch["gold_mask"], loss_cfg).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def load_student():
    from tuna.models import load_model

    model = load_model("smollm2-135m-instruct")
    model.config._attn_implementation = "sdpa"
    model.train()
    return model


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _vm_hwm_mb() -> float | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux: ``5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_child(variant: str, batch_records: int, bf16: bool) -> None:
    """Fresh process, the longest micro-batch: a warm-up step (allocates gradients and the AdamW state, which no
    layout changes), then the peak RSS of one steady-state step (forward, loss, backward, AdamW) measured from a
    reset high-water mark. ``step_peak_mb`` = that peak minus the RSS held before the step: activations,
    vocabulary-sized tensors and transients, what the layout decides."""
    import gc

    torch.set_num_threads(2)
    tok, items = load_items()
    bs = batches(items, batch_records)
    batch = collate_padded(max(bs, key=lambda b: max(it["length"] for it in b)), tok.pad_token_id)
    model = load_student()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rss_model = rss_now_mb()
    step = make_step(variant, model, opt, LossConfig(), bf16)
    step(batch)  # warm-up
    first_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gc.collect()
    state = rss_now_mb()
    if not _reset_peak():  # no clear_refs: fall back to the first step's process peak
        print(json.dumps({"variant": variant, "rss_after_load_mb": round(rss_model), "state_rss_mb": round(state),
                          "peak_rss_mb": round(first_peak), "step_peak_mb": round(first_peak - rss_model),
                          "method": "ru_maxrss of the first step"}))
        return
    step(batch)
    peak = _vm_hwm_mb() or first_peak
    print(json.dumps({"variant": variant, "rss_after_load_mb": round(rss_model), "state_rss_mb": round(state),
                      "peak_rss_mb": round(peak), "step_peak_mb": round(peak - state),
                      "first_step_peak_rss_mb": round(first_peak), "method": "VmHWM of a steady-state step"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-records", type=int, default=1, help="records per micro-batch (each with its N=4 candidates)")
    ap.add_argument("--batches", type=int, default=2, help="micro-batches timed per repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for every variant")
    ap.add_argument("--quick", action="store_true", help="1 batch, 1 repeat, no memory subprocesses")
    ap.add_argument("--no-mem", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        mem_child(args.mem_child, args.batch_records, args.bf16)
        return
    if args.quick:
        args.batches, args.repeats, args.no_mem = 1, 1, True
    variants = args.variants.split(",")
    torch.set_num_threads(2)
    torch.manual_seed(0)

    tok, items = load_items()
    pad = padding_report(items, tok.pad_token_id, args.batch_records)
    all_b = batches(items, args.batch_records)
    # a spread of micro-batches: evenly spaced through the (shuffled, length-grouped) epoch
    picks = [all_b[i * len(all_b) // args.batches] for i in range(args.batches)]
    timed = [collate_padded(b, tok.pad_token_id) for b in picks]

    model = load_student()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    steps = {v: make_step(v, model, opt, LossConfig(), args.bf16) for v in variants}
    # warm-up (allocates the AdamW state). Each warm-up step updates the shared weights (lr 1e-6), so these first
    # losses drift slightly from variant to variant; exact equality is tested in tests/test_perf_equivalence.py.
    losses = {v: steps[v](timed[0]) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:  # interleaved: every repeat runs every variant on the same batches
            t0 = time.perf_counter()
            for batch in timed:
                steps[v](batch)
            times[v].append(time.perf_counter() - t0)

    real = sum(layout_stats(b)["real"] for b in timed)
    res: dict = {"config": {"model": "smollm2-135m-instruct", "N": 4, "batch_records": args.batch_records,
                            "micro_batches": args.batches, "repeats": args.repeats,
                            "precision": "bf16-autocast" if args.bf16 else "fp32", "threads": torch.get_num_threads(),
                            "data": "vicuna_qa old_eval_answers, first 4 answers/question, alpaca template, max_length 512"},
                 "padding_epoch": pad, "first_batch_loss": losses, "variants": {}}
    for v in variants:
        mode = {"released": "padded", "chunked": "padded"}.get(v, v)
        st = [layout_stats(b, mode=mode, capacity=-1) for b in timed]
        computed = sum(s["slots"] for s in st)
        distinct = sum(s["real"] for s in st)
        med = statistics.median(times[v])
        res["variants"][v] = {"median_s": round(med, 3), "all_s": [round(x, 3) for x in times[v]],
                              "real_tokens_per_s": round(real / med, 1), "computed_tokens_per_s": round(computed / med, 1),
                              "computed_tokens": computed, "padding_tokens": computed - distinct,
                              "padding_share": round(1 - distinct / computed, 4), "real_tokens": real}
    base = res["variants"].get("released")
    if not args.no_mem:
        for v in variants:
            cmd = [sys.executable, __file__, "--_mem-child", v, "--batch-records", str(args.batch_records)] + (["--bf16"] if args.bf16 else [])
            outp = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            res["variants"][v]["memory"] = json.loads(outp)

    print(f"ranking step, N=4, {args.batch_records} record(s)/micro-batch, {res['config']['precision']}, "
          f"{args.batches} micro-batches x {args.repeats} repeats (median), {real} real tokens/repeat")
    for v, r in res["variants"].items():
        line = (f"  {v:14s} {r['median_s']:7.2f} s  {r['real_tokens_per_s']:7.1f} real tok/s  "
                f"(computed {r['computed_tokens']} tok, padding {100 * r['padding_share']:.1f} %)")
        if base:
            line += f"  speed x{base['median_s'] / r['median_s']:.2f}"
        if "memory" in r:
            m = r["memory"]
            line += f"  peak RSS {m['peak_rss_mb']} MB (step {m['step_peak_mb']} MB)"
            if base and "memory" in base:
                line += f" x{m['peak_rss_mb'] / base['memory']['peak_rss_mb']:.2f} / step x{m['step_peak_mb'] / base['memory']['step_peak_mb']:.2f}"
        print(line)
    if base:
        res["ratios_vs_released"] = {v: {"speed": round(base["median_s"] / r["median_s"], 3),
                                         **({"peak_rss": round(r["memory"]["peak_rss_mb"] / base["memory"]["peak_rss_mb"], 3),
                                             "step_peak": round(r["memory"]["step_peak_mb"] / base["memory"]["step_peak_mb"], 3)}
                                            if "memory" in r and "memory" in base else {})}
                                     for v, r in res["variants"].items()}
    for k, v in pad.items():
        print(f"  epoch padding share ({k}): " + ", ".join(f"{m} {100 * x['padding_share']:.1f} %" for m, x in v.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
