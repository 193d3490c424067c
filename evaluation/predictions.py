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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
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


@dataclass
class GenerationSettings:
    """How the student generates (part of the settings hash, except ``batch_size``/``device``/``tokenizer``)."""

    backend: str = "hf"
    """hf | openai | vllm (resolved from ``auto`` by :func:`resolve_backend`)."""
    template: str = "alpaca"
    max_new_tokens: int = 128
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    base_url: str | None = None
    temperature: float = 0.0
    """0 = greedy (every benchmark's default here)."""
    tokenizer: str | None = None
    """The model's tokenizer when ``model`` does not name one (an OpenAI-compatible server's model name)."""
    max_model_len: int | None = None
    """The context window prompts must fit in with their new tokens (None: the model config's)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def hashed(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "template": self.template, "max_new_tokens": self.max_new_tokens,
                               "dtype": self.dtype}
        if self.temperature > 0:  # only when set, so greedy runs keep the hashes they had
            out["temperature"] = self.temperature
        return out

    def decoding(self) -> dict[str, Any]:
        """The decoding settings as the protocol records them."""
        return {"decoding": "greedy" if self.temperature <= 0 else f"sampling T={self.temperature}",
                "max_new_tokens": self.max_new_tokens}


def resolve_backend(backend: str, device: str) -> str:
    """``auto``: vLLM's engine on a GPU where vLLM is installed, else batched HF generation."""
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None else "hf"


def generation_settings(backend: str, template: str, max_new_tokens: int, batch_size: int, dtype: str, device: str,
                        base_url: str | None, *, temperature: float = 0.0, tokenizer: str | None = None,
                        max_model_len: int | None = None) -> GenerationSettings:
    """Generation settings with ``auto`` resolved where the model runs: the device (cuda when available), the backend
    (vLLM there when installed, else batched HF) and the dtype (bf16 only where the device computes it natively)."""
    from tuna.precision import device_type, resolve_dtype

    if backend in ("hf", "vllm", "auto"):  # the resolved dtype is part of the settings hash: fp32 and bf16 are kept apart
        device = device_type(device)
        backend = resolve_backend(backend, device)
        dtype = resolve_dtype(dtype, "cuda" if backend == "vllm" else device)
    return GenerationSettings(backend=backend, template=template, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              dtype=dtype, device=device, base_url=base_url, temperature=temperature, tokenizer=tokenizer,
                              max_model_len=max_model_len)


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
                                f"or set max_model_len if the server allows more)", field="max_model_len")
        return longest


def prompt_budget(model: str, gen: GenerationSettings) -> PromptBudget:
    """The tokenizer (``gen.tokenizer`` or the model's) and context window (``gen.max_model_len`` or the config's)."""
    from tuna.models import load_tokenizer

    ref = gen.tokenizer or model
    try:
        tok = load_tokenizer(ref)
    except TunaError as e:
        raise TunaError(f"backend {gen.backend}: need the model's tokenizer to truncate sources and check that prompts fit; "
                        f"{e} (pass --tokenizer with a folder or hub id holding it)", field="tokenizer") from None
    ctx = gen.max_model_len or context_length(ref)
    if not ctx:
        raise TunaError(f"the context window of {ref} is unknown: pass --max_model_len", field="max_model_len")
    return PromptBudget(tok, int(ctx), model)


def make_student(model: str, gen: GenerationSettings) -> Any:
    from tuna.feedback.generators import make_generator

    kwargs: dict[str, Any] = dict(gen.extra)
    if gen.backend == "hf":
        kwargs.update(batch_size=gen.batch_size, dtype=gen.dtype, device=gen.device)
    elif gen.backend == "openai":
        if gen.base_url:
            kwargs["base_url"] = gen.base_url
        kwargs.setdefault("mode", "completions")
    elif gen.backend == "vllm":
        kwargs["dtype"] = gen.dtype
        if gen.max_model_len:
            kwargs["max_model_len"] = gen.max_model_len
    return make_generator(gen.backend, model, **kwargs)


def generate_cached(
    items: list[dict[str, Any]],
    path: str | os.PathLike,
    *,
    model: str,
    gen: GenerationSettings,
    generator: Any = None,
    budget: PromptBudget | None = None,
    chunk: int = 32,
    desc: str = "generate",
) -> dict[str, dict[str, Any]]:
    """Predictions for ``items`` (each ``{"id", "prompt", ...}``), appended to ``path`` chunk by chunk (greedy
    unless ``gen.temperature`` > 0, then sampled with seed 0).

    Items whose id is already in ``path`` are not generated again; the others are first checked against
    ``budget`` (every prompt must fit the context with its new tokens). ``generator`` overrides the student built
    from ``model``/``gen`` (tests pass a stub). Returns ``{id: row}`` for every item."""
    from tuna.feedback.generators import SamplingParams

    params = SamplingParams(n=1, temperature=gen.temperature, max_new_tokens=gen.max_new_tokens, seed=0)
    with JsonlAppender(path) as out:
        todo = [it for it in items if str(it["id"]) not in out.done_ids]
        if todo and budget is not None:
            budget.check(todo, gen.max_new_tokens, desc)
        if todo:
            log.info("%s: %d of %d items to generate (%d cached) -> %s", desc, len(todo), len(items), len(items) - len(todo), path)
            if generator is None:
                generator = make_student(model, gen)
            t0 = time.monotonic()
            for start in range(0, len(todo), chunk):
                batch = todo[start : start + chunk]
                outs = generator.generate([it["prompt"] for it in batch], params)
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


