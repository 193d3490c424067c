"""Top operators of one ranking step (torch.profiler, self CPU time) for a variant of ``ranking_step.py``.

    python benchmarks/profile_step.py --variant released
    python benchmarks/profile_step.py --variant prefix_shared
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from ranking_step import batches, load_items, load_student, make_step  # noqa: E402

from tuna.data import collate_padded  # noqa: E402
from tuna.losses import LossConfig  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="prefix_shared")
    ap.add_argument("--batch-records", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok, items = load_items()
    bs = batches(items, args.batch_records)
    batch = collate_padded(bs[0], tok.pad_token_id)
    model = load_student()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    step = make_step(args.variant, model, opt, LossConfig(), args.bf16)
    step(batch)  # warm-up, AdamW state
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(batch)
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    rows = sorted(avg, key=lambda e: -e.self_cpu_time_total)[: args.top]
    out = [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3), "share": round(e.self_cpu_time_total / total, 4),
            "calls": e.count} for e in rows]
    from env import env_info, env_tag

    env = env_info("cpu", "bf16-autocast" if args.bf16 else "fp32")
    print(f"{args.variant}: total self CPU {total / 1e6:.2f} s  {env_tag(env)}")
    for r in out:
        print(f"  {r['op']:45s} {r['self_s']:7.3f} s  {100 * r['share']:5.1f} %  ({r['calls']} calls)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"profile_{args.variant}{'_bf16' if args.bf16 else ''}.json").write_text(
        json.dumps({"env": env, "variant": args.variant, "total_self_s": round(total / 1e6, 3), "top": out}, indent=2))


if __name__ == "__main__":
    main()
