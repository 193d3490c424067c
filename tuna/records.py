"""The record schema shared by every stage, JSONL reading with validation, and crash-safe writing.

One JSONL line is one instruction with its candidate responses:

    {"id": "alpaca-17", "instruction": "...", "input": "", "gold": "...",
     "candidates": [{"text": "...", "score": -0.71, "token_logprobs": [...], "source": "gemma3-270m"}, ...],
     "ranking": {"by": "teacher", "model": "gemma3-270m", "method": "logprob/len^1.0"},
     "provenance": {...}}

A *candidate set* has ``ranking: null`` (candidates in sampling order). A *ranked set* has a ``ranking``
and its candidates are ordered best-first; scores, when present, never increase down the list.
``prompt`` optionally holds a fully rendered prompt (the paper's released files store the Alpaca template
inside ``instruction``); when set, the data module uses it verbatim instead of applying a template.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuna.errors import TunaError

RecordKind = Literal["candidates", "ranked", "any"]

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


class Candidate(_Strict):
    text: str
    score: float | None = None
    """Higher is better: a teacher's length-normalised log-likelihood, a judge's points, or -rank."""
    token_logprobs: list[float] | None = None
    """Per-token log-probabilities under the model that sampled the text (when the backend gives them)."""
    source: str | None = None
    """Which model or file produced the text."""
    ref_logprob: float | None = None
    """Reference-model log-likelihood of the response, summed over the tokens training scores (EOS included), for
    the objectives with a frozen reference (dpo, ipo); written by ``tuna reference``."""
    ref_tokens: int | None = Field(default=None, ge=1)
    """How many response tokens ``ref_logprob`` sums over (training checks it scores the same tokens)."""
    ref_model: str | None = None
    """The reference model that scored ``ref_logprob``."""


class Ranking(_Strict):
    by: str
    """``teacher`` (log-likelihood), ``judge`` (LLM ranking), ``import`` (released files), ``gold`` or ``human``."""
    model: str | None = None
    method: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Record(_Strict):
    id: str
    instruction: str
    input: str = ""
    candidates: list[Candidate] = Field(min_length=1)
    gold: str | None = None
    ranking: Ranking | None = None
    prompt: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _ranked_scores_descend(self) -> Record:
        if self.ranking is not None:
            scores = [c.score for c in self.candidates]
            for i in range(1, len(scores)):
                a, b = scores[i - 1], scores[i]
                if a is not None and b is not None and b > a:
                    raise ValueError(
                        f"ranked candidates must be best-first: candidates[{i}].score={b} > candidates[{i - 1}].score={a}"
                    )
        return self

    def dump(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True, exclude_defaults=False), ensure_ascii=False)


# ----------------------------------------------------------------------------------------------- reading


def open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-empty line; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise TunaError("file does not exist", path=path)
    with open_bytes(path) as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TunaError(f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})", path=path, line=lineno) from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                hint = " (the line is cut short: was the file truncated by a crash?)" if not raw.endswith(b"\n") else ""
                raise TunaError(f"invalid JSON: {e.msg} at column {e.colno}{hint}", path=path, line=lineno) from None
            if not isinstance(obj, dict):
                raise TunaError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
            yield lineno, obj


def line_of_id(path: str | os.PathLike, rid: str) -> int | None:
    """The line of the record with id ``rid`` (for error messages raised after parsing); None if not found."""
    try:
        for lineno, obj in iter_json_lines(path):
            if str(obj.get("id")) == str(rid):
                return lineno
    except (TunaError, OSError):
        pass
    return None


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "record"


def parse_record(obj: dict[str, Any], *, path: object = "<memory>", line: int | None = None) -> Record:
    try:
        return Record.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        field = _field_path(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "missing required field"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (a typo?)"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            field = field if field != "record" else "candidates"
        extra = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise TunaError(msg + extra, path=path, line=line, field=field) from None


def read_records(
    path: str | os.PathLike,
    *,
    kind: RecordKind = "any",
    min_candidates: int = 1,
) -> list[Record]:
    """Read and validate a JSONL file of records. Raises :class:`TunaError` naming file, line and field."""
    records: list[Record] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_json_lines(path):
        rec = parse_record(obj, path=path, line=lineno)
        if rec.id in seen:
            raise TunaError(f"duplicate id {rec.id!r} (first seen on line {seen[rec.id]})", path=path, line=lineno, field="id")
        seen[rec.id] = lineno
        if kind == "ranked" and rec.ranking is None:
            raise TunaError("expected a ranked set (run `tuna score` or `tuna judge` first)", path=path, line=lineno, field="ranking")
        if len(rec.candidates) < min_candidates:
            raise TunaError(
                f"has {len(rec.candidates)} candidate(s), at least {min_candidates} needed", path=path, line=lineno, field="candidates"
            )
        records.append(rec)
    if not records:
        raise TunaError("holds no records", path=path)
    return records


# ----------------------------------------------------------------------------------------------- writing


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole file so that readers see either the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cut a half-written last line left by a crash. Returns the number of bytes removed.

    A last line that is a whole JSON object without its newline (a file written by another tool) is kept and
    gets its newline: only a torn line is cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        try:
            whole = isinstance(json.loads(data[keep:].decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = False
        if whole:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return 0
        f.truncate(keep)
        return len(data) - keep


class JsonlAppender:
    """Append-only JSONL output that survives SIGKILL: each line goes out in one write and is fsync'ed,
    and a half line from an earlier crash is cut before appending. ``done_ids`` lets a stage resume."""

    def __init__(self, path: str | os.PathLike, *, id_key: str = "id", fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.id_key, self.fsync = id_key, fsync
        repair_jsonl(self.path)
        self.done_ids: set[str] = set()
        if self.path.exists():
            for _, obj in iter_json_lines(self.path):
                if id_key in obj:
                    self.done_ids.add(str(obj[id_key]))
        self._f = open(self.path, "ab")

    def write(self, obj: dict[str, Any] | Record) -> None:
        line = obj.dump() if isinstance(obj, Record) else json.dumps(obj, ensure_ascii=False)
        self._f.write((line + "\n").encode("utf-8"))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        key = obj.id if isinstance(obj, Record) else obj.get(self.id_key)
        if key is not None:
            self.done_ids.add(str(key))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def failed_path_for(out: str | os.PathLike) -> Path:
    """Where a step lists the records it could not produce, with the reason: ``<out>.failed.jsonl``."""
    p = Path(out)
    name = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(name + ".failed.jsonl")


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    atomic_write_text(path, "".join(r.dump() + "\n" for r in records))


# ----------------------------------------------------------------------------------------------- ranked sets


def best_first(scores: list[float]) -> list[int]:
    """Indices by decreasing score; ties keep their file order (the released code's stable ``sorted(...,
    reverse=True)``, train_tuna.py L257)."""
    return sorted(range(len(scores)), key=lambda k: -scores[k])


def positions(order: list[int], items: list[int]) -> dict[int, float]:
    """0-based position of each item in a best-first ``order``; items the order leaves out share the mean of the
    remaining positions (tied last)."""
    pos = {k: float(p) for p, k in enumerate(order)}
    rest = [k for k in items if k not in pos]
    if rest:
        tied = (len(order) + len(items) - 1) / 2
        pos.update({k: tied for k in rest})
    return pos
