"""The installed llama.cpp build against another build of the same version: CPU time of the embedded judge's work.

Why the set-up builds x86-64-v3 (AVX2) and not AVX512 on AVX512 CPUs: this measures what the AVX512 level would buy.
Build the other level once into a folder, then compare (each build runs in its own process, one thread, CPU time so
that other load on the machine does not count; prompt processing and single-token decoding separately, because
greedy answers of the two builds may differ in length):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON \\
      -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \\
      pip wheel --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -w /tmp/v4
    pip install --no-deps --target /tmp/lcp-v4 /tmp/v4/*.whl
    python benchmarks/llamacpp_levels.py --other /tmp/lcp-v4 --other-name x86-64-v4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

WORK = r"""
import json, resource, sys, llama_cpp
from tuna.feedback.server import gguf_for
m = llama_cpp.Llama(model_path=str(gguf_for("smollm2-135m-instruct")), verbose=False, n_threads=1, n_threads_batch=1,
                    n_ctx=2048, seed=0)
toks = m.tokenize(("Rank the following responses to the instruction by quality. " * 40).encode())
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
m.reset(); m.eval(toks[:50])
p = g = 0.0
reps = int(sys.argv[1])
for _ in range(reps):
    m.reset(); c = cpu(); m.eval(toks); p += cpu() - c
    c = cpu()
    for t in toks[:64]:
        m.eval([t])
    g += cpu() - c
print(json.dumps({"prompt_tokens": len(toks), "prompt_cpu_s": p / reps, "decode64_cpu_s": g / reps}))
"""


def measure(extra_path: str | None, reps: int) -> dict:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")]).strip(os.pathsep)
    out = subprocess.run([sys.executable, "-c", WORK, str(reps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", required=True, help="a folder holding another llama_cpp build (pip install --target)")
    ap.add_argument("--other-name", default="other")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two builds this many times; the minimum counts")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    from tuna.feedback.llamacpp_build import read_stamp
    from tuna.precision import cpu_flags

    stamp = read_stamp() or {}
    base_name = stamp.get("profile", "installed")
    runs: dict[str, list[dict]] = {base_name: [], a.other_name: []}
    for _ in range(a.rounds):
        runs[a.other_name].append(measure(a.other, a.reps))
        runs[base_name].append(measure(None, a.reps))
    best = {k: {m: min(r[m] for r in v) for m in ("prompt_cpu_s", "decode64_cpu_s")} for k, v in runs.items()}
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    print(f"CPU: {platform.processor() or platform.machine()} ({' '.join(flags)}); 1 thread; CPU seconds, min of {a.rounds} rounds")
    for k, v in best.items():
        print(f"  {k:>12}: prompt of {runs[k][0]['prompt_tokens']} tokens {v['prompt_cpu_s']:.3f} s, 64 decode steps {v['decode64_cpu_s']:.3f} s")
    for m in ("prompt_cpu_s", "decode64_cpu_s"):
        print(f"  {a.other_name} / {base_name} {m}: {best[a.other_name][m] / best[base_name][m]:.3f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"cpu_flags": flags, "best": best, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
