"""``tuna sweep``: a grid over any pipeline settings, one run per combination, then the ablation tables.

The runs share the steps whose inputs they share (the teacher's samples and scores, the reference log-probs): the
run folders link one ``shared/`` folder and the manifest's completion markers let every run skip them.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.objectives import OBJECTIVES
from tuna.records import atomic_write_json
from tuna_recipes.pipeline.config import PipelineConfig, build_config, set_dotted
from tuna_recipes.pipeline.manifest import Manifest
from tuna_recipes.pipeline.report import make_sweep_report
from tuna_recipes.pipeline.run import run_pipeline


def grid_values(key: str, values: list[Any] | str) -> list[Any]:
    """A grid key's values: its list, or for a ``*.loss.objective`` key ``all``, every registered objective (the
    keys of ``tuna.objectives.OBJECTIVES``, so a new objective joins the objective sweep without an edit here)."""
    if isinstance(values, list):
        return values
    if values == "all" and key.endswith("loss.objective"):
        return list(OBJECTIVES)
    raise TunaError(f"a list of values (or `all` for a *.loss.objective key), got {values!r}", field=f"grid.{key}")


def expand_grid(grid: dict[str, list[Any] | str]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid_values(k, grid[k]) for k in keys))]


def run_label(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"


@dataclass
class SweepConfig:
    """A grid over any pipeline config keys (or named arms, each its own overrides): one run per combination or
    arm, then the ablation tables."""

    base: str | None = None
    """A pipeline YAML (default: the embedded demo settings)."""
    grid: dict[str, list[Any] | str] = field(default_factory=lambda: {"prob_rank.loss.margin": [0.0, 0.1],
                                                                        "prob_rank.loss.mle_weight": [0.0, 1.0]})
    """Dotted pipeline keys → values, e.g. {prob_rank.loss.margin: [0.0, 0.1]}; {prob_rank.loss.objective: all}: every
    registered objective."""
    set: dict[str, Any] = field(default_factory=dict)
    """Fixed overrides for every run (e.g. {variants: [tuna_p], evaluate: [tuna_p]})."""
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named runs, each with its own dotted overrides (applied after `set`), instead of the grid: for comparisons
    whose runs differ in more than one knob (e.g. {best_of_n: {variants: [best_of_n]}, dpo: {...}})."""
    baseline: str | None = None
    """The row every other row is compared with by a paired bootstrap (e.g. "student [untrained]")."""
    name: str = "sweep"
    run_dir: str = "runs/sweep"
    results_dir: str = "results/sweep"


def run_sweep(sw: SweepConfig) -> dict[str, Any]:
    import yaml

    base = asdict(PipelineConfig())
    if sw.base:
        loaded = yaml.safe_load(Path(sw.base).read_text()) or {}
        base = asdict(build_config(loaded))
    for k, v in sw.set.items():
        set_dotted(base, k, v)
    plan = list(sw.arms.items()) if sw.arms else [(run_label(o), o) for o in expand_grid(sw.grid)]
    root = Path(sw.run_dir)
    print(f"sweep {sw.name}: {len(plan)} runs" + (f" ({', '.join(sw.arms)})" if sw.arms else f" over {', '.join(sw.grid)}"))
    runs = []
    for i, (label, overrides) in enumerate(plan):
        d = json.loads(json.dumps(base))
        for k, v in overrides.items():
            set_dotted(d, k, v)
        d.update(name=label, run_dir=str(root / label), results_dir=str(Path(sw.results_dir) / "runs" / label))
        cfg = build_config(d)
        print(f"\n##### sweep run {i + 1}/{len(plan)}: {label}")
        # runs share the data steps whose settings they share (teacher samples and scores)
        shared = root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        run_path = Path(cfg.run_dir)
        run_path.mkdir(parents=True, exist_ok=True)
        link = run_path / "shared"
        if not link.exists():
            link.symlink_to(shared.resolve(), target_is_directory=True)
        data = run_pipeline(cfg)
        runs.append({"label": label, "overrides": overrides, "run_dir": cfg.run_dir, "timings": Manifest(run_path, asdict(cfg)).timings()})
        del data
    tables = make_sweep_report(runs, sw.results_dir, baseline=sw.baseline, knob_tables=not sw.arms)
    atomic_write_json(root / "sweep.json", {"sweep": asdict(sw), "runs": runs, "tables": tables})
    return {"runs": runs, "tables": tables}
