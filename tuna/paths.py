"""Where the shared data lives: ``$TUNA_SHARED_DATA``, else ``shared/data`` beside the repository checkout.

The real data (Alpaca, Super-NI, LMentry, Vicuna QA, AlpacaFarm) is never copied into the repository; the README
says how to get it. Every command that has a default data file asks here."""

from __future__ import annotations

import os
from pathlib import Path

from tuna.errors import TunaError

DATA_ENV = "TUNA_SHARED_DATA"


def data_dir() -> Path:
    """``$TUNA_SHARED_DATA``, else ``../shared/data`` from the repository root (a source checkout), else from the
    working directory."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside_repo if beside_repo.exists() else Path.cwd().parent / "shared" / "data"


def data_file(sub: str, given: str | os.PathLike | None = None, *, field: str = "data") -> str:
    """``given`` if set, else ``data_dir() / sub``, which must exist (an error names the path and the variable)."""
    if given:
        return str(given)
    p = data_dir() / sub
    if not p.exists():
        raise TunaError(f"no data given and the default {p} does not exist (pass --{field} or set {DATA_ENV})", field=field)
    return str(p)


def expand_data(path: str) -> str:
    """A path that may start with ``{data}`` (the shared data folder), as the pipeline configs write them."""
    return path.replace("{data}", str(data_dir()))
