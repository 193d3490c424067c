"""The record schema: each kind of bad record gets its named error; importers read real and released formats."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tuna.errors import TunaError
from tuna.importers import import_alpaca, import_tuna_davinci, import_tuna_gpt4_ranking, import_tuna_train
from tuna.records import JsonlAppender, atomic_write_json, read_records, repair_jsonl

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


def test_atomic_write_never_leaves_partial_files(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

    def disk_full(fd: int) -> None:  # the new content is written to the temporary file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # works as root too (a read-only folder does not stop root)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(target, {"a": 3})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # the temporary file is gone


def test_import_real_alpaca(shared_data):
    recs = import_alpaca(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz", limit=50)
    assert len(recs) == 50 and recs[0].id == "alpaca-0"
    assert recs[0].gold == recs[0].candidates[0].text
    assert any(r.input for r in recs)
    assert recs[0].provenance["provenance"] in {"verbatim_verified", "verbatim_restored", "open_chinese_en_unverified"}


RELEASED = Path(__file__).parent / "fixtures" / "released"


def released_render(example: dict) -> str:
    """PROMPT_DICT and its selection rule, written out from the released train.py (L32-43, L148-151)."""
    if example.get("input", "") != "":
        return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{example['instruction']}\n\n### Input:\n{example['input']}\n\n### Response:")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{example['instruction']}\n\n### Response:")


def test_import_tuna_train_keeps_the_released_prompt_order_and_every_row():
    path = RELEASED / "train.davinci_003_w_prob.w_orig_alpaca.json"
    raw = json.loads(path.read_text())
    recs = import_tuna_train(path)
    assert len(recs) == len(raw) == 8  # every row, the original-Alpaca ones included
    assert len({r.id for r in recs}) == 8 and recs[4].id == "0#2" and recs[4].provenance["released_id"] == 0
    checked = 0
    for rec, row in zip(recs, raw):
        assert rec.prompt == row["instruction"]  # verbatim: the string train_tuna.py concatenates with each output
        # the released order: sorted(zip(outputs, scores), key=score, reverse=True) (train_tuna.py L257)
        expect = [o for o, _ in sorted(zip(row["output"], row["score"]), key=lambda x: x[1], reverse=True)]
        assert [c.text for c in rec.candidates] == expect
        assert released_render({"instruction": rec.instruction, "input": rec.input}) == row["instruction"]
        assert rec.provenance.get("identical_outputs", False) == (len(set(row["output"])) == 1)
        checked += 1
    assert checked == 8
    # a tie keeps its file order: row 1 scores -0.40 twice (outputs 1 and 3)
    assert [c.text for c in recs[1].candidates][1:3] == [raw[1]["output"][1], raw[1]["output"][3]]


def test_import_tuna_davinci_reads_the_stored_average_and_renders_the_released_prompt(tmp_path):
    path = RELEASED / "davinci_003_w_prob.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    recs = import_tuna_davinci(path)
    assert len(recs) == 4
    for rec, row in zip(recs, raw):
        assert rec.prompt == released_render(row["orig"]) and rec.gold == row["orig"]["output"]
        expect = [t for t, _ in sorted(zip(row["text"], row["avg_token_prob"]), key=lambda x: x[1], reverse=True)]
        assert [c.text for c in rec.candidates] == expect
        assert [c.score for c in rec.candidates] == sorted(row["avg_token_prob"], reverse=True)
        assert rec.provenance["teacher"]["logprob"] == row["logprob"]
    # the same rows as a gzipped JSON array, and the logprob/length**beta alternative
    arr = tmp_path / "davinci.json.gz"
    with gzip.open(arr, "wt") as f:
        json.dump(raw, f, indent=4)
    assert [r.model_dump() for r in import_tuna_davinci(arr)] == [r.model_dump() | {"provenance": r.provenance | {"file": arr.name}}
                                                                 for r in recs]
    rec13 = import_tuna_davinci(path, beta=1.3)[1]
    lp, n = raw[1]["logprob"], raw[1]["length"]
    assert rec13.ranking.method == "logprob/len^1.3"
    assert [c.score for c in rec13.candidates] == pytest.approx(sorted((a / b**1.3 for a, b in zip(lp, n)), reverse=True))


def test_import_tuna_gpt4_student_prompt_is_instruct_and_gpt4_goes_to_provenance(caplog):
    path = RELEASED / "gpt-4-ranking.json"
    raw = json.loads(path.read_text())
    recs = import_tuna_gpt4_ranking(path)
    # record 1003: its reply echoed the format first, so the released ranks are [4] (GPT-4's own): skipped, logged
    assert [r.id for r in recs] == ["1004", "1005", "1001"]
    assert "field 'rank': [4] names none of the 4 responses" in caplog.text
    by_id = {str(row["id"]): row for row in raw}
    for rec in recs:
        row = by_id[rec.id]
        assert rec.prompt == row["instruct"]  # the student's prompt, not GPT-4's
        assert released_render({"instruction": rec.instruction, "input": rec.input}) == row["instruct"]
        assert rec.provenance["judge"] == {k: row[k] for k in ("prompt", "gpt_eval", "rank_str", "response_4")} | {"ranks": row["ranks"]}
        assert sorted(c.text for c in rec.candidates) == sorted(row["generation"])  # all four, GPT-4's answer dropped
    r1004, r1005, r1001 = recs
    assert [c.text for c in r1004.candidates] == [raw[0]["generation"][k] for k in (1, 0, 2, 3)]
    assert [c.score for c in r1004.candidates] == [4.0, 3.0, 2.0, 1.0]
    # 1005: GPT-4 kept one of the duplicates 1 and 3; the left-out one follows, tied with nothing after it
    assert r1005.ranking.details["order"] == [2, 0, 1, 3] and r1005.ranking.details["missing"] == [3]
    # 1001: ranks [0, 3, 1, 2, 4, 0, 15]: GPT-4's 4 dropped, the repeat and the out-of-range 15 skipped and noted
    assert r1001.ranking.details["order"] == [0, 3, 1, 2]
    assert r1001.ranking.details["notes"] == ["skipped repeated index 0", "skipped index 15 (out of range)"]

    ref = import_tuna_gpt4_ranking(path, reference="include", missing="drop")
    assert [c.text for c in ref[0].candidates][0] == raw[0]["response_4"] and ref[0].candidates[0].source == "gpt-4-0314"
    assert len(ref[1].candidates) == 4 and 3 not in ref[1].ranking.details["order"]  # duplicate dropped, GPT-4's kept
    assert [r.id for r in ref] == ["1004", "1005", "1001"]  # 1003 names GPT-4's answer only: still nothing to rank


def test_importers_name_file_line_and_field(tmp_path):
    rows = json.loads((RELEASED / "train.davinci_003_w_prob.w_orig_alpaca.json").read_text())
    rows[2]["score"] = rows[2]["score"][:3]
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(rows, indent=4))
    line = [i + 1 for i, text in enumerate(bad.read_text().splitlines()) if text == "    {"][2]  # where item 2 starts
    with pytest.raises(TunaError) as e:
        import_tuna_train(bad)
    assert str(e.value) == f"{bad}:{line}: field 'score': has 3 values for 4 responses"
    rows = [json.loads(x) for x in (RELEASED / "davinci_003_w_prob.jsonl").read_text().splitlines()]
    rows[3]["avg_token_prob"][1] = None
    bad = tmp_path / "davinci.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TunaError, match=r"davinci.jsonl:4: field 'avg_token_prob\[1\]': expected a finite number, got None"):
        import_tuna_davinci(bad)
    bad.write_text(json.dumps([{"orig": {"instruction": "x", "output": "y"}, "text": ["a"], "avg_token_prob": [-1]}]) [:-1])
    with pytest.raises(TunaError, match="not closed"):
        import_tuna_davinci(bad)
