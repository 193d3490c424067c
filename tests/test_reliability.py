"""Reliability, proven by breaking things (issue 6).

* Crash and resume: ``tuna sample``, ``tuna judge``, ``tuna train`` and ``tuna eval`` are SIGKILLed at random points
  and resumed; no record is lost or duplicated, every file stays valid, and the resumed output equals an
  uninterrupted run's (all four are seeded or greedy).
* A flaky judge: ``tests/fault_server.py`` injects 429s, 500s, connection resets, timeouts, malformed JSON,
  truncated bodies, empty replies and replies without a ranking at 30 %; ``tuna judge`` and ``tuna eval vicuna``
  finish with every record ranked or listed as failed with its reason, and a re-run retries only the failed ones.
* Bad input: each kind gets one line naming file, line and field (or key), exit status 2, no traceback, and the
  files already written are left as they were.
* Training faults: a NaN loss stops the run (or skips the batch) naming the batch's records; out of memory gives
  advice instead of a trace.
* Secrets: the API key comes from the environment or a key file and appears in no file a whole pipeline writes.

Each test records its figures (faults injected per kind, runs completed, records lost or duplicated, bad inputs
tried); run with ``-rP`` (or ``-s``) to see them, or set ``TUNA_RELIABILITY_FIGURES=<file.json>`` to collect
them. The long variants are marked ``soak`` (``pytest -m soak tests/test_reliability.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fault_server import KINDS, TRANSPORT_KINDS, FaultServer
from tb_logs import tb_scalars

from evaluation.vicuna import NO_VERDICT
from tuna.errors import TunaError
from tuna_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "TUNA_TEST_JUDGE_KEY"
FIGURES: dict[str, Any] = {}


# ----------------------------------------------------------------------------------------------- helpers


def record_figures(name: str, **figs: Any) -> None:
    FIGURES[name] = figs
    print(f"RELIABILITY {name}: {json.dumps(figs, sort_keys=True, default=str)}")


def totals(figures: dict[str, Any]) -> dict[str, Any]:
    """Faults injected (by kind), runs completed, records lost or duplicated, bad inputs tried, over all tests."""
    faults: Counter = Counter()
    out = Counter()
    for name, f in figures.items():
        if name == "totals" or not isinstance(f, dict):
            continue
        for k in ("faults_injected", "judge_faults_injected"):
            v = f.get(k)
            if isinstance(v, dict):
                faults.update(v)
            elif isinstance(v, int):
                faults["other"] += v
        out["kills"] += f.get("kills", 0)
        out["runs_completed"] += f.get("runs_completed", 0)
        out["records_lost"] += f.get("records_lost", 0) + f.get("judgments_lost", 0) + f.get("steps_lost", 0)
        out["records_duplicated"] += f.get("records_duplicated", 0)
        out["bad_inputs_tried"] += f.get("tried", 0)
    return {**out, "faults_injected": dict(faults), "faults_injected_total": sum(faults.values())}


@pytest.fixture(scope="module", autouse=True)
def _report_figures():
    yield
    if not FIGURES:
        return
    FIGURES["totals"] = totals(FIGURES)
    print("\nRELIABILITY FIGURES " + json.dumps(FIGURES, sort_keys=True, default=str))
    dest = os.environ.get("TUNA_RELIABILITY_FIGURES")
    if dest:
        old = json.loads(Path(dest).read_text()) if Path(dest).exists() else {}
        Path(dest).write_text(json.dumps({**old, **FIGURES}, indent=2, sort_keys=True, default=str) + "\n")


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """In-process runs use one torch thread, like the subprocesses (OMP_NUM_THREADS=1): results then match bit
    for bit, and 2 busy cores are not oversubscribed."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("TUNA_THREADS", "1")
    monkeypatch.setenv("TUNA_PROGRESS", "0")
    monkeypatch.delenv("TUNA_DEBUG", raising=False)
    yield
    torch.set_num_threads(n)


def sub_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TUNA_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TUNA_THREADS": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("TUNA_DEBUG", None)
    return env


def spawn(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    f = open(log, "wb")  # a file, not a pipe: a chatty child never blocks on a full pipe
    proc = subprocess.Popen([sys.executable, "-m", "tuna_recipes", *args], cwd=REPO, env=sub_env(**env), stdout=f, stderr=subprocess.STDOUT)
    f.close()
    return proc


def run_tuna(args: list[str]) -> Any:
    """``tuna ARGS`` in this process (the same code path as the command: ``tuna_recipes.cli.main``)."""
    return main(list(args))


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], rng: random.Random, *, jitter: float, timeout: float = 240) -> bool:
    """SIGKILL ``proc`` a random moment (up to ``jitter`` s) after ``ready()``; True if it was still running."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.005)
    if jitter:
        time.sleep(rng.uniform(0, jitter))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive and proc.returncode == -signal.SIGKILL


def jsonl_state(path: Path) -> tuple[list[dict], bool]:
    """The complete lines of a JSONL file (each must be valid JSON) and whether a torn last line follows them."""
    if not path.exists():
        return [], False
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    lines = data.split(b"\n")
    body = lines[:-1]
    out = []
    for i, line in enumerate(body, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{path}:{i} is not valid JSON after a kill: {line[:120]!r}") from None
    return out, torn


def ids_of(path: Path) -> list[str]:
    return [str(o["id"]) for o in jsonl_state(path)[0]]


def assert_valid_tree(root: Path) -> dict[str, int]:
    """Every JSON file parses and every JSONL line is whole, under ``root``; hidden temp files are counted."""
    counts = Counter()
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            counts["leftover_tmp"] += 1
            continue
        if p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
            counts["json"] += 1
        elif p.suffix == ".jsonl":
            _, torn = jsonl_state(p)
            assert not torn, f"{p} ends in a half line"
            counts["jsonl"] += 1
    return dict(counts)


def candidate_sets(shared_data: Path, path: Path, n: int, *, k: int = 4, offset: int = 0) -> list[str]:
    """Real Alpaca instructions with ``k`` candidates each; every candidate carries a ``[[rec:<id>]]`` tag so the
    fault server can tell which record a request is for."""
    from tuna.importers import import_alpaca
    from tuna.records import Candidate, write_records

    recs = import_alpaca(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz", limit=n, offset=offset)
    for r in recs:
        gold = (r.gold or "")[:160]
        r.candidates = [Candidate(text=f"{gold[: 40 * (j + 1)]} [[rec:{r.id}]] ({j})", source="test") for j in range(k)]
    write_records(path, recs)
    return [r.id for r in recs]


def judge_args(inp: Path, out: Path, srv: FaultServer, cache: Path, *extra: str) -> list[str]:
    return ["judge", "--input", str(inp), "--out", str(out), "--backend", "openai", "--base_url", srv.base_url,
            "--model", "fault-judge", "--api_key_env", KEY_ENV, "--cache_dir", str(cache), "--max_tokens", "64",
            "--max_retries", "1", "--timeout", "1.5", "--concurrency", "4", *extra]


def failed_rows(out: Path) -> list[dict]:
    p = out.with_name(out.name.removesuffix(".jsonl") + ".failed.jsonl")
    return jsonl_state(p)[0]


@pytest.fixture()
def key(monkeypatch) -> str:
    value = "sk-tuna-secret-" + os.urandom(16).hex()
    monkeypatch.setenv(KEY_ENV, value)
    return value


# ----------------------------------------------------------------------------------------------- 2. the flaky judge


def test_every_fault_kind_is_a_recorded_failure_never_a_crash(tmp_path, key) -> None:
    """Each fault kind alone at 100 %: the client returns a failed reply (never raises), does not cache it, and
    retries exactly the retryable kinds."""
    from evaluation.vicuna import parse_review
    from tuna.feedback.client import ChatRequest, JudgeClient, cache_key
    from tuna.feedback.judge import parse_rank_reply

    req = ChatRequest(messages=[{"role": "user", "content": "Rank.\n###Response 0:\na\n\n###Response 1:\nb\n"}], key="r")
    retried = {"429", "500", "reset", "timeout", "truncated"}
    seen: dict[str, Any] = {}
    for kind in KINDS:
        with FaultServer(rate=1.0, kinds=(kind,), hang_s=2.5) as srv:
            with JudgeClient("fault-judge", base_url=srv.base_url, api_key_env=KEY_ENV, cache_dir=str(tmp_path / kind),
                             concurrency=1, max_retries=1, timeout=1.5) as c:
                rep = c.complete_many([req])[0]
                cached = c._cache.get(cache_key(c._key_model, req))
            figs = srv.figures()
        seen[kind] = {"error": rep.error, "requests": figs["requests"]}
        if kind in TRANSPORT_KINDS:
            assert rep.error and rep.text is None, (kind, rep)
            assert cached is None, f"{kind}: a failed call was cached"
        else:  # a successful call whose content has no ranking (and no review scores)
            assert rep.error is None and parse_rank_reply(rep.text, 3).order is None and parse_review(rep.text) is None
        assert figs["requests"] == (2 if kind in retried else 1), (kind, figs)
        assert figs["injected"] == {kind: figs["requests"]}
    record_figures("fault_kinds", kinds=len(KINDS), outcome={k: v["error"] or "no ranking (parse fails)" for k, v in seen.items()},
                   faults_injected={k: v["requests"] for k, v in seen.items()})


def test_judge_against_a_flaky_server(shared_data, tmp_path, key) -> None:
    """30 % faults of every kind: every record ends ranked or listed as failed with its reason; a re-run (the
    server now healthy) sends requests for exactly the records whose call failed, and none for the rest."""
    from tuna.records import read_records

    inp, out, cache = tmp_path / "sets.jsonl", tmp_path / "ranked.jsonl", tmp_path / "cache"
    all_ids = candidate_sets(shared_data, inp, 24)
    with FaultServer(rate=0.3, seed=11, hang_s=2.5) as srv:
        run_tuna(judge_args(inp, out, srv, cache))
        first = srv.figures()
        ranked, failed = ids_of(out), failed_rows(out)
        failed_ids = [f["id"] for f in failed]
        assert len(ranked) == len(set(ranked)) and len(failed_ids) == len(set(failed_ids))
        assert sorted(ranked + failed_ids) == sorted(all_ids), "a record was lost or duplicated"
        assert failed and ranked, "seed 11 gives both outcomes"
        for f in failed:
            assert f["reason"].startswith(("error: ", "unparseable: ")), f
        read_records(out, kind="ranked")
        summary = json.loads((tmp_path / "ranked.summary.json").read_text())
        assert summary["ranked"] == len(ranked) and summary["failed"] == len(failed)
        call_failed = {f["id"] for f in failed if f["reason"].startswith("error: ")}
        unparseable = {f["id"] for f in failed if f["reason"].startswith("unparseable: ")}
        assert first["injected_total"] > 0 and set(first["injected"]) <= set(KINDS)

        srv.set_rate(0.0)
        srv.reset_counts()
        before = out.read_bytes()
        run_tuna(judge_args(inp, out, srv, cache))
        asked = Counter(t for entry in srv.log for t in entry["records"])
        # an unreadable reply (after its re-asks) is never cached: the re-run asks those records again too (docs)
        assert set(asked) == call_failed | unparseable, (asked, call_failed, unparseable)
        assert out.read_bytes().startswith(before), "the re-run changed records already written"
        ranked2, failed2 = ids_of(out), failed_rows(out)
        assert sorted(ranked2) == sorted(all_ids) and len(ranked2) == len(set(ranked2))
        assert not failed2
    record_figures("judge_flaky", records=len(all_ids), fault_rate=0.3, faults_injected=first["injected"],
                   requests=first["requests"], ranked_first_run=len(ranked), failed_first_run=len(failed),
                   failed_by_reason=dict(Counter(f["reason"].split(":")[0] for f in failed)),
                   rerun_requests=sum(asked.values()), ranked_after_rerun=len(ranked2), runs_completed=2,
                   records_lost=len(set(all_ids) - set(ranked2) - {f["id"] for f in failed2}), records_duplicated=0)


def _vicuna_answers(path: Path, qids: list[int]) -> None:
    path.write_text("".join(json.dumps({"question_id": q, "text": f"My answer to question {q}. [[rec:q{q}]]"}) + "\n" for q in qids))


def _eval_vicuna_args(shared_data: Path, answers: Path, srv: FaultServer, out_root: Path, limit: int) -> list[str]:
    return ["eval", "vicuna", "--answers", str(answers), "--opponent", "gpt35", "--limit", str(limit), "--orders", "both",
            "--judge.model", "fault-judge", "--judge.base_url", srv.base_url, "--judge.api_key_env", KEY_ENV,
            "--judge.timeout", "1.5", "--judge.max_retries", "1", "--judge.concurrency", "4",
            "--data", str(shared_data / "vicuna_qa"), "--out_root", str(out_root)]


def test_eval_vicuna_against_a_flaky_server(shared_data, tmp_path, key) -> None:
    n = 10
    answers = tmp_path / "answers.jsonl"
    _vicuna_answers(answers, list(range(1, n + 1)))
    with FaultServer(rate=0.3, seed=5, hang_s=2.5) as srv:
        res_path = Path(run_tuna(_eval_vicuna_args(shared_data, answers, srv, tmp_path / "eval", n)))
        first = srv.figures()
        rows = jsonl_state(res_path.parent / "judgments.jsonl")[0]
        assert len(rows) == 2 * n and Counter((r["question_id"], r["order"]) for r in rows).most_common(1)[0][1] == 1
        assert all((r["scores"] is None) == (r["error"] is not None) for r in rows)
        m = json.loads(res_path.read_text())["metrics"]
        assert m["n"] == n and m["win"] + m["tie"] + m["lose"] + m["error"] == n
        call_failed = Counter(f"q{r['question_id']}" for r in rows if r["error"] and r["error"] != NO_VERDICT)
        unparseable = [r for r in rows if r["error"] == NO_VERDICT]
        assert call_failed, "seed 5 gives failed calls"
        assert m["judge_ledger"]["failed"] == sum(call_failed.values())

        srv.set_rate(0.0)
        srv.reset_counts()
        res_path2 = Path(run_tuna(_eval_vicuna_args(shared_data, answers, srv, tmp_path / "eval", n)))
        asked = Counter(t for entry in srv.log for t in entry["records"])
        assert set(asked) == set(call_failed) and sum(asked.values()) >= sum(call_failed.values()), (asked, call_failed)
        rows2 = jsonl_state(res_path2.parent / "judgments.jsonl")[0]
        assert len(rows2) == 2 * n
        assert [r for r in rows2 if r["error"]] == [{**r, "cached": True} for r in unparseable]
    record_figures("eval_vicuna_flaky", questions=n, requests_per_run=2 * n, fault_rate=0.3, faults_injected=first["injected"],
                   requests=first["requests"], failed_calls_first_run=sum(call_failed.values()),
                   unparseable_first_run=len(unparseable), rerun_requests=sum(asked.values()), runs_completed=2,
                   judgments_lost=0, errors_after_rerun=sum(1 for r in rows2 if r["error"]))


# ----------------------------------------------------------------------------------------------- 1. crash and resume


def _sample_args(shared_data: Path, out: Path, n: int) -> list[str]:
    return ["sample", "--input", str(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz"), "--out", str(out),
            "--model", "tiny-random-llama", "--limit", str(n), "--chunk_size", "1", "--n", "2", "--max_new_tokens", "12",
            "--dedup", "false", "--seed", "3"]


def kill_resume_sample(shared_data: Path, tmp: Path, rng: random.Random, *, n: int, kills: int) -> dict[str, Any]:
    out, ref = tmp / "cands.jsonl", tmp / "ref.jsonl"
    killed, torn_lines, done_at_kill = 0, 0, []
    for i in range(kills):
        have = len(ids_of(out))
        target = rng.randint(have + 1, have + max(1, (n - have) // (kills - i + 1)))
        proc = spawn(_sample_args(shared_data, out, n), tmp / f"sample{i}.log")
        killed += kill_when(proc, lambda t=target: len(ids_of(out)) >= t, rng, jitter=0.05)
        state, torn = jsonl_state(out)
        torn_lines += torn
        done_at_kill.append(len(state))
    run_tuna(_sample_args(shared_data, out, n))  # resume
    run_tuna(_sample_args(shared_data, ref, n))  # an uninterrupted run
    got, want = jsonl_state(out)[0], jsonl_state(ref)[0]
    ids = [r["id"] for r in got]
    assert len(ids) == n == len(set(ids)), "a record was lost or duplicated"
    assert got == want, "the resumed candidates differ from an uninterrupted run's"
    return {"records": n, "kills": kills, "killed_mid_run": killed, "records_at_each_kill": done_at_kill,
            "torn_lines_cut": torn_lines, "runs_completed": 2, "records_lost": 0, "records_duplicated": 0,
            "equal_to_uninterrupted": True}


def test_sample_sigkill_resume(shared_data, tmp_path) -> None:
    figs = kill_resume_sample(shared_data, tmp_path, random.Random(1), n=16, kills=1)
    assert figs["killed_mid_run"] == 1
    record_figures("kill_sample", **figs)


def _train_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["train", "prob-rank", "--model.name_or_path", "tiny-random-llama", "--data.train_file", str(data),
            "--data.batch_size", "1", "--data.max_length", "96", "--optim.lr", "1e-3", "--optim.warmup_steps", "1",
            "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps), "--trainer.checkpoint_every_n_steps", "1",
            "--trainer.num_threads", "1", "--seed", "7", "--out_dir", str(out), "--export", "false"]


def _last_step(out: Path) -> int:
    ckpts = sorted((out / "checkpoints").glob("step-*.ckpt"))
    return int(ckpts[-1].stem.split("=")[-1]) if ckpts else -1


def kill_resume_train(data: Path, tmp: Path, rng: random.Random, *, steps: int, kills: int) -> dict[str, Any]:
    import torch

    out, ref = tmp / "train", tmp / "ref"
    killed, at = 0, []
    for _ in range(kills):
        target = min(steps - 3, max(1, _last_step(out) + rng.randint(1, 3)))
        proc = spawn(_train_args(data, out, steps), tmp / f"train{len(at)}.log")
        killed += kill_when(proc, lambda t=target: _last_step(out) >= t, rng, jitter=0.15)
        at.append(_last_step(out))
        for p in (out / "checkpoints").glob("*.ckpt"):  # whatever the kill left must load (atomic saves)
            torch.load(p, map_location="cpu", weights_only=False)
    run_tuna(_train_args(data, out, steps))  # resume: auto
    run_tuna(_train_args(data, ref, steps))
    got, want = tb_scalars(out, "train/loss"), tb_scalars(ref, "train/loss")
    assert sorted(want) == list(range(steps)) and sorted(got) == list(range(steps)), (sorted(got), sorted(want))
    for s in range(steps):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), f"step {s}: resumed loss differs"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == steps
    files = assert_valid_tree(out)
    return {"steps": steps, "kills": kills, "killed_mid_run": killed, "checkpoint_step_at_each_kill": at,
            "runs_completed": 2, "steps_lost": 0, "losses_equal_to_uninterrupted": True, "files_checked": files}


def test_train_sigkill_resume(vicuna_ranked, tmp_path) -> None:
    figs = kill_resume_train(vicuna_ranked, tmp_path, random.Random(2), steps=8, kills=1)
    assert figs["killed_mid_run"] == 1
    record_figures("kill_train", **figs)


def kill_resume_judge(shared_data: Path, tmp: Path, rng: random.Random, *, n: int, kills: int, rate: float) -> dict[str, Any]:
    """Kills of ``tuna judge`` against the fault server; with ``rate`` 0 the result must equal an uninterrupted
    run's; with faults, re-runs continue until every record is ranked or failed for a reason a re-run cannot fix."""
    inp, out, cache = tmp / "sets.jsonl", tmp / "ranked.jsonl", tmp / "cache"
    all_ids = candidate_sets(shared_data, inp, n)
    killed, at, torn_lines, reruns = 0, [], 0, 0
    with FaultServer(rate=rate, seed=3, hang_s=2.5, latency_s=0.05) as srv:
        args = judge_args(inp, out, srv, cache, "--concurrency", "2")
        for i in range(kills):
            have = len(ids_of(out))
            target = rng.randint(have + 1, have + max(1, (n - have) // (kills - i + 1)))
            proc = spawn(args, tmp / f"judge{i}.log", **{KEY_ENV: os.environ[KEY_ENV]})
            killed += kill_when(proc, lambda t=target: len(ids_of(out)) + len(failed_rows(out)) >= t, rng, jitter=0.05)
            state, torn = jsonl_state(out)
            torn_lines += torn
            at.append(len(state))
        run_tuna(args)  # resume
        reruns += 1
        while rate and any(f["reason"].startswith("error: ") for f in failed_rows(out)) and reruns < 12:
            run_tuna(args)  # a re-run retries the failed calls (still 30 % faults)
            reruns += 1
        injected = srv.figures()
        ranked, failed = ids_of(out), failed_rows(out)
        assert len(ranked) == len(set(ranked)), "a record was ranked twice"
        assert sorted(ranked + [f["id"] for f in failed]) == sorted(all_ids), "a record was lost"
        assert not any(f["reason"].startswith("error: ") for f in failed), "re-runs did not retry the failed calls"
        if rate == 0:
            ref = tmp / "ref.jsonl"
            run_tuna(judge_args(inp, ref, srv, tmp / "ref_cache", "--concurrency", "2"))
            reruns += 1
            want = {r["id"]: r for r in jsonl_state(ref)[0]}
            assert {r["id"]: r for r in jsonl_state(out)[0]} == want, "the resumed ranking differs from an uninterrupted run's"
    return {"records": n, "fault_rate": rate, "kills": kills, "killed_mid_run": killed, "records_at_each_kill": at,
            "torn_lines_cut": torn_lines, "runs_completed": reruns, "faults_injected": injected["injected"],
            "requests": injected["requests"], "ranked": len(ranked), "failed_unparseable": len(failed),
            "records_lost": 0, "records_duplicated": 0}


def test_judge_sigkill_resume(shared_data, tmp_path, key) -> None:
    figs = kill_resume_judge(shared_data, tmp_path, random.Random(3), n=16, kills=1, rate=0.0)
    assert figs["killed_mid_run"] == 1
    record_figures("kill_judge", **figs)


def _eval_args(shared_data: Path, out_root: Path, limit: int) -> list[str]:
    return ["eval", "superni", "--model", "tiny-random-llama", "--limit", str(limit), "--generation.max_new_tokens", "6",
            "--runtime.batch_size", "1", "--data", str(shared_data / "superni/superni_test_slice.jsonl.gz"), "--out_root", str(out_root)]


def kill_resume_eval(shared_data: Path, tmp: Path, rng: random.Random, *, limit: int, kills: int) -> dict[str, Any]:
    root, ref_root = tmp / "eval", tmp / "ref"
    n = 8 * limit

    def preds() -> list[dict]:
        files = list(root.glob("superni/*/*/predictions.jsonl"))
        return jsonl_state(files[0])[0] if files else []

    killed, at, torn_lines = 0, [], 0
    for i in range(kills):
        have = len(preds())
        target = rng.randint(have + 1, have + max(1, (n - have) // (kills - i + 1)))
        proc = spawn(_eval_args(shared_data, root, limit), tmp / f"eval{i}.log")
        killed += kill_when(proc, lambda t=target: len(preds()) >= t, rng, jitter=0.02)
        at.append(len(preds()))
        files = list(root.glob("superni/*/*/predictions.jsonl"))
        torn_lines += bool(files) and jsonl_state(files[0])[1]
    res = Path(run_tuna(_eval_args(shared_data, root, limit)))  # resume
    ref = Path(run_tuna(_eval_args(shared_data, ref_root, limit)))
    got, want = jsonl_state(res.parent / "predictions.jsonl")[0], jsonl_state(ref.parent / "predictions.jsonl")[0]
    ids = [r["id"] for r in got]
    assert len(ids) == n == len(set(ids)), "a prediction was lost or duplicated"
    assert {r["id"]: r["prediction"] for r in got} == {r["id"]: r["prediction"] for r in want}
    m, m_ref = json.loads(res.read_text())["metrics"], json.loads(ref.read_text())["metrics"]
    assert (m["rougeL"], m["exact_match"], m["n"]) == (m_ref["rougeL"], m_ref["exact_match"], m_ref["n"])
    files = assert_valid_tree(root)
    return {"items": n, "kills": kills, "killed_mid_run": killed, "predictions_at_each_kill": at, "torn_lines_cut": torn_lines,
            "runs_completed": 2, "records_lost": 0, "records_duplicated": 0, "equal_to_uninterrupted": True, "files_checked": files}


def test_eval_sigkill_resume(shared_data, tmp_path) -> None:
    figs = kill_resume_eval(shared_data, tmp_path, random.Random(4), limit=5, kills=1)
    assert figs["killed_mid_run"] == 1
    record_figures("kill_eval", **figs)


# ----------------------------------------------------------------------------------------------- 3. bad input


def _rec(i: int, k: int = 4, ranked: bool = True, **over: Any) -> dict:
    r = {"id": f"r{i}", "instruction": f"Name {i} colours.", "candidates": [{"text": f"answer {j}", "score": -float(j)} for j in range(k)]}
    if ranked:
        r["ranking"] = {"by": "teacher"}
    return {**r, **over}


def _lines(*objs: Any) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


def _bad_cases(tmp: Path, shared: Path) -> dict[str, tuple[bytes | str, Callable[[Path], list[str]], list[str]]]:
    """name -> (input file content, argv for the input path, strings the one error line must contain)."""
    def score(p: Path) -> list[str]:
        return ["score", "--input", str(p), "--out", str(tmp / "out.jsonl")]

    def judge(p: Path) -> list[str]:
        return ["judge", "--input", str(p), "--out", str(tmp / "out.jsonl"), "--backend", "openai", "--base_url",
                "http://127.0.0.1:9/v1", "--model", "m", "--api_key_env", KEY_ENV, "--cache_dir", str(tmp / "cache")]

    def train(*extra: str) -> Callable[[Path], list[str]]:
        return lambda p: ["train", "prob-rank", "--model.name_or_path", "tiny-random-llama", "--data.train_file", str(p),
                          "--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--out_dir", str(tmp / "run"), *extra]

    long_rec = _rec(2, instruction="word " * 700)
    return {
        "truncated_jsonl": (_lines(_rec(1)) + json.dumps(_rec(2)).encode()[:40], score, [":2: invalid JSON", "truncated"]),
        "wrong_type_candidates": (_lines(_rec(1), _rec(2, candidates="many")), score, [":2: field 'candidates'", "valid list"]),
        "wrong_type_text": (_lines(_rec(1, ranked=False), _rec(2, ranked=False, candidates=[{"text": "a"}, {"text": 7}])), judge,
                            [":2: field 'candidates[1].text'", "valid string"]),
        "missing_field": (_lines(_rec(1), {k: v for k, v in _rec(2).items() if k != "instruction"}), score,
                          [":2: field 'instruction'", "missing required field"]),
        "unknown_field": (_lines(_rec(1, candidate=[])), score, [":1: field 'candidate'", "unknown field"]),
        "empty_candidates": (_lines(_rec(1, ranked=False), _rec(2, ranked=False, candidates=[])), judge, [":2: field 'candidates'"]),
        "single_candidate_judge": (_lines(_rec(1, ranked=False), _rec(2, k=1, ranked=False)), judge,
                                   [":2: field 'candidates'", "at least 2 needed"]),
        "single_candidates_train": (_lines(_rec(1, k=1), _rec(2, k=1)), train(), [":1: field 'candidates'", "nothing to rank"]),
        "duplicate_ids": (_lines(_rec(1), _rec(2), _rec(1)), score, [":3: field 'id'", "duplicate id"]),
        "prompt_longer_than_context": (_lines(_rec(1), long_rec), train("--data.max_length", "64", "--data.overlong", "error"),
                                       [":2: field 'instruction'", "prompt has", "max_length=64"]),
        "non_utf8": (_lines(_rec(1, ranked=False)) + b'{"id": "r2", "instruction": "caf\xe9", "candidates": [{"text": "x"}]}\n',
                     judge, [":2: not valid UTF-8"]),
        "nan_score": (b'{"id": "r1", "instruction": "x", "candidates": [{"text": "a", "score": NaN}, {"text": "b"}], '
                      b'"ranking": {"by": "t"}}\n', train(), [":1: field 'candidates[0].score'", "finite"]),
        "inf_logprob": (_lines(_rec(1, ranked=False)) + b'{"id": "r2", "instruction": "x", "candidates": [{"text": "a", '
                        b'"token_logprobs": [-0.5, -Infinity]}]}\n', score, [":2: field 'candidates[0].token_logprobs[1]'", "finite"]),
        "not_an_object": (_lines(_rec(1), [1, 2]), score, [":2: expected a JSON object"]),
        "empty_file": (b"\n\n", judge, ["holds no records"]),
        "answers_bad_question_id": (_lines({"question_id": "one", "text": "hi"}),
                                    lambda p: ["eval", "vicuna", "--answers", str(p), "--data", str(shared / "vicuna_qa"),
                                               "--judge.base_url", "http://127.0.0.1:9/v1", "--out_root", str(tmp / "ev")],
                                    [":1: field 'question_id'", "integer"]),
        "model_path_missing": (_lines(_rec(1)), lambda p: train()(p)[:2] + ["--model.name_or_path", str(tmp / "no/such/model")]
                               + train()(p)[4:], ["no/such/model", "model path does not exist"]),
        "model_name_unknown": (_lines(_rec(1, ranked=False)), lambda p: ["sample", "--input", str(p), "--out", str(tmp / "out.jsonl"),
                                                                         "--model", "no-such-model-anywhere"],
                               ["no-such-model-anywhere"]),
        "config_key_in_yaml": ("optim:\n  lr: 1e-5\n  learning_rat: 3\n", lambda p: ["train", "prob-rank", "--config", str(p)],
                               [":3: field 'optim.learning_rat'", "config key does not exist"]),
        "config_key_on_command_line": (_lines(_rec(1)), lambda p: train("--optim.learning_rate", "1e-5")(p), ["--optim.learning_rate"]),
        "pipeline_config_key": ("name: x\njudge:\n  modell: gpt-4\n", lambda p: ["pipeline", "--config", str(p)],
                                [":3: field 'judge.modell'", "did you mean 'judge.model'"]),
        "resume_checkpoint_missing": (_lines(_rec(1)), lambda p: train("--resume", str(tmp / "none.ckpt"))(p),
                                      ["none.ckpt", "field 'resume'"]),
        "api_key_file_missing": (_lines(_rec(1, ranked=False)), lambda p: judge(p) + ["--api_key_file", str(tmp / "no.key")],
                                 ["no.key", "field 'api_key_file'", "does not exist"]),
    }


BAD_CASES = list(_bad_cases(Path("/x"), Path("/x")))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line_and_damages_nothing(case, shared_data, tmp_path, capsys) -> None:
    content, argv, expect = _bad_cases(tmp_path, shared_data)[case]
    inp = tmp_path / ("input.yaml" if isinstance(content, str) else "input.jsonl")
    inp.write_bytes(content.encode() if isinstance(content, str) else content)
    # what earlier runs wrote: an output with records, its failure list, a training run's files
    (tmp_path / "out.jsonl").write_bytes(_lines(_rec(7)))
    (tmp_path / "out.failed.jsonl").write_bytes(_lines({"id": "r8", "reason": "error: http 500"}))
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    (tmp_path / "run/checkpoints/last.ckpt").write_bytes(b"earlier checkpoint")
    (tmp_path / "run/train_summary.json").write_text('{"global_step": 3}\n')
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_tuna(argv(inp))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("tuna: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for s in expect:
        assert s in errors[0], (s, errors[0])
    if case not in ("config_key_on_command_line", "model_name_unknown", "resume_checkpoint_missing", "api_key_file_missing",
                    "model_path_missing"):
        assert str(inp) in errors[0], errors[0]  # the file is named
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file was changed or removed"
    FIGURES.setdefault("bad_inputs", {"tried": 0, "one_line_exit_2": 0, "cases": []})
    FIGURES["bad_inputs"]["tried"] += 1
    FIGURES["bad_inputs"]["one_line_exit_2"] += 1
    FIGURES["bad_inputs"]["cases"].append(case)
    print(f"RELIABILITY bad_input {case}: {errors[0]}")


def test_existing_output_lines_survive_repair(tmp_path) -> None:
    """Resuming onto an output whose last record lacks its newline (written by another tool) keeps that record;
    a torn half line from a crash is cut and redone."""
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_lines(*[_rec(i, ranked=False, candidates=[{"text": f"a{j}", "token_logprobs": [-0.1 * (j + 1)] * 3}
                                                            for j in range(3)]) for i in range(4)]))
    out = tmp_path / "out.jsonl"
    scored = _lines({**_rec(0), "ranking": {"by": "teacher", "method": "kept"}}) + json.dumps(
        {**_rec(1), "ranking": {"by": "teacher", "method": "kept"}}).encode()
    out.write_bytes(scored)
    run_tuna(["score", "--input", str(inp), "--out", str(out)])
    rows = jsonl_state(out)[0]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"]
    assert [r["ranking"].get("method") for r in rows[:2]] == ["kept", "kept"]  # not re-scored: nothing lost
    out.write_bytes(_lines(rows[0]) + json.dumps(rows[1]).encode()[:30])  # a torn line
    run_tuna(["score", "--input", str(inp), "--out", str(out)])
    assert [r["id"] for r in jsonl_state(out)[0]] == ["r0", "r1", "r2", "r3"]


# ----------------------------------------------------------------------------------------------- 4. training faults


def _poison(monkeypatch, record_id: str) -> dict[str, int]:
    """Make the loss NaN for every batch that holds ``record_id`` (a real NaN through the real check)."""
    import torch

    from tuna.stages.base import TunaModule

    hits = {"batches": 0}
    compute = TunaModule.compute

    def poisoned(self, batch):
        out = compute(self, batch)
        if record_id in batch["ids"]:
            hits["batches"] += 1
            out.loss = out.loss * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(TunaModule, "compute", poisoned)
    return hits


def _fault_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "prob-rank", "--model.name_or_path", "tiny-random-llama", "--data.train_file", str(data),
            "--data.batch_size", "2", "--data.max_length", "96", "--data.shuffle", "false", "--trainer.accelerator", "cpu",
            "--trainer.max_steps", "4", "--trainer.num_threads", "1", "--out_dir", str(out), "--export", "false", *extra]


def test_nonfinite_loss_stops_naming_the_batch(vicuna_ranked, tmp_path, monkeypatch, capsys) -> None:
    victim = json.loads(vicuna_ranked.read_text().splitlines()[2])["id"]  # batch 1 (records 2 and 3), unshuffled
    hits = _poison(monkeypatch, victim)
    with pytest.raises(SystemExit) as e:
        run_tuna(_fault_train_args(vicuna_ranked, tmp_path / "stop"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and hits["batches"] == 1
    assert err[-1].startswith("tuna: error: non-finite loss") and "Traceback" not in "\n".join(err)
    assert "batch 1" in err[-1] and victim in err[-1] and "trainer.nonfinite=skip" in err[-1]
    record_figures("nan_stop", faults_injected={"nan_loss": 1}, stopped=True, message=err[-1][:200])


def test_nonfinite_loss_skip_skips_only_that_batch(vicuna_ranked, tmp_path, monkeypatch, capsys) -> None:
    victim = json.loads(vicuna_ranked.read_text().splitlines()[2])["id"]
    hits = _poison(monkeypatch, victim)
    out = tmp_path / "skip"
    run_tuna(_fault_train_args(vicuna_ranked, out, "--trainer.nonfinite", "skip"))
    printed = capsys.readouterr().out
    assert hits["batches"] == 1 and "skipping batch" in printed and victim in printed
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 4  # the skipped batch counts as a step (its gradients were never computed)
    losses = tb_scalars(out, "train/loss")
    assert sorted(losses) == [0, 1, 2, 3]
    assert [s for s, v in losses.items() if v != v] == [1]  # the skipped step shows its own NaN, not a stale loss
    assert tb_scalars(out, "train/skipped_batches") == {0: 0.0, 1: 1.0, 2: 1.0, 3: 1.0}  # a running count
    record_figures("nan_skip", faults_injected={"nan_loss": 1}, batches_skipped=1, steps_completed=summary["global_step"], runs_completed=1)


@pytest.mark.parametrize("error", ["torch", "runtime"])
def test_out_of_memory_gives_advice(error, vicuna_ranked, tmp_path, monkeypatch, capsys) -> None:
    import torch

    from tuna.stages.base import TunaModule

    def oom(self, batch, batch_idx):
        if error == "torch":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total capacity)")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: out of memory (tried to allocate 21474836480 bytes)")

    monkeypatch.setattr(TunaModule, "training_step", oom)
    with pytest.raises(SystemExit) as e:
        run_tuna(_fault_train_args(vicuna_ranked, tmp_path / "oom", "--data.batch_size", "4"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "Traceback" not in "\n".join(err)
    line = err[-1]
    assert line.startswith("tuna: error: out of memory in training at step 0")
    for advice in ("--data.batch_size 2", "--trainer.accumulate_grad_batches 2", "--model.gradient_checkpointing true",
                   "--model.lora", "--trainer.precision bf16-mixed", "data.max_length"):
        assert advice in line, (advice, line)
    record_figures(f"oom_{error}", faults_injected={"out_of_memory": 1}, advice=line[:240])


# ----------------------------------------------------------------------------------------------- 5. secrets


def scan_for(root: Path, needles: list[bytes], *, skip: tuple[Path, ...] = ()) -> tuple[list[str], dict[str, int]]:
    """Every regular file under ``root`` (symlinks not followed; ``.gz`` files also decompressed): the files that
    hold any of ``needles``, and how many files/bytes were read, by kind."""
    import gzip

    hits, stats = [], Counter()
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink() or any(p == s or s in p.parents for s in skip):
                continue
            data = p.read_bytes()
            if name.endswith(".gz"):
                try:
                    data += gzip.decompress(data)
                except (OSError, EOFError):
                    pass
            kind = ("tensorboard" if "tfevents" in name else "checkpoint" if name.endswith(".ckpt") else
                    "diskcache" if name.endswith(".db") or "cache" in str(p.parent) and name.endswith(".val") else p.suffix or name)
            stats[kind] += 1
            stats["bytes"] += len(data)
            if any(n in data for n in needles):
                hits.append(str(p))
    stats["files"] = sum(v for k, v in stats.items() if k != "bytes")
    return hits, dict(stats)


def _needles(key: str) -> list[bytes]:
    secret = key.removeprefix("sk-tuna-secret-")
    return [key.encode(), secret.encode(), secret[:16].encode(), key.encode("utf-16-le")]


def test_api_key_from_env_or_key_file(shared_data, tmp_path, key, monkeypatch) -> None:
    from tuna.feedback.client import JudgeClient
    from tuna.feedback.generators import OpenAIGenerator
    from tuna.feedback.keys import read_api_key

    inp = tmp_path / "sets.jsonl"
    candidate_sets(shared_data, inp, 3)
    file_key = "sk-tuna-secret-" + os.urandom(16).hex()
    key_file = tmp_path / "keys" / "judge.key"
    key_file.parent.mkdir()
    key_file.write_text(f"\n  {file_key}  \n")
    key_file.chmod(0o600)
    with FaultServer(rate=0.0) as srv:
        run_tuna(judge_args(inp, tmp_path / "env.jsonl", srv, tmp_path / "cache"))  # from the environment
        assert srv.auth_seen == {f"Bearer {key}"}
        srv.auth_seen.clear()
        run_tuna(judge_args(inp, tmp_path / "file.jsonl", srv, tmp_path / "cache2", "--api_key_file", str(key_file)))
        assert srv.auth_seen == {f"Bearer {file_key}"}  # the key file wins over the environment
        srv.auth_seen.clear()
        answers = tmp_path / "answers.jsonl"
        _vicuna_answers(answers, [1, 2])
        run_tuna(_eval_vicuna_args(shared_data, answers, srv, tmp_path / "eval", 2) + ["--judge.api_key_file", str(key_file)])
        assert srv.auth_seen == {f"Bearer {file_key}"}
        assert OpenAIGenerator("m", base_url=srv.base_url, api_key_file=str(key_file)).client.api_key == file_key
    # errors name the file or the variable, never a value
    monkeypatch.delenv(KEY_ENV)
    for bad, expect in [(tmp_path / "missing.key", "API key file does not exist"), (tmp_path / "empty.key", "API key file is empty")]:
        if bad.name == "empty.key":
            bad.write_text("\n \n")
        with pytest.raises(TunaError, match=expect) as e:
            read_api_key(KEY_ENV, str(bad))
        assert str(bad) in str(e.value)
    with pytest.raises(TunaError, match=f"environment variable {KEY_ENV} is not set") as e:
        JudgeClient("gpt-4", api_key_env=KEY_ENV)
    hits, stats = scan_for(tmp_path, _needles(key) + _needles(file_key), skip=(key_file,))
    assert hits == [], f"the API key was written to {hits}"
    record_figures("api_key_sources", sources_tested=["env", "key file", "key file over env"], commands=["judge", "eval vicuna", "sample (openai)"],
                   files_scanned=stats["files"], key_found_in=len(hits))


def test_scan_finds_a_planted_key(tmp_path) -> None:
    """The scanner itself works: a key planted in a gzip file, a binary blob and a UTF-16 text is found."""
    import gzip

    key = "sk-tuna-secret-" + os.urandom(16).hex()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(json.dumps({"k": key}).encode()))
    (tmp_path / "b.bin").write_bytes(os.urandom(100) + key.encode() + os.urandom(100))
    (tmp_path / "c.txt").write_bytes(key.encode("utf-16-le"))
    (tmp_path / "clean.txt").write_text("nothing here")
    hits, _ = scan_for(tmp_path, _needles(key))
    assert sorted(Path(h).name for h in hits) == ["a.jsonl.gz", "b.bin", "c.txt"]


def secrets_pipeline(tmp: Path, srv: FaultServer, key: str, *, limit: int, steps: int, questions: int) -> tuple[dict, dict]:
    """A whole pipeline (student sampling, the judge on the fault server, context-rank training with checkpoints
    and TensorBoard, export, Vicuna QA judged by the fault server, the report) run as the real command with the
    key in the environment and every cache under ``tmp``; then every file is scanned for the key."""
    import yaml

    from tuna.models import cache_root

    cache = tmp / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(cache_root() / "models", target_is_directory=True)  # the converted tokenizer, read only
    cfg = {
        "name": "secrets", "run_dir": str(tmp / "run"), "results_dir": str(tmp / "results"), "student": "tiny-random-llama",
        "context_instructions": {"offset": 200, "limit": limit},
        "student_sampling": {"n": 4, "max_new_tokens": 8, "dtype": "float32", "dedup": False, "batch_size": 4},
        "judge": {"model": "fault-judge", "backend": "openai", "base_url": srv.base_url, "api_key_env": KEY_ENV,
                  "timeout": 2.0, "max_retries": 3, "concurrency": 2, "max_tokens": 64},
        "context_rank": {"trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": steps,
                                     "checkpoint_every_n_steps": 1, "num_threads": 1},
                         "optim": {"lr": 1e-3}, "data": {"max_length": 96, "batch_size": 2}},
        "variants": ["tuna_c"], "evaluate": ["tuna_c"],
        "evaluation": {"benchmarks": ["vicuna"], "vicuna_limit": questions, "generation": {"max_new_tokens": 4}, "template": "raw",
                       "runtime": {"batch_size": 4}},
    }
    cfg_path = tmp / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    for d in ("hf", "xdg", "mpl", "tmp"):
        (tmp / d).mkdir()
    env = {KEY_ENV: key, "TUNA_CACHE": str(cache), "HF_HOME": str(tmp / "hf"), "XDG_CACHE_HOME": str(tmp / "xdg"),
           "MPLCONFIGDIR": str(tmp / "mpl"), "TMPDIR": str(tmp / "tmp"), "TUNA_LOG": "DEBUG",
           "TUNA_SHARED_DATA": os.environ.get("TUNA_SHARED_DATA", str(REPO.parent / "shared" / "data"))}
    log = tmp / "pipeline.log"
    proc = spawn(["pipeline", "--config", str(cfg_path)], log, **env)
    rc = proc.wait(timeout=900)
    assert rc == 0, log.read_text()[-4000:]
    assert srv.auth_seen == {f"Bearer {key}"}, "the judge calls did not carry the key: the scan would prove nothing"
    man = json.loads((tmp / "run/manifest.json").read_text())
    assert all(s["status"] == "done" for s in man["steps"].values()), man["steps"]
    assert list((tmp / "run/tuna_c/tensorboard").glob("events.out.tfevents.*")) and list((tmp / "run/tuna_c/checkpoints").glob("*.ckpt"))
    assert list(cache.rglob("*.db")), "no judge cache was written"
    hits, stats = scan_for(tmp, _needles(key))
    assert hits == [], f"the API key was written to {hits}"
    return man, stats


def test_pipeline_writes_the_api_key_nowhere(tmp_path, key) -> None:
    with FaultServer(rate=0.3, seed=2, hang_s=3.0) as srv:
        man, stats = secrets_pipeline(tmp_path, srv, key, limit=3, steps=2, questions=2)
        figs = srv.figures()
    record_figures("secrets_pipeline", steps_run=len(man["steps"]), judge_faults_injected=figs["injected"], judge_requests=figs["requests"],
                   files_scanned=stats["files"], bytes_scanned=stats["bytes"],
                   files_by_kind={k: v for k, v in stats.items() if k not in ("files", "bytes")}, key_found_in=0)


# ----------------------------------------------------------------------------------------------- soak variants


@pytest.mark.soak
def test_soak_sample_many_kills(shared_data, tmp_path) -> None:
    figs = kill_resume_sample(shared_data, tmp_path, random.Random(11), n=48, kills=4)
    assert figs["killed_mid_run"] == 4
    record_figures("soak_kill_sample", **figs)


@pytest.mark.soak
def test_soak_train_many_kills(vicuna_ranked, tmp_path) -> None:
    figs = kill_resume_train(vicuna_ranked, tmp_path, random.Random(12), steps=16, kills=4)
    assert figs["killed_mid_run"] >= 3  # a kill may land after the last checkpoint it waits for is already past
    record_figures("soak_kill_train", **figs)


@pytest.mark.soak
def test_soak_judge_kills_under_faults(shared_data, tmp_path, key) -> None:
    figs = kill_resume_judge(shared_data, tmp_path, random.Random(13), n=120, kills=4, rate=0.3)
    assert figs["killed_mid_run"] == 4
    record_figures("soak_kill_judge_flaky", **figs)


@pytest.mark.soak
def test_soak_judge_kills_equal_uninterrupted(shared_data, tmp_path, key) -> None:
    figs = kill_resume_judge(shared_data, tmp_path, random.Random(14), n=48, kills=3, rate=0.0)
    assert figs["killed_mid_run"] == 3
    record_figures("soak_kill_judge", **figs)


@pytest.mark.soak
def test_soak_eval_many_kills(shared_data, tmp_path) -> None:
    figs = kill_resume_eval(shared_data, tmp_path, random.Random(15), limit=12, kills=3)
    assert figs["killed_mid_run"] == 3
    record_figures("soak_kill_eval", **figs)


@pytest.mark.soak
def test_soak_eval_vicuna_all_questions_flaky(shared_data, tmp_path, key) -> None:
    """All 80 questions (160 reviews) at 30 % faults; re-runs until no call fails; nothing lost on the way."""
    n = 80
    answers = tmp_path / "answers.jsonl"
    _vicuna_answers(answers, list(range(1, n + 1)))
    injected: Counter = Counter()
    runs, requests = 0, 0
    with FaultServer(rate=0.3, seed=21, hang_s=2.5) as srv:
        while runs < 12:
            srv.reset_counts()
            res = Path(run_tuna(_eval_vicuna_args(shared_data, answers, srv, tmp_path / "eval", n)))
            runs += 1
            figs = srv.figures()
            injected.update(figs["injected"])
            requests += figs["requests"]
            rows = jsonl_state(res.parent / "judgments.jsonl")[0]
            assert len(rows) == 2 * n and len({(r["question_id"], r["order"]) for r in rows}) == 2 * n
            assert all((r["scores"] is None) == (r["error"] is not None) for r in rows)
            if not any(r["error"] and r["error"] != NO_VERDICT for r in rows):
                break
    m = json.loads(res.read_text())["metrics"]
    assert m["n"] == n and m["win"] + m["tie"] + m["lose"] + m["error"] == n
    assert all(r["error"] in (None, NO_VERDICT) for r in rows)
    record_figures("soak_eval_vicuna_flaky", questions=n, reviews=2 * n, fault_rate=0.3, faults_injected=dict(injected),
                   requests=requests, runs_completed=runs, judgments_lost=0,
                   unparseable_left=sum(1 for r in rows if r["error"]))


@pytest.mark.soak
@pytest.mark.parametrize("case", BAD_CASES)
def test_soak_bad_input_as_a_real_process(case, shared_data, tmp_path) -> None:
    """The bad-input corpus through the real ``tuna`` process: exit status 2, one line, no traceback on stderr."""
    content, argv, expect = _bad_cases(tmp_path, shared_data)[case]
    inp = tmp_path / ("input.yaml" if isinstance(content, str) else "input.jsonl")
    inp.write_bytes(content.encode() if isinstance(content, str) else content)
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", *argv(inp)], cwd=REPO, env=sub_env(**{KEY_ENV: "unused"}),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("tuna: error: ")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-2000:]
    for s in expect:
        assert s in errors[0], (s, errors[0])
    soak = FIGURES.setdefault("soak_bad_inputs_real_process", {"tried": 0, "one_line_exit_2": 0})
    soak["tried"] += 1
    soak["one_line_exit_2"] += 1


@pytest.mark.soak
def test_soak_pipeline_writes_the_api_key_nowhere(tmp_path, key) -> None:
    with FaultServer(rate=0.3, seed=4, hang_s=3.0) as srv:
        man, stats = secrets_pipeline(tmp_path, srv, key, limit=8, steps=6, questions=6)
        figs = srv.figures()
    record_figures("soak_secrets_pipeline", steps_run=len(man["steps"]), judge_faults_injected=figs["injected"],
                   judge_requests=figs["requests"], files_scanned=stats["files"], bytes_scanned=stats["bytes"], key_found_in=0)
