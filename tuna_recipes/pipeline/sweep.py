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
from tuna_recipes.pipeline.steps import run_pipeline


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
class SelectConfig:
    """One knob per arm chosen on the validation split before any held-out run, by a rule fixed in the config: each
    arm takes the value with the highest validation ``metric``; ``tie_metric`` decides between values within
    ``tie_within`` points of the best, and then the smaller value. The search trains once per value, at ``seed``."""

    values: list[float] = field(default_factory=list)
    """The candidate values (e.g. learning rates [3.0e-5, 1.0e-4, 3.0e-4])."""
    key: str = "context_rank.optim.lr"
    """The dotted pipeline key the values go to."""
    keys: dict[str, str | None] = field(default_factory=dict)
    """Arms whose key differs (e.g. {best_of_n: best_of_n.optim.lr}); null: the arm is not tuned."""
    same_as: dict[str, str] = field(default_factory=dict)
    """Arms that take another arm's chosen value instead of a search of their own (e.g. {tuna_flip0.2: tuna})."""
    split: str = "val"
    """The split the values are compared on (its verifiable/pairs results)."""
    metric: str = "verifiable_score"
    """verifiable_score (the split's task score) | pair_accuracy."""
    tie_metric: str = "pair_accuracy"
    tie_within: float = 0.5
    seed: int | None = None
    """The training seed of the search (default: the sweep's first seed, so that run is reused, not repeated)."""
    from_file: str | None = None
    """Take the chosen values from another sweep's selection.json instead of searching."""


@dataclass
class SweepConfig:
    """Sweep pipeline config keys or named arms: one pipeline run per combination (and seed), then ablation tables.

    A grid over any dotted pipeline config keys, or named arms, each with its own overrides; one run per combination
    or arm and per seed."""

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
    seeds: list[int] = field(default_factory=list)
    """Run each arm once per seed (the pipeline's `seed`: the student's training samples and the training order);
    labels `<arm>/s<seed>`. Empty: one run per arm with the config's seed."""
    arm_seeds: dict[str, list[int]] = field(default_factory=dict)
    """Arms run with other seeds than `seeds` (e.g. {untrained: [0]}: nothing is trained, one run is enough)."""
    select: SelectConfig | None = None
    """Choose a knob per arm on the validation split first (e.g. the learning rate); see SelectConfig."""
    only: list[str] = field(default_factory=list)
    """Run only these arms (a sweep may run in parts; sweep.json keeps the runs of every part)."""
    name: str = "sweep"
    run_dir: str = "runs/sweep"
    results_dir: str = "results/sweep"
    launcher: str = "local"
    """local: the runs one after another in this process | slurm: every step of every run a job through submitit
    (resources: the runs' `cluster` section, e.g. set: {cluster.partition: gpu}; docs/slurm.md)."""
    dry_run: bool = False
    """launcher slurm: print every job it would submit (resources, dependencies) and submit nothing."""
    status: bool = False
    """Print each run's steps (done, running, queued, failed with the log's path) and submit nothing."""


@dataclass
class PlannedRun:
    label: str
    arm: str
    overrides: dict[str, Any]
    seed: int | None = None
    selected: dict[str, Any] | None = None


def _short(key: str) -> str:
    return key.split(".")[-1]


def _value_label(v: Any) -> str:
    return f"{v:.0e}".replace("e-0", "e-") if isinstance(v, float) else str(v)


class Sweep:
    """The runs of a sweep: planned from the config, run (or resumed) one after another, recorded in sweep.json."""

    def __init__(self, sw: SweepConfig):
        import yaml

        self.sw = sw
        base = asdict(PipelineConfig())
        if sw.base:
            loaded = yaml.safe_load(Path(sw.base).read_text()) or {}
            base = asdict(build_config(loaded))
        for k, v in sw.set.items():
            set_dotted(base, k, v)
        self.base = base
        self.root = Path(sw.run_dir)
        self.index = self.root / "sweep.json"
        prev = json.loads(self.index.read_text()) if self.index.exists() else {}
        self.runs: dict[str, dict[str, Any]] = {r["label"]: r for r in prev.get("runs", [])} if prev.get("name", sw.name) == sw.name else {}

    def arms(self) -> list[tuple[str, dict[str, Any]]]:
        plan = list(self.sw.arms.items()) if self.sw.arms else [(run_label(o), o) for o in expand_grid(self.sw.grid)]
        if self.sw.only:
            unknown = sorted(set(self.sw.only) - {a for a, _ in plan})
            if unknown:
                raise TunaError(f"unknown arms {unknown} (the sweep has {', '.join(a for a, _ in plan)})", field="only")
            plan = [(a, o) for a, o in plan if a in self.sw.only]
        return plan

    def seeds_of(self, arm: str) -> list[int | None]:
        return list(self.sw.arm_seeds.get(arm, self.sw.seeds)) or [None]

    def tuned_key(self, arm: str) -> str | None:
        sel = self.sw.select
        if sel is None:
            return None
        return sel.keys[arm] if arm in sel.keys else sel.key

    def prepare(self, label: str, overrides: dict[str, Any], seed: int | None, *, create: bool = True) -> PipelineConfig:
        """The run's pipeline config; ``create``: its folder, its link to the sweep's shared/ folder (the runs share the
        data steps whose settings they share: teacher samples and scores, the student's samples)."""
        d = json.loads(json.dumps(self.base))
        for k, v in overrides.items():
            set_dotted(d, k, v)
        if seed is not None:
            d["seed"] = seed
        d.update(name=label, run_dir=str(self.root / label), results_dir=str(Path(self.sw.results_dir) / "runs" / label))
        cfg = build_config(d)
        if create:
            shared = self.root / "shared"
            shared.mkdir(parents=True, exist_ok=True)
            run_path = Path(cfg.run_dir)
            run_path.mkdir(parents=True, exist_ok=True)
            link = run_path / "shared"
            if not link.exists():
                link.symlink_to(shared.resolve(), target_is_directory=True)
        return cfg

    def record(self, cfg: PipelineConfig, arm: str, overrides: dict[str, Any], seed: int | None,
               selected: dict[str, Any] | None = None) -> dict[str, Any]:
        """A finished run into sweep.json."""
        rec = {"label": cfg.name, "arm": arm, "seed": seed, "overrides": overrides, "selected": selected,
               "run_dir": cfg.run_dir, "timings": Manifest(Path(cfg.run_dir), asdict(cfg)).timings()}
        self.runs[cfg.name] = rec
        self.save()
        return rec

    def run(self, label: str, arm: str, overrides: dict[str, Any], seed: int | None, selected: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.prepare(label, overrides, seed)
        run_pipeline(cfg)
        return self.record(cfg, arm, overrides, seed, selected)

    def save(self, **extra: Any) -> None:
        prev = json.loads(self.index.read_text()) if self.index.exists() else {}
        data = {**prev, "name": self.sw.name, "sweep": asdict(self.sw), "runs": list(self.runs.values()), **extra}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.index, data)

    # ------------------------------------------------------------------------------------------- selection

    def selection(self, arms: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """arm -> {"key", "value", "scores"}: the validation search (or the file it was recorded in)."""
        sel = self.sw.select
        if sel is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        if sel.from_file:
            recorded = json.loads(Path(sel.from_file).read_text())
        else:
            recorded = json.loads((self.root / "selection.json").read_text()) if (self.root / "selection.json").exists() else {}
        for arm, overrides in arms:
            key = self.tuned_key(arm)
            if key is None:
                continue
            source = sel.same_as.get(arm, arm)
            if sel.from_file or arm in sel.same_as:
                if source not in recorded:
                    raise TunaError(f"arm {arm}: no selection recorded for {source!r} in "
                                    f"{sel.from_file or self.root / 'selection.json'}", field="select")
                out[arm] = {**recorded[source], "key": key, "from": source}
                continue
            seed = sel.seed if sel.seed is not None else self.seeds_of(arm)[0]
            scores = {}
            for v in sel.values:
                label = f"{arm}/{_short(key)}={_value_label(v)}" + (f"/s{seed}" if seed is not None else "")
                print(f"\n##### selection on {sel.split}: {label}")
                rec = self.run(label, arm, {**overrides, key: v, "verifiable.eval_splits": [sel.split]}, seed,
                               selected={"search": True, "key": key, "value": v})
                scores[_value_label(v)] = {"value": v, **split_metrics(rec["run_dir"], sel.split)}
            out[arm] = {"key": key, "value": choose(scores, sel), "scores": scores, "rule": asdict(sel)}
            recorded[arm] = out[arm]
            atomic_write_json(self.root / "selection.json", recorded)
        return out

    # ------------------------------------------------------------------------------------------- the sweep

    def plan(self) -> list[PlannedRun]:
        """The sweep's runs (after the validation search, when there is one)."""
        arms = self.arms()
        plan = [(arm, seed) for arm, _ in arms for seed in self.seeds_of(arm)]
        print(f"sweep {self.sw.name}: {len(plan)} runs over {len(arms)} arms"
              + (f", seeds {self.sw.seeds}" if self.sw.seeds else "") + (" after a validation search" if self.sw.select else ""))
        chosen = self.selection(arms)
        out = []
        for arm, seed in plan:
            overrides = dict(self.sw.arms.get(arm) or next(o for a, o in arms if a == arm))
            label = arm
            pick = chosen.get(arm)
            if pick is not None:
                overrides[pick["key"]] = pick["value"]
                label += f"/{_short(pick['key'])}={_value_label(pick['value'])}"
            if seed is not None:
                label += f"/s{seed}"
            out.append(PlannedRun(label, arm, overrides, seed, pick and {"key": pick["key"], "value": pick["value"]}))
        assert len(out) == len(plan)
        return out

    def tables(self) -> dict[str, Any]:
        """The ablation tables over the recorded runs (the validation search's runs left out)."""
        runs = [r for r in self.runs.values() if not (r.get("selected") or {}).get("search")]
        tables = make_sweep_report(runs, self.sw.results_dir, baseline=self.sw.baseline, knob_tables=not self.sw.arms)
        self.save(tables=tables)
        return {"runs": runs, "tables": tables}

    def run_all(self) -> dict[str, Any]:
        plan = self.plan()
        for i, p in enumerate(plan):
            print(f"\n##### sweep run {i + 1}/{len(plan)}: {p.label}")
            self.run(p.label, p.arm, p.overrides, p.seed, selected=p.selected)
        return self.tables()


def split_metrics(run_dir: str, split: str) -> dict[str, float | None]:
    """The task score and pair accuracy a run's evaluated model got on ``split`` (its eval/<model>/*@split.json)."""
    out: dict[str, float | None] = {"verifiable_score": None, "pair_accuracy": None}
    for f in Path(run_dir, "eval").glob(f"*/*@{split}.json"):
        m = json.loads(f.read_text())["metrics"]
        if f.name.startswith("verifiable@"):
            out["verifiable_score"] = m.get("score")
        elif f.name.startswith("pairs@"):
            out["pair_accuracy"] = m.get("pair_accuracy")
    return out


def choose(scores: dict[str, dict[str, Any]], sel: SelectConfig) -> Any:
    """The rule: the highest ``metric``; among values within ``tie_within`` points of it, the highest ``tie_metric``;
    then the smallest value."""
    ok = {k: v for k, v in scores.items() if v.get(sel.metric) is not None}
    if not ok:
        raise TunaError(f"no run of the search reported {sel.metric} on {sel.split}", field="select.metric")
    best = max(v[sel.metric] for v in ok.values())
    close = [v for v in ok.values() if v[sel.metric] >= best - sel.tie_within]
    return min(close, key=lambda v: (-(v.get(sel.tie_metric) or float("-inf")), v["value"]))["value"]


def run_sweep(sw: SweepConfig) -> dict[str, Any]:
    return Sweep(sw).run_all()
