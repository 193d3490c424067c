"""Content hashes that decide whether work can be reused: files, configs and model folders.

A run's manifest keys each step by the hashes of its inputs; evaluation keys cached predictions by a model folder's
content fingerprint, so a model retrained at the same path is evaluated again, not served stale predictions."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 (16 hex) of a file's bytes, or of a folder's files (names and contents, dot files skipped)."""
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                h.update(f.name.encode())
                h.update(file_hash(f).encode())
        return h.hexdigest()[:16]
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def config_hash(obj: Any) -> str:
    """SHA-256 (16 hex) of a JSON-able object, keys sorted."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 (16 hex) of a model folder's weights and config, read in full: two trainings of one architecture
    differ only in their bytes. Memoised in ``.tuna_fingerprint.json`` beside them, keyed by each file's size and
    mtime, so a large model is read once per write."""
    from tuna.records import atomic_write_json

    p = Path(folder)
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + [p / "config.json"]
    stats = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()}
    memo = p / ".tuna_fingerprint.json"
    try:
        old = json.loads(memo.read_text())
        if old.get("files") == stats:
            return old["sha256"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(block)
    digest = h.hexdigest()[:16]
    try:
        atomic_write_json(memo, {"files": stats, "sha256": digest})
    except OSError:  # a read-only model folder: just not memoised
        pass
    return digest


def is_model_folder(ref: str | os.PathLike) -> bool:
    p = Path(ref)
    return p.is_dir() and (p / "config.json").exists()


def model_hash(ref: str) -> str:
    """A model folder's content fingerprint; any other reference (a hub id, an embedded name) as it is."""
    return content_fingerprint(ref) if is_model_folder(ref) else ref


def model_identity(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What results files record about a model: its reference and, for folders, a content fingerprint."""
    ref = str(name_or_path)
    ident: dict[str, Any] = {"ref": ref}
    if is_model_folder(ref):
        ident["fingerprint"] = content_fingerprint(ref)
    return ident
