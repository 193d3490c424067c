"""The record schema: each kind of bad record gets its named error; importers read real and released formats."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys

import pytest

from tuna.errors import TunaError
from tuna.records import (
    JsonlAppender,
    atomic_write_json,
    import_alpaca,
    import_tuna_davinci,
    import_tuna_gpt4_ranking,
    import_tuna_train,
    read_records,
    repair_jsonl,
)

GOOD = {"id": "a", "instruction": "Say hi.", "candidates": [{"text": "hi", "score": -0.5}, {"text": "hello", "score": -0.9}],
        "ranking": {"by": "teacher"}}


def write_lines(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines))
    return path


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({**GOOD, "instruction": None}, "instruction", "valid string"),
        ({k: v for k, v in GOOD.items() if k != "instruction"}, "instruction", "missing required field"),
        ({**GOOD, "candidates": []}, "candidates", "at least 1"),
        ({**GOOD, "candidates": [{"text": 3}]}, "candidates[0].text", "valid string"),
        ({**GOOD, "candidates": [{"text": "x", "score": float("nan")}]}, "candidates[0].score", "finite"),
        ({**GOOD, "candidates": [{"text": "x", "score": "high"}]}, "candidates[0].score", "valid number"),
        ({**GOOD, "candidate": []}, "candidate", "unknown field"),
        ({**GOOD, "candidates": [{"text": "a", "score": -1}, {"text": "b", "score": 0}]}, "candidates", "best-first"),
        ({**GOOD, "id": None}, "id", "valid string"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, bad, field, message):
    path = write_lines(tmp_path / "r.jsonl", [GOOD | {"id": "ok"}, bad])
    with pytest.raises(TunaError) as e:
        read_records(path)
    text = str(e.value)
    assert text.startswith(f"{path}:2: field '{field}'"), text
    assert message in text


def test_file_level_errors(tmp_path):
    cases = {
        "trunc.jsonl": [GOOD, b'{"id": "b", "instruction": "x", "candi'],
        "notutf8.jsonl": [GOOD | {"id": "z"}, b'{"id": "b", "instruction": "caf\xe9", "candidates": [{"text": "x"}]}'],
        "dup.jsonl": [GOOD, GOOD],
        "array.jsonl": [b"[1, 2]"],
    }
    expect = {"trunc.jsonl": ":2: invalid JSON", "notutf8.jsonl": ":2: not valid UTF-8", "dup.jsonl": ":2: field 'id': duplicate id",
              "array.jsonl": ":1: expected a JSON object"}
    for name, lines in cases.items():
        path = tmp_path / name
        write_lines(path, lines)
        if name == "trunc.jsonl":
            path.write_bytes(path.read_bytes().rstrip(b"\n"))
        with pytest.raises(TunaError, match=expect[name]):
            read_records(path)
    with pytest.raises(TunaError, match="file does not exist"):
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(TunaError, match="expected a ranked set"):
        read_records(write_lines(tmp_path / "u.jsonl", [{k: v for k, v in GOOD.items() if k != "ranking"}]), kind="ranked")
    with pytest.raises(TunaError, match="at least 2 needed"):
        read_records(write_lines(tmp_path / "one.jsonl", [GOOD | {"candidates": [{"text": "x"}]}]), min_candidates=2)
    with pytest.raises(TunaError, match="holds no records"):
        read_records(write_lines(tmp_path / "empty.jsonl", []))


def test_appender_survives_sigkill_and_repairs_half_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    code = (
        "import sys, os, signal\n"
        "from tuna.records import JsonlAppender\n"
        f"w = JsonlAppender({str(path)!r})\n"
        "for i in range(1000):\n"
        "    w.write({'id': str(i), 'x': 'y' * 200})\n"
        "    if i == 40:\n"
        "        w._f.write(b'{\"id\": \"41\", \"x\": \"half')\n"  # a torn write, then death
        "        w._f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not path.read_bytes().endswith(b"\n")
    w = JsonlAppender(path)  # cuts the half line, then knows what is done
    assert w.done_ids == {str(i) for i in range(41)}
    w.write({"id": "41"})
    w.close()
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == [str(i) for i in range(42)]
    assert repair_jsonl(path) == 0


def test_atomic_write_never_leaves_partial_files(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionError):
                atomic_write_json(target, {"a": 3})
            assert json.loads(target.read_text()) == {"a": 2}
    finally:
        os.chmod(tmp_path, 0o700)


def test_import_real_alpaca(shared_data):
    recs = import_alpaca(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz", limit=50)
    assert len(recs) == 50 and recs[0].id == "alpaca-0"
    assert recs[0].gold == recs[0].candidates[0].text
    assert any(r.input for r in recs)
    assert recs[0].provenance["provenance"] in {"verbatim_verified", "verbatim_restored", "open_chinese_en_unverified"}


def test_import_released_formats(tmp_path):
    """Field lists of the paper's released files (PAPER.md §4.2, §5.3; README of microsoft/LMOps tuna)."""
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"instruction": "PROMPT### Response:", "output": ["a", "b", "c"], "score": [0.1, 0.5, 0.1],
                                  "id": 3}]))
    rec = import_tuna_train(train)[0]
    assert [c.text for c in rec.candidates] == ["b", "a", "c"]  # stable sort keeps ties in file order
    assert rec.prompt == "PROMPT### Response:"

    davinci = tmp_path / "davinci.json"
    with gzip.open(str(davinci) + ".gz", "wt") as f:
        f.write(json.dumps({"orig": {"instruction": "I", "input": "", "output": "gold"}, "text": ["x", "yy", "z"],
                            "avg_token_prob": [-1.0, -0.5, -2.0], "length": [2, 4, 1], "logprob": [-2.0, -2.0, -2.0]}) + "\n")
    rec = import_tuna_davinci(str(davinci) + ".gz")[0]
    assert [c.text for c in rec.candidates] == ["yy", "x", "z"] and rec.gold == "gold"
    rec13 = import_tuna_davinci(str(davinci) + ".gz", beta=1.3)[0]
    assert rec13.ranking.method == "logprob/len^1.3"

    gpt4 = tmp_path / "gpt4.jsonl"
    gpt4.write_text(json.dumps({"prompt": "P", "instruct": "I", "generation": ["g0", "g1", "g2", "g3"], "id": 9,
                                "gpt_eval": "...", "rank_str": "[4, 2, 0, 1]", "ranks": [4, 2, 0, 1], "response_4": "ref"}) + "\n")
    rec = import_tuna_gpt4_ranking(gpt4)[0]
    assert [c.text for c in rec.candidates] == ["g2", "g0", "g1"]  # GPT-4's own Response 4 dropped; g3 was a duplicate
    rec = import_tuna_gpt4_ranking(gpt4, include_reference=True)[0]
    assert [c.text for c in rec.candidates] == ["ref", "g2", "g0", "g1"]
