"""Two CPU kernels that decide the demo's speed, each against its baseline measured in the same run.

(a) **Precision.** A bf16 and an fp32 matmul of a SmolLM2-sized layer ([512, 576] x [576, 1536], one thread), in
    this process and in a child process restricted to AVX2 (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``,
    which turns any x86 CPU into the AVX2-only machine). Prints GFLOP/s, the ratio and what ``dtype: auto`` picks.
(b) **The sampler.** One decoding step's draw for 16 rows of a vocabulary: transformers' ``torch.multinomial`` over
    the softmax (baseline) against :class:`tuna.feedback.generators.GumbelMaxSampler` (argmax over Gumbel-noised
    logits), for SmolLM2's 49,152 and Gemma 3's 262,144 tokens.

    python benchmarks/precision_and_sampler.py      # ~30 s
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from env import env_info, env_tag  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

OUT = REPO / "results" / "benchmarks" / "precision_and_sampler.json"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

_MATMUL = r"""
import json, statistics, time, torch
from tuna.precision import resolve_dtype, cpu_capability
torch.set_num_threads(1)
out = {"capability": cpu_capability(), "auto": resolve_dtype("auto", "cpu")}
for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    a, b = torch.randn(512, 576, dtype=dt), torch.randn(576, 1536, dtype=dt)
    for _ in range(2):
        a @ b
    ts = []
    for _ in range(7):
        t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
    out[name] = 2 * 512 * 576 * 1536 / statistics.median(ts) / 1e9
print(json.dumps(out))
"""


def matmul(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MATMUL], capture_output=True, text=True, check=True, cwd=REPO,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sampler(vocab: int, rows: int = 16, repeats: int = 20) -> dict:
    import torch

    from tuna.feedback.generators import GumbelMaxSampler

    logits = torch.randn(rows, vocab)
    gumbel = GumbelMaxSampler()

    def multinomial() -> object:
        return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)

    def ours() -> object:
        return gumbel(None, logits).argmax(dim=-1)

    times: dict[str, list[float]] = {"multinomial": [], "gumbel_max": []}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for name, fn in (("multinomial", multinomial), ("gumbel_max", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {"vocab": vocab, "rows": rows, "ms": ms, "speedup": ms["multinomial"] / ms["gumbel_max"]}


def main() -> None:
    import torch

    info = env_info("cpu", "fp32 and bf16")
    tag = env_tag(info)
    res: dict = {"env": info, "precision": {}, "sampler": []}
    for label, env in (("this CPU", {}), ("restricted to AVX2", AVX2)):
        m = matmul(env)
        res["precision"][label] = m
        print(f"matmul, {label} (capability {m['capability']}): fp32 {m['fp32']:.1f} GFLOP/s, bf16 {m['bf16']:.1f} GFLOP/s, "
              f"bf16/fp32 {m['bf16'] / m['fp32']:.2f}x; dtype auto -> {m['auto']}  {tag}")
    torch.set_num_threads(int(os.environ.get("TUNA_THREADS", "2")))
    for vocab in (49_152, 262_144):
        s = sampler(vocab)
        res["sampler"].append(s)
        print(f"sampler, 16 rows x {vocab} tokens: multinomial {s['ms']['multinomial']:.1f} ms, Gumbel-max "
              f"{s['ms']['gumbel_max']:.1f} ms per step: {s['speedup']:.2f}x  {tag}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
