"""Ranking training step (forward + Tuna loss + backward + AdamW step) at N = 4, on CPU or CUDA.

Baseline: the released code's step (``benchmarks/released_step.py``: padded [B·N, T] batch, HF CE + full-vocab
log_softmax + gather + per-distance MarginRankingLoss loop). Ours: ``tuna.forward.response_token_logprobs`` /
``tuna.packing.packed_response_logprobs`` + ``tuna.losses.tuna_loss``. Same model, same precision, same
micro-batches of records, interleaved repeats (median reported).

Variants: ``released``, ``chunked``, ``packed``, ``prefix_shared`` (on CPU the span attention, the CPU path),
and on CUDA ``packed/flex``, ``prefix_shared/spans``, ``prefix_shared/flex`` (``mode/attention``; flex is what
``model.logprob_mode: auto`` runs on CUDA).

Models: ``smollm2-135m-instruct`` (the embedded default) and, for the GPU, ``llama-3.2-1b-random``: Llama-3.2-1B's
architecture (1.24 B parameters: 16 layers, d 2048, 32/8 heads, vocabulary 128,256, tied embeddings) with
random weights; the step's cost does not depend on the weights' values.

Data: the 80 Vicuna questions with the first 4 of the 7 real answers each (alpaca-13b, bard, gpt35, llama-13b:
lengths ~50–470 tokens), tokenised with the Alpaca template at max_length 512 (the released code's), batched by
``EpochBatchSampler`` (length-grouped, as the data module does).

Tokens/s counts *real* tokens (prompt + response of every candidate, what the released code's batch holds
without padding); ``computed`` counts what the layout computes, padding included. MFU = model FLOPs of the
layout's real work (``benchmarks/mfu.py``) / time / the device's dense bf16 peak (a table by device name;
``--peak-tflops`` overrides, and gives CPU runs an MFU).

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` over one steady-state step on the largest micro-batch
(after a warm-up step), and that peak minus what was allocated before the step (``step_peak_mb``). CPU: torch's
CPU allocator is invisible to tracemalloc, so each variant runs in a fresh subprocess: a warm-up step, then the
kernel's RSS high-water mark is reset and one steady-state step measured (``peak_rss_mb``; ``step_peak_mb`` is
that peak minus the RSS held before it).

    python benchmarks/ranking_step.py                 # CPU, fp32, ~4 min on 2 cores
    python benchmarks/ranking_step.py --quick         # 1 batch, 1 repeat
    python benchmarks/ranking_step.py --device cuda   # both models, bf16 autocast -> gpu_ranking_step.json
"""

from __future__ import annotations

import argparse
import gc
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
from env import env_info, env_tag  # noqa: E402
from mfu import ModelShape, batch_work, peak_tflops, train_flops  # noqa: E402
from released_step import released_compute_loss  # noqa: E402

from tuna.data import DataConfig, EpochBatchSampler, collate_padded, tokenize_record  # noqa: E402
from tuna.forward import response_token_logprobs  # noqa: E402
from tuna.losses import LossConfig, mle_settings, tuna_loss  # noqa: E402
from tuna.packing import layout_stats, packed_response_logprobs  # noqa: E402
from tuna.paths import data_dir  # noqa: E402

SHARED = data_dir()
OUT = REPO / "results" / "benchmarks"
VARIANTS = {"cpu": ["released", "chunked", "packed", "prefix_shared"],
            "cuda": ["released", "chunked", "packed/flex", "prefix_shared/spans", "prefix_shared/flex"]}
MODELS = {"cpu": ["smollm2-135m-instruct"], "cuda": ["smollm2-135m-instruct", "llama-3.2-1b-random"]}
LLAMA_3_2_1B = dict(  # meta-llama/Llama-3.2-1B config.json
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
)


def load_items(n_cand: int = 4, max_length: int = 512):
    from tuna.importers import import_vicuna_answers
    from tuna.models import load_tokenizer, resolve

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


def layout_of(variant: str) -> dict:
    """``layout_stats`` arguments of the layout a variant computes."""
    mode, _, attention = variant.partition("/")
    if mode in ("released", "chunked"):
        return {"mode": "padded"}
    return {"mode": mode, "capacity": -1, "multiple_of": 128 if attention == "flex" else 1}


def padding_report(items, pad_id: int, batch_records: int) -> dict:
    """Padding share of one epoch under each layout, with and without length grouping (no model needed)."""
    rep = {}
    layouts = {"padded": {"mode": "padded"}, "packed": {"mode": "packed", "capacity": -1},
               "prefix_shared": {"mode": "prefix_shared", "capacity": -1},
               "prefix_shared_flex": {"mode": "prefix_shared", "capacity": -1, "multiple_of": 128},
               "packed_rows_mask": {"mode": "packed"}, "prefix_shared_rows_mask": {"mode": "prefix_shared"}}
    for grouped in (False, True):
        tot = {m: {"real": 0, "slots": 0} for m in layouts}
        for b in batches(items, batch_records, length_grouped=grouped):
            batch = collate_padded(b, pad_id)
            for m, kw in layouts.items():
                st = layout_stats(batch, **kw)
                tot[m]["real"] += st["real"]
                tot[m]["slots"] += st["slots"]
        rep["length_grouped" if grouped else "random_batches"] = {
            m: {"computed_tokens": v["slots"], "padding_share": round(1 - v["real"] / v["slots"], 4)} for m, v in tot.items()}
    return rep


def make_step(variant: str, model, opt, loss_cfg: LossConfig, bf16: bool, device_type: str = "cpu"):
    mode, _, attention = variant.partition("/")

    def step(batch):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            if mode == "released":
                loss = released_compute_loss(model, batch, margin=loss_cfg.margin, mle_weight=mle_settings(loss_cfg)[0])
            else:
                if attention:
                    logps, mask = packed_response_logprobs(model, batch, mode=mode, attention=attention)  # type: ignore[arg-type]
                else:
                    logps, mask = response_token_logprobs(model, batch, mode=mode)  # type: ignore[arg-type]
                loss = tuna_loss(logps, mask, batch["rank_mask"], batch["gold_mask"], loss_cfg).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def load_student(name: str = "smollm2-135m-instruct", device: str = "cpu"):
    if name == "llama-3.2-1b-random":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**LLAMA_3_2_1B))
    else:
        from tuna.models import load_model

        model = load_model(name).to(device)
    model.config._attn_implementation = "sdpa"
    model.train()
    return model


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


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


def largest_batch(items, batch_records: int, pad_id: int):
    return collate_padded(max(batches(items, batch_records), key=lambda b: sum(it["length"] for it in b)), pad_id)


def mem_child(variant: str, model_name: str, batch_records: int, bf16: bool) -> None:
    """CPU, fresh process, the largest micro-batch: a warm-up step (allocates gradients and the AdamW state, which
    no layout changes), then the peak RSS of one steady-state step measured from a reset high-water mark."""
    torch.set_num_threads(2)
    tok, items = load_items()
    batch = largest_batch(items, batch_records, tok.pad_token_id)
    model = load_student(model_name)
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


def cuda_memory(step, batch) -> dict:
    """Peak allocated CUDA memory of one steady-state step (the caller ran a warm-up step on this batch)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(batch)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mb": round(peak / 2**20), "step_peak_mb": round((peak - before) / 2**20), "state_mb": round(before / 2**20),
            "method": "torch.cuda.max_memory_allocated of a steady-state step"}


def run_model(model_name: str, args, tok, items, env: dict, peak: float | None) -> dict:
    device, bf16 = args.device, args.precision == "bf16"
    variants = args.variants.split(",")
    pad = padding_report(items, tok.pad_token_id, args.batch_records)
    all_b = batches(items, args.batch_records)
    # a spread of micro-batches: evenly spaced through the (shuffled, length-grouped) epoch
    picks = [all_b[i * len(all_b) // args.batches] for i in range(args.batches)]
    timed_cpu = [collate_padded(b, tok.pad_token_id) for b in picks]
    timed = [to_device(b, device) for b in timed_cpu]

    model = load_student(model_name, device)
    shape = ModelShape.of(model)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    steps = {v: make_step(v, model, opt, LossConfig(), bf16, device) for v in variants}
    # warm-up: allocates the AdamW state; on CUDA every timed batch once (compiles flex, fills the allocator's
    # pools). Each warm-up step updates the shared weights (lr 1e-6), so these first losses drift slightly from
    # variant to variant; exact equality is tested in tests/test_perf_equivalence.py and tests/test_attention.py.
    losses, compile_s = {}, {}
    for v in variants:
        t0 = time.perf_counter()
        for b in timed if device == "cuda" else timed[:1]:
            losses[v] = steps[v](b)
        compile_s[v] = round(time.perf_counter() - t0, 1)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:  # interleaved: every repeat runs every variant on the same batches
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for batch in timed:
                steps[v](batch)
            if device == "cuda":
                torch.cuda.synchronize()
            times[v].append(time.perf_counter() - t0)

    real = sum(layout_stats(b)["real"] for b in timed_cpu)
    res: dict = {"env": env,
                 "config": {"model": model_name, "parameters": n_params, "N": 4, "batch_records": args.batch_records,
                            "micro_batches": args.batches, "repeats": args.repeats, "device": device,
                            "precision": "bf16-autocast" if bf16 else "fp32", "threads": torch.get_num_threads(),
                            "peak_tflops": peak,
                            "data": "vicuna_qa old_eval_answers, first 4 answers/question, alpaca template, max_length 512"},
                 "padding_epoch": pad, "first_batch_loss": losses, "warmup_s": compile_s, "variants": {}}
    for v in variants:
        st = [layout_stats(b, **layout_of(v)) for b in timed_cpu]
        computed = sum(s["slots"] for s in st)
        distinct = sum(s["real"] for s in st)
        work_mode = v.partition("/")[0]
        flops = sum(train_flops(shape, **batch_work(b, work_mode)) for b in timed_cpu)
        med = statistics.median(times[v])
        row = {"median_s": round(med, 4), "all_s": [round(x, 4) for x in times[v]],
               "real_tokens_per_s": round(real / med, 1), "computed_tokens_per_s": round(computed / med, 1),
               "computed_tokens": computed, "padding_tokens": computed - distinct,
               "padding_share": round(1 - distinct / computed, 4), "real_tokens": real,
               "model_tflops": round(flops / 1e12, 4), "model_tflops_per_s": round(flops / med / 1e12, 3)}
        if peak:
            row["mfu"] = round(flops / med / (peak * 1e12), 4)
        res["variants"][v] = row
    if not args.no_mem:
        if device == "cuda":
            longest = to_device(largest_batch(items, args.batch_records, tok.pad_token_id), device)
            for v in variants:
                steps[v](longest)  # warm-up on this batch's shapes
                res["variants"][v]["memory"] = cuda_memory(steps[v], longest)
        else:
            for v in variants:
                cmd = [sys.executable, __file__, "--_mem-child", v, "--models", model_name, "--batch-records",
                       str(args.batch_records), "--precision", args.precision]
                outp = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                res["variants"][v]["memory"] = json.loads(outp)
    del model, opt, steps
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    base = res["variants"].get("released")
    peak_key = "peak_mb" if device == "cuda" else "peak_rss_mb"
    tag = env_tag(env)
    print(f"ranking step, {model_name} ({n_params / 1e6:.0f} M parameters), N=4, {args.batch_records} record(s)/micro-batch, "
          f"{res['config']['precision']}, {args.batches} micro-batches x {args.repeats} repeats (median), {real} real "
          f"tokens/repeat {tag}")
    for v, r in res["variants"].items():
        line = (f"  {v:20s} {r['median_s']:8.3f} s  {r['real_tokens_per_s']:9.1f} real tok/s  "
                f"(computed {r['computed_tokens']} tok, padding {100 * r['padding_share']:.1f} %)")
        if base:
            line += f"  speed x{base['median_s'] / r['median_s']:.2f}"
        if "mfu" in r:
            line += f"  MFU {100 * r['mfu']:.1f} %"
        if "memory" in r:
            m = r["memory"]
            line += f"  peak {m[peak_key]} MB (step {m['step_peak_mb']} MB)"
            if base and "memory" in base:
                line += f" x{m[peak_key] / base['memory'][peak_key]:.2f} / step x{m['step_peak_mb'] / max(base['memory']['step_peak_mb'], 1):.2f}"
        print(line + f"  {tag}")
    if base:
        res["ratios_vs_released"] = {v: {"speed": round(base["median_s"] / r["median_s"], 3),
                                         **({"peak_memory": round(r["memory"][peak_key] / base["memory"][peak_key], 3),
                                             "step_peak": round(r["memory"]["step_peak_mb"] / max(base["memory"]["step_peak_mb"], 1), 3)}
                                            if "memory" in r and "memory" in base else {})}
                                     for v, r in res["variants"].items()}
    for k, v in pad.items():
        print(f"  epoch padding share ({k}): " + ", ".join(f"{m} {100 * x['padding_share']:.1f} %" for m, x in v.items())
              + f"  {tag}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--models", default=None, help="comma-separated (default: the 135M model on CPU, both on CUDA)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                    help="fp32, or bf16 autocast over fp32 weights (bf16-mixed); default fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--bf16", action="store_true", help="same as --precision bf16")
    ap.add_argument("--batch-records", type=int, default=None, help="records per micro-batch, each with its N=4 "
                    "candidates (default 1 on CPU, 8 on CUDA)")
    ap.add_argument("--batches", type=int, default=None, help="micro-batches timed per repeat (default 2 CPU, 4 CUDA)")
    ap.add_argument("--repeats", type=int, default=None, help="default 2 CPU, 3 CUDA")
    ap.add_argument("--variants", default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by GPU name)")
    ap.add_argument("--quick", action="store_true", help="1 batch, 1 repeat, no memory measurement")
    ap.add_argument("--no-mem", action="store_true")
    ap.add_argument("--out", default=None, help="default results/benchmarks/ranking_step.json (CPU), gpu_ranking_step.json (CUDA)")
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    args.precision = "bf16" if args.bf16 else args.precision or ("bf16" if cuda else "fp32")
    args.models = args.models or ",".join(MODELS[args.device])
    args.variants = args.variants or ",".join(VARIANTS[args.device])
    args.batch_records = args.batch_records or (8 if cuda else 1)
    args.batches = args.batches or (4 if cuda else 2)
    args.repeats = args.repeats or (3 if cuda else 2)
    if args.mem_child:
        mem_child(args.mem_child, args.models, args.batch_records, args.precision == "bf16")
        return
    if args.quick:
        args.batches, args.repeats, args.no_mem = 1, 1, True
    if not cuda:
        torch.set_num_threads(2)
    torch.manual_seed(0)
    env = env_info(args.device, "bf16-autocast" if args.precision == "bf16" else "fp32")
    peak = args.peak_tflops or (peak_tflops(env["gpu"]) if cuda else None)
    print(f"environment: {json.dumps(env)}; dense bf16 peak {peak} TFLOP/s")

    tok, items = load_items()
    runs = [run_model(name, args, tok, items, env, peak) for name in args.models.split(",")]
    out = Path(args.out or OUT / ("gpu_ranking_step.json" if cuda else "ranking_step.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(runs[0] if len(runs) == 1 else {"env": env, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
