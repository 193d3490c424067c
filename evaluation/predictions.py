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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.records import JsonlAppender, atomic_write_json, iter_json_lines

log = logging.getLogger(__name__)

DEFAULT_OUT_ROOT = "runs/eval"


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
    """How the student generates (part of the settings hash, except ``batch_size``/``device``)."""

    backend: str = "hf"
    template: str = "alpaca"
    max_new_tokens: int = 128
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    base_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def hashed(self) -> dict[str, Any]:
        return {"backend": self.backend, "template": self.template, "max_new_tokens": self.max_new_tokens, "dtype": self.dtype}


def render(texts: Sequence[str], template: str, model: str) -> list[str]:
    """Wrap benchmark inputs in the student's prompt template (alpaca | chat | raw)."""
    from tuna.prompts import render_prompt

    tok = None
    if template == "chat":
        from tuna.models import load_tokenizer

        tok = load_tokenizer(model)
    try:
        return [render_prompt(t, template=template, tokenizer=tok) for t in texts]  # type: ignore[arg-type]
    except ValueError as e:
        raise TunaError(str(e), field="template") from None


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
    return make_generator(gen.backend, model, **kwargs)


def generate_cached(
    items: list[dict[str, Any]],
    path: str | os.PathLike,
    *,
    model: str,
    gen: GenerationSettings,
    generator: Any = None,
    chunk: int = 32,
    desc: str = "generate",
) -> dict[str, dict[str, Any]]:
    """Greedy predictions for ``items`` (each ``{"id", "prompt", ...}``), appended to ``path`` chunk by chunk.

    Items whose id is already in ``path`` are not generated again. ``generator`` overrides the student built
    from ``model``/``gen`` (tests pass a stub). Returns ``{id: row}`` for every item."""
    from tuna.feedback.generators import SamplingParams

    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=gen.max_new_tokens, seed=0)
    with JsonlAppender(path) as out:
        todo = [it for it in items if str(it["id"]) not in out.done_ids]
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
            from tuna.models import model_identity, resolve

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
        from tuna.models import content_fingerprint

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


def parse_tags(tags: dict[str, Any] | None) -> dict[str, Any]:
    return dict(tags or {})


OnRow = Callable[[dict[str, Any]], None]
