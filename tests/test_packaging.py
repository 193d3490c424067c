"""Every declared dependency is used and documented: imported by the code, or one of the few that other packages
need without an import (each with its reason in the README's dependency table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# distribution name -> import name, where they differ
IMPORT_NAMES = {"rouge-score": "rouge_score", "pyyaml": "yaml"}
# needed without an import by tuna (the README's table says who needs them)
NOT_IMPORTED = {"accelerate", "gguf", "tensorboard"}


def declared() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in deps]


def imported_modules() -> set[str]:
    names = set()
    for path in [*(REPO / "tuna").rglob("*.py"), *(REPO / "evaluation").rglob("*.py"), *(REPO / "tuna_recipes").rglob("*.py")]:
        for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", path.read_text(), re.M):
            names.add(m.group(1))
    return names


def test_every_dependency_is_imported_or_needed_by_another_package():
    deps = declared()
    assert len(deps) >= 15 and "torch" in deps
    used = imported_modules()
    unused = [d for d in deps if d not in NOT_IMPORTED and IMPORT_NAMES.get(d, d).replace("-", "_") not in used]
    assert not unused, f"declared in pyproject.toml but imported nowhere in tuna/, evaluation/ or tuna_recipes/: {unused}"
    assert NOT_IMPORTED <= set(deps)


def test_the_readme_table_lists_every_dependency():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## What each dependency is for"):]
    table = table[: table.index("\n## ")]
    listed = set()
    for row in re.findall(r"^\| ([^|]+) \|", table, re.M):
        listed |= {re.sub(r"\[.*\]", "", name).strip().lower() for name in row.split(",")}
    missing = [d for d in declared() if d not in listed]
    assert not missing, f"missing from the README's dependency table: {missing}"
