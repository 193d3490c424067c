"""Batch mode at scale: time and peak memory of building the batch input files and joining the output file, for
200,000 judge requests (about 4x the paper's pass of 52,002), streaming (tuna.feedback.batch) against the in-memory way
(every line built in a list, one big buffer split into files; the whole output read and parsed into a dict),
measured in the same run, each variant in a fresh process (peak RSS = ru_maxrss of that process; "import only" is
the same process doing nothing, the floor under every variant).

    python benchmarks/judge_batch.py                  # 200,000 requests, ~2 min on 2 cores
    python benchmarks/judge_batch.py --requests 20000

Requests: the paper's prompt (system message + the Alpaca prompt + 4 responses of ~400 characters); replies: a
paper-style judge reply (~1,200 characters) with usage. Writes results/benchmarks/judge_batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "results" / "benchmarks" / "judge_batch.json"
MODEL = "gpt-4-0613"


def fake_requests(n: int):
    from tuna.feedback.client import ChatRequest, cache_key
    from tuna.feedback.judge import PAPER_TEMPLATE, build_prompt
    from tuna.prompts import alpaca_prompt

    for i in range(n):
        texts = [f"Candidate {k} for instruction {i}: " + ("a fairly long response sentence. " * 12) for k in range(4)]
        msgs = [{"role": "system", "content": "You are a professional and experienced data annotator."},
                {"role": "user", "content": build_prompt(PAPER_TEMPLATE, alpaca_prompt(f"Instruction number {i}: explain it.", ""), texts)}]
        req = ChatRequest(messages=msgs, temperature=1.0, max_tokens=2048, key=str(i))
        yield cache_key(MODEL, req), req


def reply_line(cid: str, i: int) -> bytes:
    text = "".join(f"Response {k}: {10 + k}\n" for k in range(5)) + "###Response 4:\n" + "a reference answer. " * 50 + "\n\nrank: [4, 2, 0, 1, 3]"
    return (json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": {"status_code": 200, "request_id": f"r{i}", "body": {
        "id": f"c{i}", "object": "chat.completion", "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 700, "completion_tokens": 400, "total_tokens": 1100}}}, "error": None}) + "\n").encode()


# ----------------------------------------------------------------------------------------------- variants (child processes)


def build_streaming(n: int, d: Path) -> dict:
    from tuna.feedback.batch import PartWriter, request_line

    w = PartWriter(d, 1, 50_000, 200_000_000)
    ids = {}
    for i, (cid, req) in enumerate(fake_requests(n)):
        ids[cid] = i  # what BatchClient holds per request: its id
        w.write(cid, request_line(cid, MODEL, req))
    parts = w.close()
    return {"files": len(parts), "bytes": sum(p.bytes for p in parts)}


def build_in_memory(n: int, d: Path) -> dict:
    from tuna.feedback.batch import request_body

    reqs = list(fake_requests(n))  # every request object kept
    lines = [json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": request_body(MODEL, r)},
                        ensure_ascii=False, separators=(",", ":")) for cid, r in reqs]
    files, cur, size, k = 0, [], 0, 0
    for ln in lines + [None]:  # type: ignore[list-item]
        if ln is None or len(cur) >= 50_000 or size + len(ln) + 1 > 200_000_000:
            if cur:
                files += 1
                (d / f"m{files}.jsonl").write_text("\n".join(cur) + "\n", encoding="utf-8")
                k += size
            cur, size = [], 0
        if ln is not None:
            cur.append(ln)
            size += len(ln.encode()) + 1
    return {"files": files, "bytes": k}


def join_streaming(n: int, out: Path) -> dict:
    from tuna.feedback.batch import parse_result_line

    where = {cid: i for i, (cid, _) in enumerate(_ids(n))}
    ok = pt = 0
    with open(out, "rb") as f:
        for raw in f:
            r = parse_result_line(raw)
            if r.text is not None and where.pop(r.custom_id, None) is not None:  # type: ignore[arg-type]
                ok += 1
                pt += r.prompt_tokens
    return {"joined": ok, "prompt_tokens": pt}


def join_in_memory(n: int, out: Path) -> dict:
    where = {cid: i for i, (cid, _) in enumerate(_ids(n))}
    data = out.read_bytes()
    objs = {o["custom_id"]: o for o in (json.loads(ln) for ln in data.splitlines() if ln.strip())}
    ok = pt = 0
    for cid, o in objs.items():
        if cid in where:
            ok += 1
            pt += o["response"]["body"]["usage"]["prompt_tokens"]
    return {"joined": ok, "prompt_tokens": pt}


def _ids(n: int):
    from tuna.feedback.client import ChatRequest, cache_key

    for i in range(n):  # the ids only (a caller holding its request objects is the caller's memory, not the join's)
        yield cache_key(MODEL, ChatRequest(messages=[{"role": "user", "content": str(i)}])), i


def noop(n: int, d: Path) -> dict:
    return {}


VARIANTS = {"import_only": noop, "build_streaming": build_streaming, "build_in_memory": build_in_memory,
            "join_streaming": join_streaming, "join_in_memory": join_in_memory}


def child(variant: str, n: int, path: str) -> None:
    import tuna.feedback.batch  # noqa: F401  (imports are not what is measured)
    import tuna.feedback.judge  # noqa: F401
    import tuna.prompts  # noqa: F401

    t0 = time.perf_counter()
    res = VARIANTS[variant](n, Path(path))
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **res}))


def run(variant: str, n: int, path: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", variant, "--requests", str(n), "--path", str(path)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--child")
    ap.add_argument("--path")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.requests, a.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from env import cpu_model

    n = a.requests
    res: dict = {"requests": n, "cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
                 "load_avg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        out = t / "output.jsonl"
        with open(out, "wb") as f:  # the batch output file to join (not timed)
            for cid, i in _ids(n):
                f.write(reply_line(cid, i))
        res["output_file_mb"] = out.stat().st_size / 1e6
        res["import_only"] = run("import_only", n, t)
        for v in ("build_in_memory", "build_streaming"):
            d = t / v
            d.mkdir()
            res[v] = run(v, n, d)
            for p in d.iterdir():
                p.unlink()
        res["join_in_memory"] = run("join_in_memory", n, out)
        res["join_streaming"] = run("join_streaming", n, out)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"{n:,} requests on {res['cpu']} ({res['cores']} cores, load {res['load_avg_at_start'][0]:.1f}); "
          f"output file {res['output_file_mb']:,.0f} MB; import alone {res['import_only']['peak_rss_mb']:.0f} MB RSS")
    print("| step | way | seconds | peak RSS (MB) | files |")
    print("|---|---|---:|---:|---:|")
    for step in ("build", "join"):
        for way in ("in_memory", "streaming"):
            r = res[f"{step}_{way}"]
            print(f"| {step} | {way.replace('_', '-')}{' (baseline)' if way == 'in_memory' else ''} | {r['seconds']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} | {r.get('files', '')} |")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
