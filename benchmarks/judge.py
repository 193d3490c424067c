"""The embedded default's judge and teacher: what they cost on CPU and how well they rank.

Data: real Alpaca instructions (offset 2000), each with 4 candidates whose order a person can check at a glance:
its own gold response, the gold response of another instruction (off topic), a refusal ("I don't know."), and
the gold cut to its first quarter. Candidate order is shuffled per record (seeded), so a judge that favours a
position gains nothing. Hand-checked expectations: gold above the off-topic answer and above the refusal.

* Judge: SmolLM2-135M-Instruct behind a real llama.cpp server, the paper's prompt, the rank grammar
  (`tuna judge --constrain rank_grammar`, the demo's setting).
* Teacher: Gemma-3-270M, teacher-forced scoring, mean token log-prob (`tuna score --method forced`).
* Cost: judge calls/s with a cold cache (baseline) and re-run with the warm cache, in the same run.

    python benchmarks/judge.py             # ~3 min on 2 cores
    python benchmarks/judge.py --records 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TUNA_PROGRESS", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from env import env_info, env_tag  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

from tuna.paths import data_dir  # noqa: E402

SHARED = data_dir()
OUT = REPO / "results" / "benchmarks" / "judge.json"

from tuna.feedback.judge import kendall_tau_b  # noqa: E402
from tuna.importers import import_alpaca  # noqa: E402
from tuna.records import Candidate, read_records, write_records  # noqa: E402

KINDS = ("gold", "off_topic", "refusal", "cut")


def make_sets(n: int, offset: int, seed: int, path: Path) -> None:
    recs = import_alpaca(SHARED / "alpaca/alpaca_data_reconstructed.jsonl.gz", limit=n + 1, offset=offset)
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(recs[:n]):
        gold = (r.gold or "").strip()
        texts = {"gold": gold[:400], "off_topic": (recs[i + 1].gold or "").strip()[:400], "refusal": "I don't know.",
                 "cut": gold[: max(len(gold) // 4, 5)]}
        kinds = list(KINDS)
        rng.shuffle(kinds)
        r.candidates = [Candidate(text=texts[k], source=k) for k in kinds]
        out.append(r)
    write_records(path, out)


def orders(path: Path) -> dict[str, list[str]]:
    """Record id -> candidate kinds best-first."""
    return {r.id: [c.source for c in r.candidates] for r in read_records(path, kind="ranked")}


def hand_agreement(ranked: dict[str, list[str]]) -> dict[str, float]:
    n = max(len(ranked), 1)
    above = lambda o, a, b: o.index(a) < o.index(b)  # noqa: E731
    return {"gold_top1": round(sum(o[0] == "gold" for o in ranked.values()) / n, 3),
            "gold_above_off_topic": round(sum(above(o, "gold", "off_topic") for o in ranked.values()) / n, 3),
            "gold_above_refusal": round(sum(above(o, "gold", "refusal") for o in ranked.values()) / n, 3),
            "gold_above_cut": round(sum(above(o, "gold", "cut") for o in ranked.values()) / n, 3),
            "records": len(ranked)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--offset", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from tuna.feedback.commands import JudgeJob, ScoreJob, run_judge, run_score

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sets = t / "sets.jsonl"
        make_sets(args.records, args.offset, args.seed, sets)
        cache = t / "judge_cache"
        runs = {}
        for label in ("cold_cache", "warm_cache"):
            out = t / f"judged_{label}.jsonl"
            t0 = time.perf_counter()
            run_judge(JudgeJob(input=str(sets), out=str(out), model="smollm2-135m-instruct", backend="llamacpp",
                  constrain="rank_grammar", temperature=0.0, max_tokens=32, concurrency=1, cache_dir=str(cache),
                  seed=args.seed))
            wall = time.perf_counter() - t0
            summ = json.loads((t / f"judged_{label}.summary.json").read_text())
            led = summ.get("ledger") or {}
            runs[label] = {"wall_s": round(wall, 2), "calls": led.get("calls", 0), "cache_hits": led.get("cached", 0),
                           "requests_per_s": round(args.records / wall, 3), "ranked": summ["ranked"],
                           "prompt_tokens": led.get("prompt_tokens", 0), "completion_tokens": led.get("completion_tokens", 0)}
        judged = orders(t / "judged_cold_cache.jsonl")
        assert judged == orders(t / "judged_warm_cache.jsonl"), "the cached re-run must give the same rankings"
        t0 = time.perf_counter()
        run_score(ScoreJob(input=str(sets), out=str(t / "teacher.jsonl"), method="forced", model="gemma3-270m", beta=1.0, batch_size=8))
        teacher_s = time.perf_counter() - t0
        teacher = orders(t / "teacher.jsonl")

    common = sorted(set(judged) & set(teacher))
    taus = [kendall_tau_b([-judged[i].index(k) for k in KINDS], [-teacher[i].index(k) for k in KINDS]) for i in common]
    res = {
        "config": {"records": args.records, "offset": args.offset, "seed": args.seed, "candidates": list(KINDS),
                   "judge": "smollm2-135m-instruct via llama.cpp server, paper prompt, rank grammar, temperature 0",
                   "teacher": "gemma3-270m, forced scoring, mean token log-prob (beta 1)"},
        "judge_cost": runs,
        "warm_vs_cold_speedup": round(runs["cold_cache"]["wall_s"] / max(runs["warm_cache"]["wall_s"], 1e-9), 1),
        "teacher_seconds": round(teacher_s, 2),
        "judge_vs_hand": hand_agreement(judged),
        "teacher_vs_hand": hand_agreement(teacher),
        "judge_vs_teacher_mean_kendall_tau": round(sum(taus) / max(len(taus), 1), 3),
        "chance": {"gold_top1": 0.25, "gold_above_x": 0.5, "kendall_tau": 0.0},
    }
    from tuna.precision import resolve_dtype

    env = env_info("cpu", f"judge: llama.cpp on GGUF weights; teacher: {resolve_dtype('auto', 'cpu')}")
    tag = env_tag(env)
    res["env"] = env
    c, w = runs["cold_cache"], runs["warm_cache"]
    print(f"judge, {args.records} records x 4 candidates (SmolLM2-135M, llama.cpp, rank grammar)")
    print(f"  cold cache (baseline): {c['calls']} calls in {c['wall_s']:.1f} s = {c['calls'] / c['wall_s']:.2f} calls/s  {tag}")
    print(f"  warm cache:            {w['calls']} calls, {w['cache_hits']} hits in {w['wall_s']:.2f} s = "
          f"{args.records / w['wall_s']:.1f} requests/s  (x{res['warm_vs_cold_speedup']} faster)  {tag}")
    print(f"  teacher forced scoring: {teacher_s:.1f} s for {args.records * 4} candidates  {tag}")
    print(f"  agreement with hand checks: judge {res['judge_vs_hand']}  teacher {res['teacher_vs_hand']}")
    print(f"  judge vs teacher: mean Kendall tau {res['judge_vs_teacher_mean_kendall_tau']} (chance 0)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
