"""What makes two numbers comparable: the evaluation protocol recorded in every ``results.json``.

A protocol is a flat dict of ``fields`` (which items, shots, prompt template and its digest, truncation, decoding,
judge, review order, ...). Its ``key`` is a digest of those fields, so two runs share a key exactly when they
evaluated the same items the same way; the model and how it was run (device, dtype, backend) are not part of it.
``tuna report`` gives every (metric, protocol key) its own column, labelled by :func:`label`, which names the
scope (full set or slice) and every setting that differs from the benchmark's official protocol (``OFFICIAL``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

OFFICIAL: dict[str, dict[str, Any]] = {
    # Tk-Instruct scripts/eval_tk_instruct.sh: definition + 2 positive examples, sources <= 1024 tokens, 128 new tokens
    "superni": {"num_pos_examples": 2, "max_source_length": 1024, "max_new_tokens": 128, "decoding": "greedy",
                "postprocess": "none", "template": "alpaca"},
    # lmentry/predict.py: greedy, max_length 50; no truncation for instruction-following models
    "lmentry": {"max_new_tokens": 50, "decoding": "greedy", "truncate": False, "template": "alpaca"},
    # FastChat fastchat/eval (2023): one review per question, opponent as Assistant 1; first line parsed as is
    "vicuna": {"orders": "single", "parse": "strict", "template": "alpaca"},
}
"""The official setting of each field that a label mentions when a run deviates from it ("alpaca" is the student
template of the paper's code, not a benchmark setting)."""


def digest(obj: Any, n: int = 16) -> str:
    """sha256 (first ``n`` hex) of a JSON-serialisable object or a string."""
    blob = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:n]


def protocol_key(fields: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    return digest({k: v for k, v in fields.items() if k not in drop}, 12)


def template_fields(template: str, model: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields, extra) for the student template: alpaca/raw are fixed texts (their digest is part of the protocol);
    chat is each model's own template (its digest is recorded, not compared)."""
    from tuna.prompts import ALPACA_PROMPT_NO_INPUT

    if template == "alpaca":
        return {"template": "alpaca", "template_digest": digest(ALPACA_PROMPT_NO_INPUT)}, {}
    if template == "raw":
        return {"template": "raw", "template_digest": digest("{instruction}")}, {}
    extra: dict[str, Any] = {}
    if model:
        try:
            from tuna.models import load_tokenizer

            extra["chat_template_digest"] = digest(str(load_tokenizer(model).chat_template or ""))
        except Exception:  # noqa: BLE001 - the digest is a record; rendering already failed loudly if it mattered
            pass
    return {"template": template, "template_digest": "model's own"}, extra


def make(benchmark: str, fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``protocol`` block of a results.json."""
    return {"benchmark": benchmark, "key": protocol_key(fields), "label": label(benchmark, fields),
            "deviations": deviations(benchmark, fields), "fields": fields, **extra}


def deviations(benchmark: str, fields: dict[str, Any], drop: tuple[str, ...] = ()) -> list[str]:
    """The settings that differ from the official protocol, in words."""
    off = OFFICIAL.get(benchmark, {})
    out = []
    for k, want in off.items():
        if k in drop or k not in fields or fields[k] == want:
            continue
        v = fields[k]
        out.append({
            "num_pos_examples": f"{v}-shot",
            "max_source_length": f"sources ≤{v} tok.",
            "max_new_tokens": f"{v} new tok.",
            "decoding": str(v),
            "postprocess": f"postprocess {v}",
            "template": f"{v} template",
            "truncate": "truncated answers" if v else "untruncated answers",
            "orders": "both orders" if v == "both" else f"orders {v}",
            "parse": f"{v} parse",
        }.get(k, f"{k}={v}"))
    return out


def label(benchmark: str, fields: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    """A short column label: scope first, then every deviation from the official protocol."""
    parts: list[str] = []
    if fields.get("recorded") is False:
        return "protocol not recorded: " + ", ".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "recorded" and k not in drop)
    if benchmark == "superni":
        full = fields.get("scope") == "full"
        parts.append("full 119×100" if full else f"slice {fields.get('tasks')} tasks, {fields.get('items')} inst.")
        if "num_pos_examples" not in drop and fields.get("num_pos_examples") == OFFICIAL["superni"]["num_pos_examples"]:
            parts.append(f"{fields['num_pos_examples']}-shot")  # always say the shots, official or not
    elif benchmark == "lmentry":
        if fields.get("scope") == "full":
            parts.append("full")
        else:
            parts.append(f"slice {fields.get('limit')}/task, approx." if fields.get("limit") else "partial, approx.")
    elif benchmark == "verifiable":
        where = "validation" if fields.get("split") == "val" else "held-out"
        parts.append(f"{where} {fields.get('items')} items, {fields.get('by')} verifier, {fields.get('max_new_tokens')} new tok.")
    elif benchmark == "pairs":
        where = "validation" if fields.get("split") == "val" else "held-out"
        parts.append(f"{where} {fields.get('sets')} ranked sets")
    elif benchmark == "vicuna":
        n = fields.get("questions")
        parts.append(f"{n} q." if n == 80 else f"slice {n} q.")
        parts.append(f"judge {fields.get('judge_model')}")
        if fields.get("orders") == "single":
            parts.append("single order")
    parts += deviations(benchmark, fields, drop)
    return ", ".join(parts)


def legacy(res: dict[str, Any]) -> dict[str, Any]:
    """A protocol for a results.json written before protocols were recorded: its settings without the model, so
    runs with different settings still never share a column."""
    s = dict(res.get("settings") or {})
    for k in ("model", "model_fingerprint", "data", "predictions", "references", "dtype", "backend", "answers",
              "benchmark"):
        s.pop(k, None)
    fields = {"recorded": False, **s}
    return {"benchmark": res.get("benchmark"), "key": protocol_key(fields), "label": label(res.get("benchmark", ""), fields),
            "deviations": [], "fields": fields}


def of(res: dict[str, Any]) -> dict[str, Any]:
    """The protocol of a results.json (recorded, or :func:`legacy`)."""
    p = res.get("protocol")
    return p if isinstance(p, dict) and "fields" in p else legacy(res)
