"""The pipeline's tables: a run's report (``tuna report`` over its evaluation results, plus per-step timings) and a
sweep's ablation tables over its runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.report import make_report as build
from tuna.records import atomic_write_json


def make_report(eval_dir: Path, results_dir: str, *, manifest: dict[str, Any] | None = None,
                ablation: str | None = None, baseline: str | None = None, paper: str | None = None) -> dict[str, Any]:
    """The run's tables and plots into ``results_dir`` (main.md/.tex, PNGs), every row compared with ``baseline``
    (the starting student), with the paper's numbers when ``paper`` names a numbers file, plus the per-step timings."""
    if not Path(eval_dir).exists():
        return {}
    out = build(Path(eval_dir) / "runs", results_dir, paper=paper, ablation=ablation, baseline=baseline)
    if manifest is not None:
        steps = manifest.get("steps", {})
        atomic_write_json(Path(out) / "timings.json", {k: v.get("wall_s") for k, v in steps.items()})
        lines = ["| step | wall time (s) |", "|---|---|"] + [f"| {k} | {v.get('wall_s', '')} |" for k, v in steps.items()]
        (Path(out) / "timings.md").write_text("\n".join(lines) + "\n")
    return {"dir": str(out), "files": sorted(p.name for p in Path(out).iterdir())}


def make_sweep_report(runs: list[dict[str, Any]], results_dir: str, *, baseline: str | None = None,
                      knob_tables: bool = True) -> dict[str, Any]:
    """One ablation table over the sweep's runs (rows = runs, labelled by their knob values) plus plots."""
    import tempfile

    # gather the runs' results into one tree, tagging each with its sweep label and knob values
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            for res_path in Path(r["run_dir"], "eval", "runs").rglob("results.json"):
                res = json.loads(res_path.read_text())
                spec = res.get("item_scores") or {}
                if "file" in spec:  # the copy lives elsewhere: point at the run's per-item scores
                    spec["file"] = str((res_path.parent / spec["file"]).resolve())
                res.setdefault("tags", {}).update({"run": r["label"], **{k.split(".")[-1]: v for k, v in r["overrides"].items()}})
                res["tags"]["name"] = f"{res['tags'].get('name', '?')} [{r['label']}]"
                dest = Path(tmp) / r["label"] / res_path.relative_to(Path(r["run_dir"], "eval", "runs"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(json.dumps(res))
        if not any(Path(tmp).rglob("results.json")):
            return {}
        out = build(tmp, results_dir, paper=None, ablation="run", baseline=baseline)
        knobs = sorted({k.split(".")[-1] for r in runs for k in r["overrides"]}) if knob_tables else []
        if len(knobs) == 1:  # one knob: also a table and plots keyed by its values
            build(tmp, results_dir, paper=None, ablation=knobs[0])
        elif len(knobs) == 2:  # two knobs: each metric against the first, one line per value of the second
            build(tmp, results_dir, paper=None, ablation=knobs[0], series=knobs[1])
    return {"dir": str(out), "files": sorted(p.name for p in Path(out).iterdir())}
