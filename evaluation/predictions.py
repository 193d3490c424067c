"""The shared prediction step: prompts in, cached and resumable predictions out, plus the results JSON.

Layout (``out_root`` defaults to ``runs/eval``)::

    runs/eval/<benchmark>/<model-slug>/<settings-hash>/
        settings.json       # everything that changes the predictions (model, prompt format, decoding, limit)
        predictions.jsonl   # one {"id", "prompt", "prediction", ...} per item, appended crash-safe (fsync)
        results.json        # metrics + settings + model identity + tuna version + wall time

A re-run with the same settings only generates the ids missing from ``predictions.jsonl`` (a run killed
half-way resumes); different settings get a different hash, so nothing is ever overwritten by accident.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.config import RuntimeConfig
from tuna.errors import TunaError
from tuna.generation import GenerationConfig
from tuna.records import JsonlAppender, atomic_write_json, iter_json_lines

log = logging.getLogger(__name__)

def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def model_slug(model: str) -> str:
    """A readable folder name for a model reference (a path keeps its last two parts)."""
    p = Path(model)
    name = "-".join(p.parts[-2:]) if len(p.parts) > 1 else model
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def run_dir(out_root: str | os.PathLike, benchmark: str, model: str, settings: dict[str, Any]) -> Path:
    return Path(out_root) / benchmark / model_slug(model) / settings_hash(settings)


SAMPLING_KNOBS = ("top_p", "top_k", "seed")
"""Decoding settings that change an answer only when it is sampled."""


def hashed_settings(template: str, gen: GenerationConfig, rt: RuntimeConfig) -> dict[str, Any]:
    """What of the prompt, decoding and runtime goes into a run's settings hash (not ``batch_size``, ``device`` or
    ``tokenizer``: they do not change the answers). A knob enters only when it differs from its default, so that runs
    keep the hashes they had before it could be set."""
    out: dict[str, Any] = {"backend": rt.backend, "template": template, "max_new_tokens": gen.max_new_tokens, "dtype": rt.dtype}
    if gen.temperature > 0:
        out["temperature"] = gen.temperature
        out.update({k: getattr(gen, k) for k in SAMPLING_KNOBS if getattr(gen, k) != getattr(GenerationConfig, k)})
    if gen.stop:
        out["stop"] = list(gen.stop)
    return out


def decoding_fields(gen: GenerationConfig) -> dict[str, Any]:
    """The decoding as the protocol records it."""
    how = "greedy" if gen.temperature <= 0 else " ".join(
        [f"sampling T={gen.temperature}"] + [f"{k}={getattr(gen, k)}" for k in SAMPLING_KNOBS if getattr(gen, k) != getattr(GenerationConfig, k)])
    return {"decoding": how, "max_new_tokens": gen.max_new_tokens}


def resolve_backend(backend: str, device: str) -> str:
    """``auto``: vLLM's engine on a GPU where vLLM is installed, else batched HF generation."""
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None else "hf"


def resolve_runtime(rt: RuntimeConfig) -> RuntimeConfig:
    """``rt`` with ``auto`` resolved where the model runs: the device (cuda when available), the backend (vLLM there
    when installed, else batched HF) and the dtype (bf16 only where the device computes it natively)."""
    from tuna.precision import device_type, resolve_dtype

    if rt.backend not in ("hf", "vllm", "auto"):
        return rt
    # the resolved dtype is part of the settings hash: fp32 and bf16 are kept apart
    device = device_type(rt.device)
    backend = resolve_backend(rt.backend, device)
    return replace(rt, device=device, backend=backend, dtype=resolve_dtype(rt.dtype, "cuda" if backend == "vllm" else device))


def render(texts: Sequence[str], template: str, model: str, tokenizer: Any = None) -> list[str]:
    """Wrap benchmark inputs in the student's prompt template (alpaca | chat | raw)."""
    from tuna.prompts import render_prompt

    tok = None
    if template == "chat":
        from tuna.models import load_tokenizer

        tok = tokenizer if tokenizer is not None else load_tokenizer(model)
    try:
        return [render_prompt(t, template=template, tokenizer=tok) for t in texts]  # type: ignore[arg-type]
    except ValueError as e:
        raise TunaError(str(e), field="template") from None


def context_length(ref: str) -> int | None:
    """The context window of a model's config (max_position_embeddings and its aliases; None when unknown)."""
    from tuna.models import TINY_NAME, resolve

    if ref == TINY_NAME:
        return 2048  # tuna.models.tiny_model
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(resolve(ref))
    except Exception:  # noqa: BLE001 - unknown is an answer: the caller asks for max_model_len
        return None
    for c in (cfg, getattr(cfg, "text_config", None)):
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
            v = getattr(c, attr, None) if c is not None else None
            if isinstance(v, int) and v > 0:
                return v
    return None


@dataclass
class PromptBudget:
    """The model's tokenizer and context window: every prompt plus its new tokens must fit, whatever the backend
    (vLLM and OpenAI-compatible servers reject longer prompts; HF generation would run past its positions)."""

    tokenizer: Any
    context: int
    model: str

    def count(self, prompt: str) -> int:
        # as the generators encode: the tokenizer's BOS unless the rendered prompt already starts with it
        bos = getattr(self.tokenizer, "bos_token", None)
        add = not (bos and prompt.startswith(bos))
        return len(self.tokenizer(prompt, add_special_tokens=add)["input_ids"])

    def check(self, items: list[dict[str, Any]], max_new_tokens: int, desc: str) -> int:
        """Raises on the first item whose prompt does not fit; returns the longest prompt (tokens)."""
        longest = 0
        for it in items:
            n = self.count(it["prompt"])
            longest = max(longest, n)
            if n + max_new_tokens > self.context:
                raise TunaError(f"{desc} item {it['id']}: prompt {n} tokens + {max_new_tokens} new tokens > the "
                                f"{self.context}-token context of {self.model} (lower max_new_tokens or the source length, "
                                f"or set runtime.max_model_len if the server allows more)", field="runtime.max_model_len")
        return longest


def prompt_budget(model: str, rt: RuntimeConfig) -> PromptBudget:
    """The tokenizer (``rt.tokenizer`` or the model's) and context window (``rt.max_model_len`` or the config's)."""
    from tuna.models import load_tokenizer

    ref = rt.tokenizer or model
    try:
        tok = load_tokenizer(ref)
    except TunaError as e:
        raise TunaError(f"backend {rt.backend}: need the model's tokenizer to truncate sources and check that prompts fit; "
                        f"{e} (pass --runtime.tokenizer with a folder or hub id holding it)", field="runtime.tokenizer") from None
    ctx = rt.max_model_len or context_length(ref)
    if not ctx:
        raise TunaError(f"the context window of {ref} is unknown: pass --runtime.max_model_len", field="runtime.max_model_len")
    return PromptBudget(tok, int(ctx), model)


def make_student(model: str, rt: RuntimeConfig) -> Any:
    from tuna.feedback.generators import make_generator

    kwargs: dict[str, Any] = {}
    if rt.backend == "hf":
        kwargs.update(batch_size=rt.batch_size, dtype=rt.dtype, device=rt.device)
    elif rt.backend == "openai":
        if rt.base_url:
            kwargs["base_url"] = rt.base_url
        kwargs.setdefault("mode", "completions")
    elif rt.backend == "vllm":
        kwargs["dtype"] = rt.dtype
        if rt.max_model_len:
            kwargs["max_model_len"] = rt.max_model_len
    return make_generator(rt.backend, model, **kwargs)


def generate_cached(
    items: list[dict[str, Any]],
    path: str | os.PathLike,
    *,
    model: str,
    gen: GenerationConfig,
    runtime: RuntimeConfig,
    generator: Any = None,
    budget: PromptBudget | None = None,
    chunk: int = 32,
    desc: str = "generate",
) -> dict[str, dict[str, Any]]:
    """Predictions for ``items`` (each ``{"id", "prompt", ...}``), appended to ``path`` chunk by chunk, decoded as
    ``gen`` says (one answer per item) by the model ``runtime`` runs.

    Items whose id is already in ``path`` are not generated again; the others are first checked against
    ``budget`` (every prompt must fit the context with its new tokens). ``generator`` overrides the student built
    from ``model``/``gen`` (tests pass a stub). Returns ``{id: row}`` for every item."""
    if gen.n != 1:
        raise TunaError(f"a benchmark answer is one generation: generation.n must be 1, got {gen.n}", field="generation.n")
    with JsonlAppender(path) as out:
        todo = [it for it in items if str(it["id"]) not in out.done_ids]
        if todo and budget is not None:
            budget.check(todo, gen.max_new_tokens, desc)
        if todo:
            log.info("%s: %d of %d items to generate (%d cached) -> %s", desc, len(todo), len(items), len(items) - len(todo), path)
            if generator is None:
                generator = make_student(model, runtime)
            t0 = time.monotonic()
            for start in range(0, len(todo), chunk):
                batch = todo[start : start + chunk]
                outs = generator.generate([it["prompt"] for it in batch], gen)
                for it, gens in zip(batch, outs):
                    g = gens[0]
                    row = {k: v for k, v in it.items() if k not in ("references",)}
                    row.update(id=str(it["id"]), prediction=g.text.strip(), num_tokens=g.num_tokens, finish_reason=g.finish_reason)
                    out.write(row)
                done = min(start + chunk, len(todo))
                rate = done / max(time.monotonic() - t0, 1e-9)
                log.info("%s: %d/%d (%.2f items/s)", desc, done, len(todo), rate)
    rows = {str(obj["id"]): obj for _, obj in iter_json_lines(path)} if Path(path).exists() else {}
    return {str(it["id"]): rows[str(it["id"])] for it in items if str(it["id"]) in rows}


def provenance(model: str | None) -> dict[str, Any]:
    import tuna

    ident: dict[str, Any] = {"ref": model}
    if model:
        try:
            from tuna.hashing import model_identity
            from tuna.models import resolve

            ident = model_identity(model)
            if not Path(model).exists():
                try:  # embedded names: fingerprint the converted folder too
                    ident["resolved"] = model_identity(resolve(model))
                except Exception:  # noqa: BLE001 - identity is best effort, never fatal
                    pass
        except Exception:  # noqa: BLE001
            pass
    return {"model_identity": ident, "tuna_version": tuna.__version__}


def write_results(
    directory: str | os.PathLike,
    *,
    benchmark: str,
    model: str | None,
    settings: dict[str, Any],
    metrics: dict[str, Any],
    wall_time_s: float,
    tags: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    path = Path(directory) / "results.json"
    obj = {
        "benchmark": benchmark,
        "model": model,
        "tags": dict(tags or {}),
        "settings": settings,
        "settings_hash": settings_hash(settings),
        **provenance(model),
        "wall_time_s": round(wall_time_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": metrics,
        **(extra or {}),
    }
    atomic_write_json(path, obj)
    return path


def start_run(out_root: str, benchmark: str, model: str, settings: dict[str, Any]) -> Path:
    """The run folder for these settings. A model folder's content fingerprint is added to ``settings`` (in place,
    so results record it too): a model retrained at the same path gets new predictions, not the cached ones."""
    if model and (Path(model) / "config.json").exists():
        from tuna.hashing import content_fingerprint

        settings["model_fingerprint"] = content_fingerprint(model)
    d = run_dir(out_root, benchmark, model, settings)
    d.mkdir(parents=True, exist_ok=True)
    sp = d / "settings.json"
    if sp.exists():
        old = json.loads(sp.read_text())
        if settings_hash(old) != settings_hash(settings):  # only possible on a hash collision or a hand edit
            raise TunaError("settings.json does not match this run's settings", path=sp)
    else:
        atomic_write_json(sp, settings)
    return d


class Timer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


