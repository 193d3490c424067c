"""The verifiable experiment's evidence: per-item results in compact form, and every table rebuilt from them.

A sweep's runs (``tuna sweep --config experiments/verifiable/experiment.yaml``) leave predictions, scores and
manifests under ``runs/``, which are not committed. :func:`export_sweep` keeps what every number needs, small
enough to commit: per run and split one gzipped JSONL of item rows (``id``, ``score``, ``prediction``, and for the
ranked evaluation sets ``right``/``pairs``/``tied``), the items' metadata (benchmark, task, cluster, seen/unseen
task, trained/held-out template), and ``runs.json`` (each run's arm, seed, chosen value, overrides, wall times,
versions, the ranker's measured agreement). :func:`make_evidence_report` (``tuna report --evidence DIR``) rebuilds
every table and plot from those files alone.

**Intervals** come from a two-way bootstrap: in each of ``resamples`` replicates the training seeds are drawn with
replacement (paired across arms: seed k of every arm trained on the same student samples) and the items are drawn
as clusters within their task (an LMentry question with all its templates; a Super-NI instance), so an interval
covers both the training seed's variance and the items' (tasks are fixed: the per-task table shows them). With 3
seeds the seed part is estimated from 3 values, which a reader should keep in mind. A difference between two arms
uses the same draws for both. Its p-value is the bootstrap's two-sided tail ((count + 1) / (resamples + 1));
across the comparisons of the table, Holm's step-down correction controls the family-wise error, and the table also
gives each difference's Bonferroni interval (level 1 - 0.05 / m), the interval that holds after correction.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuna.errors import TunaError
from tuna.hashing import config_hash
from tuna.records import atomic_write_json, atomic_write_text

RESAMPLES = 10000
SEED = 0
LEVEL = 0.95
SPLITS = ("val", "heldout")


# ----------------------------------------------------------------------------------------------- export


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime 0: the same rows give the same bytes
        for r in rows:
            f.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    tmp.replace(path)


def item_meta(rec: dict[str, Any]) -> dict[str, Any]:
    """An item's grouping fields: benchmark, task, cluster (an LMentry question, a Super-NI instance), whether its task
    and its template were trained on, its label."""
    v = rec["provenance"]["verifier"]
    cluster = f"{v['task']}|{v['question']}" if v["benchmark"] == "lmentry" else rec["id"]
    return {"id": rec["id"], "benchmark": v["benchmark"], "task": v["task"], "cluster": cluster,
            "task_seen": bool(v.get("task_seen", True)), "template_seen": bool(v.get("template_seen", True)),
            "label": v.get("label")}


def _model_result(run_dir: Path, label: str, name: str) -> tuple[dict[str, Any], Path] | None:
    """The results.json an evaluation step copied to eval/<label>/<name>.json, and the folder of its item files."""
    from evaluation.predictions import run_dir as eval_run_dir

    marker = run_dir / "eval" / label / f"{name}.json"
    if not marker.exists():
        return None
    res = json.loads(marker.read_text())
    d = eval_run_dir(str(run_dir / "eval" / "runs"), res["benchmark"], res["model"], res["settings"])
    return res, d


def _split_file(run_dir: Path, split: str, base: Path) -> Path | None:
    man = json.loads((run_dir / "manifest.json").read_text())
    step = man["steps"].get("verifiable_splits")
    for p in (step or {}).get("outputs", []):
        if Path(p).name == f"{split}.jsonl":
            return base / p
    return None


def _pairs_draw(man: dict[str, Any], split: str, base: Path) -> Path | None:
    """The ranked sets a run (its manifest) measured pair accuracy on (drawn by the run, or a committed draw it was
    given)."""
    step = man["steps"].get(f"rank_{split}_pairs")
    if step and step.get("outputs"):
        return base / step["outputs"][0]
    given = ((man["config"].get("verifiable") or {}).get("pairs_files") or {}).get(split)
    return base / given if given else None


def export_pairs_draw(src: Path, out: Path) -> str:
    """Commit a split's ranked pair sets to ``out`` (gzipped) unless it holds them already; returns the draw's
    fingerprint (the hash of its records, whatever the file's compression)."""
    from tuna.records import read_records

    rows = [r.model_dump(mode="json", exclude_none=True) for r in read_records(src, kind="ranked")]
    fingerprint = config_hash(rows)
    if not out.exists():
        _write_jsonl_gz(out, rows)
    return fingerprint


def _ranker_agreement(run_dir: Path, base: Path) -> dict[str, Any] | None:
    from evaluation.verifiable import ranker_agreement
    from tuna.records import read_records

    man = json.loads((run_dir / "manifest.json").read_text())
    step = next((v for k, v in man["steps"].items() if k.startswith("rank_tuna_c")), None)
    if not step or not step.get("outputs") or not (base / step["outputs"][0]).exists():
        return None
    recs = read_records(base / step["outputs"][0], kind="ranked")
    agree = ranker_agreement(recs)
    tied = sum(1 for r in recs if len({c.score for c in r.candidates}) == 1)
    return {**agree, "sets": len(recs), "sets_all_tied": tied}


def export_sweep(runs_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Compact per-item results of every run of a sweep (``<runs_dir>/sweep.json``) into ``<out_dir>/items/`` and
    ``<out_dir>/runs.json``; returns the runs.json content. Runs of the same sweep exported earlier into ``out_dir``
    (parts run elsewhere) are kept unless this export holds them too."""
    runs_dir, out = Path(runs_dir), Path(out_dir)
    index = runs_dir / "sweep.json"
    if not index.exists():
        raise TunaError("no sweep.json: run the sweep first", path=index)
    sweep = json.loads(index.read_text())
    # the paths a sweep records are relative to the folder it ran in: its run_dir's parent chain
    rel = Path((sweep.get("sweep") or {}).get("run_dir", runs_dir.name))
    base = runs_dir.resolve()
    if not rel.is_absolute():
        for _ in rel.parts:
            base = base.parent
    items_dir = out / "items"
    rows_out: list[dict[str, Any]] = []
    meta_written: set[str] = set()
    for run in sweep["runs"]:
        rd = base / run["run_dir"]
        man = json.loads((rd / "manifest.json").read_text())
        cfg = man["config"]
        label = cfg["evaluate"][0] if cfg["evaluate"] else None
        entry = {"label": run["label"], "arm": run.get("arm", run["label"]), "seed": run.get("seed"),
                 "selected": run.get("selected"), "search": bool((run.get("selected") or {}).get("search")),
                 "overrides": run.get("overrides", {}), "model": label, "flip": (cfg.get("verifiable") or {}).get("flip", 0.0),
                 "timings": {k: v.get("wall_s") for k, v in man["steps"].items()}, "versions": man.get("versions", {}),
                 "train": {k: v.get("train") for k, v in man["steps"].items() if v.get("train")},
                 "ranker": _ranker_agreement(rd, base), "splits": {}}
        for split in SPLITS:
            if split not in (cfg.get("verifiable") or {}).get("eval_splits", []):
                continue
            task = _model_result(rd, label, f"verifiable@{split}") if label else None
            pairs = _model_result(rd, label, f"pairs@{split}") if label else None
            if task is None:
                continue
            if split not in meta_written:
                sf = _split_file(rd, split, base)
                if sf is not None:
                    from tuna.records import read_records

                    _write_jsonl_gz(items_dir / f"{split}.meta.jsonl.gz", [item_meta(r.model_dump()) for r in read_records(sf)])
                    meta_written.add(split)
            scores = {r["id"]: r["score"] for r in _read_jsonl(task[1] / "scores.jsonl")}
            pred_rows = {r["id"]: r for r in _read_jsonl(task[1] / "predictions.jsonl")}
            prow = {r["id"]: r for r in _read_jsonl(pairs[1] / "scores.jsonl")} if pairs else {}
            draw = _pairs_draw(man, split, base) if pairs else None
            if draw is not None and draw.exists():
                entry.setdefault("pairs_draw", {})[split] = export_pairs_draw(draw, out / "pairs" / f"{split}.ranked.jsonl.gz")
            rows = []
            for i, s in scores.items():
                p = pred_rows.get(i, {})
                row = {"id": i, "score": s, "prediction": p.get("prediction", ""), "finish_reason": p.get("finish_reason")}
                if i in prow:
                    row.update(right=prow[i]["right"], pairs=prow[i]["pairs"], tied=prow[i]["tied"])
                rows.append(row)
            f = items_dir / f"{run['label'].replace('/', '__')}.{split}.jsonl.gz"
            _write_jsonl_gz(f, rows)
            entry["splits"][split] = {"file": str(f.relative_to(out)), "items": len(rows),
                                      "wall_s": {"verifiable": task[0].get("wall_time_s"),
                                                 "pairs": pairs[0].get("wall_time_s") if pairs else None}}
        rows_out.append(entry)
    rows_out = merge_export(out / "runs.json", sweep.get("name"), rows_out)
    data = {"sweep": sweep.get("name"), "config": sweep.get("sweep"), "runs": rows_out}
    atomic_write_json(out / "runs.json", data)
    selection = runs_dir / "selection.json"
    if selection.exists():
        atomic_write_json(out / "selection.json", json.loads(selection.read_text()))
    return data


def merge_export(earlier: Path, sweep_name: str | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A sweep may run in parts, in other folders: the runs an earlier export of the same sweep holds (``earlier``,
    its runs.json) are kept, before ``rows``, unless ``rows`` holds a run of the same label."""
    if not earlier.exists():
        return rows
    prev = json.loads(earlier.read_text())
    if prev.get("sweep") != sweep_name:
        raise TunaError(f"holds sweep {prev.get('sweep')!r}, not {sweep_name!r}: export to another folder", path=earlier)
    fresh = {r["label"] for r in rows}
    kept = [r for r in prev["runs"] if r["label"] not in fresh]
    if kept:
        print(f"evidence-export: kept {len(kept)} runs of the earlier export in {earlier}")
    return kept + rows


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class Arm:
    name: str
    seeds: list[Any]
    """Seed values (None for a seed-independent arm)."""
    scores: dict[str, np.ndarray]
    """split -> (seeds, items) task scores in the split's item order."""
    right: dict[str, np.ndarray]
    pairs: dict[str, np.ndarray]
    tied: dict[str, np.ndarray]
    predictions: dict[str, list[list[str]]]
    """split -> per seed, the predictions in item order."""
    runs: list[dict[str, Any]]
    finish: dict[str, list[list[str | None]]] = field(default_factory=dict)
    """split -> per seed, each prediction's finish reason (``length``: it ran to the token limit)."""


class Evidence:
    """The compact results of one sweep: items per split, and per arm its seeds' item scores."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        runs_file = self.dir / "runs.json"
        if not runs_file.exists():
            raise TunaError("no runs.json: export the sweep first (tuna evidence-export)", path=runs_file)
        self.index = json.loads(runs_file.read_text())
        self.meta = {s: _read_jsonl(self.dir / "items" / f"{s}.meta.jsonl.gz") for s in SPLITS
                     if (self.dir / "items" / f"{s}.meta.jsonl.gz").exists()}
        self.arms: dict[str, Arm] = {}
        final = [r for r in self.index["runs"] if not r["search"]]
        by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in final:
            by_arm[r["arm"]].append(r)
        for arm, runs in by_arm.items():
            runs.sort(key=lambda r: (r["seed"] is None, r["seed"]))
            self.arms[arm] = self._load_arm(arm, runs)
        self.selection = json.loads((self.dir / "selection.json").read_text()) if (self.dir / "selection.json").exists() else {}

    def _load_arm(self, arm: str, runs: list[dict[str, Any]]) -> Arm:
        scores, right, pairs, tied, preds, finish = {}, {}, {}, {}, {}, {}
        for split, meta in self.meta.items():
            ids = [m["id"] for m in meta]
            rows_per_seed = []
            for r in runs:
                info = r["splits"].get(split)
                if info is None:
                    break
                by_id = {x["id"]: x for x in _read_jsonl(self.dir / info["file"])}
                missing = [i for i in ids if i not in by_id]
                if missing:
                    raise TunaError(f"run {r['label']} lacks {len(missing)} {split} items (e.g. {missing[0]})",
                                    path=self.dir / info["file"])
                rows_per_seed.append([by_id[i] for i in ids])
            else:
                scores[split] = np.array([[x["score"] for x in rows] for rows in rows_per_seed], dtype=float)
                preds[split] = [[x.get("prediction", "") for x in rows] for rows in rows_per_seed]
                finish[split] = [[x.get("finish_reason") for x in rows] for rows in rows_per_seed]
                # an item without a pair set: its samples could not be drawn (all empty), so it holds no pair
                if any("pairs" in x for x in rows_per_seed[0]):
                    right[split] = np.array([[x.get("right", 0) for x in rows] for rows in rows_per_seed], dtype=float)
                    pairs[split] = np.array([[x.get("pairs", 0) for x in rows] for rows in rows_per_seed], dtype=float)
                    tied[split] = np.array([[x.get("tied", 0) for x in rows] for rows in rows_per_seed], dtype=float)
        return Arm(arm, [r["seed"] for r in runs], scores, right, pairs, tied, preds, runs, finish)

    def add_constant(self, train_file: str | Path | None = None) -> None:
        """The constant-answer control (each task's majority training label), scored on every split by the items'
        own verifiers: no model, no seed. Its predictions are in items/constant.<split>.jsonl.gz once exported."""
        const_files = {s: self.dir / "items" / f"constant.{s}.jsonl.gz" for s in self.meta}
        if not all(f.exists() for f in const_files.values()):
            return
        scores, preds = {}, {}
        for split, f in const_files.items():
            by_id = {x["id"]: x for x in _read_jsonl(f)}
            ids = [m["id"] for m in self.meta[split]]
            scores[split] = np.array([[by_id[i]["score"] for i in ids]])
            preds[split] = [[by_id[i]["prediction"] for i in ids]]
        self.arms["constant"] = Arm("constant", [None], scores, {}, {}, {}, preds, [])


def export_constant(splits_dir: str | Path, out_dir: str | Path, by: str = "task") -> dict[str, Any]:
    """The constant-answer control's per-item rows (``items/constant.<split>.jsonl.gz``) from the sweep's split files."""
    from evaluation.verifiable import constant_answers, item_scores
    from tuna.records import read_records

    d, out = Path(splits_dir), Path(out_dir)
    answers = constant_answers(read_records(d / "train.jsonl"))
    summary = {"answers": answers}
    for split in SPLITS:
        f = d / f"{split}.jsonl"
        if not f.exists():
            continue
        recs = read_records(f)
        preds = {r.id: answers.get(r.provenance["verifier"]["task"], "") for r in recs}
        rows = item_scores(recs, preds, by)  # type: ignore[arg-type]
        _write_jsonl_gz(out / "items" / f"constant.{split}.jsonl.gz",
                        [{"id": x["id"], "score": x["score"], "prediction": preds[x["id"]]} for x in rows])
        summary[split] = len(rows)
    atomic_write_json(out / "constant.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------- statistics


class Bootstrap:
    """Shared draws for one split: cluster weights within task strata, and seed indices."""

    def __init__(self, meta: list[dict[str, Any]], *, resamples: int = RESAMPLES, seed: int = SEED, max_seeds: int = 3):
        self.meta = meta
        clusters = sorted({m["cluster"] for m in meta})
        self.cindex = {c: k for k, c in enumerate(clusters)}
        self.item_cluster = np.array([self.cindex[m["cluster"]] for m in meta])
        strata: dict[str, list[int]] = defaultdict(list)
        cluster_task = {}
        for m in meta:
            cluster_task[self.cindex[m["cluster"]]] = f"{m['benchmark']}/{m['task']}"
        for c, t in cluster_task.items():
            strata[t].append(c)
        rng = np.random.default_rng(seed)
        self.weights = np.zeros((resamples, len(clusters)))
        for t in sorted(strata):
            cs = np.array(sorted(strata[t]))
            draws = rng.multinomial(len(cs), np.full(len(cs), 1.0 / len(cs)), size=resamples)
            self.weights[:, cs] = draws
        # seed draws: for k available seeds, indices into them (the same draw for every arm with k seeds)
        self.seed_draws = {k: rng.integers(0, k, size=(resamples, k)) for k in range(1, max_seeds + 1)}
        self.resamples = resamples

    def cluster_sums(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(seeds, items) -> (seeds, clusters): sums over each cluster's items within ``mask``."""
        out = np.zeros((x.shape[0], len(self.cindex)))
        for s in range(x.shape[0]):
            np.add.at(out[s], self.item_cluster[mask], x[s, mask])
        return out

    def seed_mean(self, cs: np.ndarray, k: int | None = None) -> np.ndarray:
        """(seeds, clusters) -> (resamples, clusters): per replicate, the cluster sums averaged over drawn seeds."""
        n = cs.shape[0]
        if n == 1:
            return np.broadcast_to(cs[0], (self.resamples, cs.shape[1]))
        draws = self.seed_draws[n] if k is None else self.seed_draws[k]
        return cs[draws].mean(axis=1)

    def ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """Per replicate: the weighted ratio sum(w * num) / sum(w * den) over clusters ((resamples, clusters) each)."""
        d = (self.weights * den).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.weights * num).sum(axis=1) / d


@dataclass
class Estimate:
    value: float
    lo: float
    hi: float
    n_items: int
    n_seeds: int
    reps: np.ndarray


def _interval(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    r = reps[np.isfinite(reps)]
    if not len(r):
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(r, [a, 100 - a])
    return float(lo), float(hi)


MEASURES = ("task", "pairs")


def _measure(arm: Arm, split: str, measure: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(numerator, denominator) arrays (seeds, items) of a measure: task score (score / 1) or pair accuracy (right /
    pairs)."""
    if measure == "task":
        x = arm.scores.get(split)
        return None if x is None else (x * 100.0, np.ones_like(x))
    if split not in arm.right:
        return None
    return arm.right[split] * 100.0, arm.pairs[split]


def estimate(boot: Bootstrap, arm: Arm, split: str, measure: str, mask: np.ndarray) -> Estimate | None:
    m = _measure(arm, split, measure)
    if m is None or not mask.any():
        return None
    num, den = m
    cn, cd = boot.cluster_sums(num, mask), boot.cluster_sums(den, mask)
    reps = boot.ratio(boot.seed_mean(cn), boot.seed_mean(cd))
    value = float(num[:, mask].sum() / den[:, mask].sum()) if den[:, mask].sum() else float("nan")
    lo, hi = _interval(reps)
    return Estimate(value, lo, hi, int(mask.sum()), num.shape[0], reps)


def _paired_seed_arrays(a: Arm, b: Arm, na: np.ndarray, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align two arms' seeds for a paired draw: seeded arms on their common seeds; a seed-independent arm repeated."""
    if len(a.seeds) > 1 and len(b.seeds) > 1:
        common = [s for s in a.seeds if s in b.seeds]
        return na[[a.seeds.index(s) for s in common]], nb[[b.seeds.index(s) for s in common]]
    if len(a.seeds) == 1 and len(b.seeds) > 1:
        return np.repeat(na, len(b.seeds), axis=0), nb
    if len(b.seeds) == 1 and len(a.seeds) > 1:
        return na, np.repeat(nb, len(a.seeds), axis=0)
    return na, nb


def same_pair_sets(a: Arm, b: Arm, split: str) -> bool:
    """Whether two arms' pair accuracies can be paired: every run measured on the same draw of pair sets (its
    fingerprint, where the export recorded one) and every item holds the same number of strict pairs in all of them."""
    draws = {r["pairs_draw"][split] for r in a.runs + b.runs if split in r.get("pairs_draw", {})}
    if len(draws) > 1:
        return False
    counts = np.concatenate([a.pairs[split], b.pairs[split]])
    return bool((counts == counts[0]).all())


def difference(boot: Bootstrap, a: Arm, b: Arm, split: str, measure: str, mask: np.ndarray) -> Estimate | None:
    """a - b over the same items and the same seed draws (paired), with the bootstrap replicates."""
    ma, mb = _measure(a, split, measure), _measure(b, split, measure)
    if ma is None or mb is None or not mask.any():
        return None
    if measure == "pairs" and not same_pair_sets(a, b, split):
        return None
    na, nb = _paired_seed_arrays(a, b, ma[0], mb[0])
    da, db = _paired_seed_arrays(a, b, ma[1], mb[1])
    k = na.shape[0]
    reps = (boot.ratio(boot.seed_mean(boot.cluster_sums(na, mask), k if k > 1 else None),
                       boot.seed_mean(boot.cluster_sums(da, mask), k if k > 1 else None))
            - boot.ratio(boot.seed_mean(boot.cluster_sums(nb, mask), k if k > 1 else None),
                         boot.seed_mean(boot.cluster_sums(db, mask), k if k > 1 else None)))
    value = float(na[:, mask].sum() / da[:, mask].sum() - nb[:, mask].sum() / db[:, mask].sum())
    lo, hi = _interval(reps)
    return Estimate(value, lo, hi, int(mask.sum()), k, reps)


def p_value(reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference: twice the smaller tail at 0, (count + 1) / (resamples + 1)."""
    r = reps[np.isfinite(reps)]
    if not len(r):
        return float("nan")
    tail = min((r <= 0).sum(), (r >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (len(r) + 1)))


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adj[i] = running
    return adj


# ----------------------------------------------------------------------------------------------- tables

ARM_ORDER = ["constant", "untrained", "mle_only", "best_of_n", "tuna", "rank_only", "rrhf", "pro", "listmle", "dpo",
             "ipo", "simpo", "lipo"]
ARM_NAMES = {"constant": "constant answer (majority training label)", "untrained": "untrained student",
             "mle_only": "MLE only, all N samples (λ=1, no ranking)", "best_of_n": "best-of-N SFT",
             "tuna": "**Tuna** (hinge + MLE)", "rank_only": "ranking only (λ=0)", "rrhf": "RRHF", "pro": "PRO",
             "listmle": "ListMLE", "dpo": "DPO", "ipo": "IPO", "simpo": "SimPO", "lipo": "LiPO-λ"}


def _groups(meta: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    b = np.array([m["benchmark"] for m in meta])
    seen = np.array([m["task_seen"] for m in meta])
    tseen = np.array([m["template_seen"] for m in meta])
    return {"all": np.ones(len(meta), bool), "LMentry": b == "lmentry", "Super-NI": b == "superni",
            "seen tasks": seen, "unseen tasks": ~seen,
            "LMentry, held-out template": (b == "lmentry") & seen & ~tseen,
            "Super-NI, unseen tasks": (b == "superni") & ~seen}


def _fmt(e: Estimate | None, d: int = 2, sign: bool = False) -> str:
    if e is None or math.isnan(e.value):
        return "–"
    f = f"{{:{'+' if sign else ''}.{d}f}}"
    return f"{f.format(e.value)} [{f.format(e.lo)}, {f.format(e.hi)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _tex(header: list[str], rows: list[list[str]], caption: str) -> str:
    def esc(s: str) -> str:
        return (s.replace("**", "").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("λ", r"$\lambda$")
                .replace("−", "-").replace("–", "--").replace("*", r"$^*$").replace("ε", r"$\varepsilon$"))

    cols = "l" + "r" * (len(header) - 1)
    body = "\n".join(" & ".join(esc(c) for c in r) + r" \\" for r in rows)
    return (f"\\begin{{table}}[t]\n\\centering\\small\n\\begin{{tabular}}{{{cols}}}\n\\toprule\n"
            + " & ".join(esc(h) for h in header) + " \\\\\n\\midrule\n" + body
            + f"\n\\bottomrule\n\\end{{tabular}}\n\\caption{{{esc(caption)}}}\n\\end{{table}}\n")


def make_evidence_report(folder: str | Path, *, resamples: int = RESAMPLES, seed: int = SEED,
                         split: str = "heldout") -> dict[str, Any]:
    """Every table and plot of the evidence folder from its items/ and runs.json alone (Markdown, LaTeX, PNG)."""
    ev = Evidence(folder)
    ev.add_constant()
    out = Path(folder)
    if split not in ev.meta:
        raise TunaError(f"no {split} items in {out / 'items'}", path=out)
    meta = ev.meta[split]
    boot = Bootstrap(meta, resamples=resamples, seed=seed)
    groups = _groups(meta)
    arms = [a for a in ARM_ORDER if a in ev.arms] + sorted(a for a in ev.arms if a not in ARM_ORDER and "flip" not in a)
    report: dict[str, Any] = {"split": split, "resamples": resamples, "items": len(meta), "clusters": len(boot.cindex)}

    # main: each arm's level with its two-way interval
    cols = [("task", "all"), ("task", "LMentry"), ("task", "Super-NI, unseen tasks"), ("task", "Super-NI"),
            ("task", "LMentry, held-out template"), ("pairs", "LMentry"), ("pairs", "Super-NI")]
    heads = ["arm", "seeds", "held-out task score", "LMentry acc.", "Super-NI ROUGE-L, unseen tasks", "Super-NI ROUGE-L, all",
             "LMentry acc., held-out template", "pair acc. LMentry", "pair acc. Super-NI"]
    rows, cells = [], {}
    for a in arms:
        arm = ev.arms[a]
        r = [ARM_NAMES.get(a, a), str(len(arm.seeds) if arm.seeds != [None] else "–")]
        for measure, g in cols:
            e = estimate(boot, arm, split, measure, groups[g])
            cells[(a, measure, g)] = e
            r.append(_fmt(e))
        rows.append(r)
    n_lm, n_sni = int(groups["LMentry"].sum()), int(groups["Super-NI"].sum())
    caption = (f"Held-out results ({len(meta)} items: {n_lm} LMentry = {n_lm // 3} questions x 3 templates, {n_sni} Super-NI "
               f"instances). Mean over training seeds; 95% two-way bootstrap interval (seeds x item clusters within "
               f"tasks, {resamples} replicates).")
    md = [f"# Verifiable feedback: held-out results\n\n{caption}\n\n" + _table(heads, rows)]
    tex = [_tex(heads, rows, caption)]
    # pair-accuracy support: sets, strict pairs, tie share (the same sets for every arm)
    base = ev.arms.get("untrained")
    if base is not None and split in base.pairs:
        p, t = base.pairs[split][0], base.tied[split][0]
        sup = []
        for g in ("LMentry", "Super-NI"):
            mk = groups[g]
            sup.append(f"{g}: {int((p[mk] > 0).sum())} of {int(mk.sum())} sets hold a strict pair, {int(p[mk].sum())} "
                       f"strict pairs, tie share {100 * t[mk].sum() / (p[mk].sum() + t[mk].sum()):.1f} %")
        md.append("\nPair accuracy is measured on the untrained student's own samples of every held-out item, ranked by "
                  "the item's verifier; tied pairs are not scored. " + "; ".join(sup) + ".\n")
        report["pair_support"] = sup

    # comparisons, Holm across the family
    comps: list[tuple[str, str]] = [(a, "untrained") for a in arms if a != "untrained"]
    for ref in ("mle_only", "best_of_n"):
        if ref in ev.arms and "tuna" in ev.arms:
            comps.append(("tuna", ref))
    family = []
    for a, b in comps:
        for measure in MEASURES:
            e = difference(boot, ev.arms[a], ev.arms[b], split, measure, groups["all"] if measure == "task" else groups["all"])
            if e is not None:
                family.append((a, b, measure, e, p_value(e.reps)))
    adj = holm([f[4] for f in family])
    m = len(family)
    bonf_level = 1 - (1 - LEVEL) / max(m, 1)
    crows, creport = [], []
    for (a, b, measure, e, p), pa in zip(family, adj):
        blo, bhi = _interval(e.reps, bonf_level)
        star = "*" if pa < 0.05 else ""
        crows.append([f"{ARM_NAMES.get(a, a)} − {ARM_NAMES.get(b, b)}".replace("**", ""), "task score" if measure == "task" else "pair acc.",
                      f"{e.value:+.2f}{star}", f"[{e.lo:+.2f}, {e.hi:+.2f}]", f"[{blo:+.2f}, {bhi:+.2f}]", f"{p:.4f}", f"{pa:.4f}"])
        creport.append({"a": a, "b": b, "measure": measure, "diff": e.value, "ci95": [e.lo, e.hi], "ci_bonferroni": [blo, bhi],
                        "p": p, "p_holm": pa, "seeds": e.n_seeds, "items": e.n_items})
    cheads = ["comparison", "measure", "difference", "95% interval", f"Bonferroni interval ({100 * bonf_level:.2f}%)", "p", "p (Holm)"]
    ccap = (f"Paired differences on the held-out split (points), two-way bootstrap; * : significant after Holm's correction "
            f"across the {m} comparisons of this table (family-wise 5%).")
    md.append(f"\n## Differences ({m} comparisons, Holm-corrected)\n\n{ccap}\n\n" + _table(cheads, crows))
    tex.append(_tex(cheads, crows, ccap))
    report["comparisons"] = creport

    # degeneration beside the scores
    from evaluation.verifiable import degeneration

    drows = []
    for a in arms:
        arm = ev.arms[a]
        for g in ("LMentry", "Super-NI"):
            mk = groups[g]
            finish = arm.finish.get(split) or [[None] * len(meta)] * len(arm.predictions[split])
            per_seed = [degeneration([{"task": meta[i]["task"], "prediction": preds[i], "finish_reason": fin[i]} for i in np.flatnonzero(mk)])
                        for preds, fin in zip(arm.predictions[split], finish)]
            avg = {k: float(np.mean([d[k] for d in per_seed])) if all(d.get(k) is not None for d in per_seed) else None
                   for k in ("distinct_share", "task_mode_share", "empty_share", "mean_words", "length_share")}
            drows.append([ARM_NAMES.get(a, a), g, f"{100 * avg['distinct_share']:.1f}", f"{100 * avg['task_mode_share']:.1f}",
                          f"{100 * avg['empty_share']:.1f}", f"{avg['mean_words']:.1f}",
                          "–" if avg["length_share"] is None else f"{100 * avg['length_share']:.1f}"])
    dheads = ["arm", "benchmark", "distinct answers %", "most common answer per task %", "empty %", "mean words",
              "ran to the token limit %"]
    md.append("\n## What the answers look like (degeneration check)\n\nMean over seeds. A collapse (\"Yes\" to everything) "
              "shows as few distinct answers and a high share of each task's most common answer; an answer that never "
              "stops (no end-of-sequence token) runs to the 32-token limit.\n\n" + _table(dheads, drows))

    # per seed
    srows = []
    for a in arms:
        arm = ev.arms[a]
        for k, s in enumerate(arm.seeds):
            one = Arm(a, [s], {split: arm.scores[split][k : k + 1]}, {split: arm.right[split][k : k + 1]} if split in arm.right else {},
                      {split: arm.pairs[split][k : k + 1]} if split in arm.pairs else {}, {}, {}, [])
            t = estimate(boot, one, split, "task", groups["all"])
            pr = estimate(boot, one, split, "pairs", groups["all"])
            srows.append([ARM_NAMES.get(a, a), "–" if s is None else str(s), _fmt(t), _fmt(pr)])
    md.append("\n## Per training seed\n\nItems resampled only (within tasks).\n\n"
              + _table(["arm", "seed", "task score", "pair acc."], srows))

    # per task
    tasks = sorted({(m_["benchmark"], m_["task"], m_["task_seen"]) for m_ in meta})
    trows = []
    for bench, task, seen in tasks:
        mk = np.array([m_["task"] == task for m_ in meta])
        r = [f"{bench}/{task}{'' if seen else ' (unseen)'}", str(int(mk.sum()))]
        for a in arms:
            arm = ev.arms[a]
            r.append(f"{100 * arm.scores[split][:, mk].mean():.1f}")
        trows.append(r)
    md.append("\n## Per task (task score, mean over seeds)\n\n" + _table(["task", "items"] + [a for a in arms], trows))

    # the learning-rate search on validation
    if ev.selection:
        lrows = []
        for a, sel in ev.selection.items():
            for k, v in sel.get("scores", {}).items():
                lrows.append([ARM_NAMES.get(a, a), k, f"{v.get('verifiable_score') or float('nan'):.2f}",
                              f"{v.get('pair_accuracy') or float('nan'):.2f}", "**chosen**" if v["value"] == sel["value"] else ""])
        rule = next(iter(ev.selection.values())).get("rule", {})
        md.append(f"\n## Learning rate chosen on the validation split\n\nRule fixed before the run: the highest validation "
                  f"{rule.get('metric')}; {rule.get('tie_metric')} decides within {rule.get('tie_within')} points; then the "
                  f"smaller rate; searched at the first training seed.\n\n"
                  + _table(["arm", "lr", "val task score", "val pair acc.", ""], lrows))
    noise = noise_table(ev, boot, split, groups)
    if noise:
        md.append(noise["md"])
        tex.append(noise["tex"])
        report["noise"] = noise["rows"]
    atomic_write_text(out / "main.md", "\n".join(md))
    atomic_write_text(out / "main.tex", "\n".join(tex))
    report["cells"] = {f"{a}|{m_}|{g}": (None if e is None else [e.value, e.lo, e.hi, e.n_items, e.n_seeds])
                       for (a, m_, g), e in cells.items()}
    atomic_write_json(out / "report.json", report)
    _plots(ev, out, cells, arms, noise)
    return report


def noise_table(ev: Evidence, boot: Bootstrap, split: str, groups: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Gain over the untrained student against the measured accuracy of a ranker degraded on purpose."""
    flips = sorted({a for a in ev.arms if "_flip" in a})
    if not flips or "untrained" not in ev.arms:
        return None
    rows, data = [], []
    base = ev.arms["untrained"]
    for a in sorted(flips, key=lambda x: (x.split("_flip")[0], float(x.split("_flip")[1]))):
        method, eps = a.split("_flip")[0], float(a.split("_flip")[1])
        for arm_name, e_val in ((method, 0.0), (a, eps)):
            if arm_name not in ev.arms or any(d["arm"] == arm_name for d in data):
                continue
            arm = ev.arms[arm_name]
            acc = [r["ranker"]["accuracy"] for r in arm.runs if r.get("ranker") and r["ranker"]["accuracy"] is not None]
            t = difference(boot, arm, base, split, "task", groups["all"])
            pr = difference(boot, arm, base, split, "pairs", groups["all"])
            data.append({"arm": arm_name, "method": method, "flip": e_val, "ranker_accuracy": float(np.mean(acc)) if acc else None,
                         "seeds": len(arm.seeds), "task_gain": None if t is None else [t.value, t.lo, t.hi],
                         "pair_gain": None if pr is None else [pr.value, pr.lo, pr.hi]})
    for d in sorted(data, key=lambda d: (d["method"], d["flip"])):
        tg, pg = d["task_gain"], d["pair_gain"]
        rows.append([ARM_NAMES.get(d["method"], d["method"]).replace("**", ""), f"{d['flip']:g}",
                     "–" if d["ranker_accuracy"] is None else f"{100 * d['ranker_accuracy']:.1f}", str(d["seeds"]),
                     "–" if tg is None else f"{tg[0]:+.2f} [{tg[1]:+.2f}, {tg[2]:+.2f}]",
                     "–" if pg is None else f"{pg[0]:+.2f} [{pg[1]:+.2f}, {pg[2]:+.2f}]"])
    heads = ["method", "flip ε", "ranker accuracy on training pairs %", "seeds", "task score gain", "pair acc. gain"]
    cap = ("How good must the feedback be? Each pair the verifier orders is swapped with probability ε in the training "
           "rankings (0.5: random); gains over the untrained student on the held-out split, 95% two-way intervals "
           "(uncorrected).")
    return {"md": f"\n## Feedback quality (ranker degraded on purpose)\n\n{cap}\n\n" + _table(heads, rows), "tex": _tex(heads, rows, cap),
            "rows": data}


def _plots(ev: Evidence, out: Path, cells: dict, arms: list[str], noise: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (measure, title) in zip(axes, (("task", "held-out task score"), ("pairs", "held-out pair accuracy"))):
        names, vals, errs = [], [], []
        for a in arms:
            e = cells.get((a, measure, "all"))
            if e is None:
                continue
            names.append(a)
            vals.append(e.value)
            errs.append([e.value - e.lo, e.hi - e.value])
        ax.bar(range(len(names)), vals, yerr=np.array(errs).T if errs else None, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(title + " (95% two-way interval)")
    fig.tight_layout()
    fig.savefig(out / "main.png", dpi=120)
    plt.close(fig)
    if noise:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for d in noise["rows"]:
            by_method[d["method"]].append(d)
        for ax, (key, what) in zip(axes, (("task_gain", "task score"), ("pair_gain", "pair accuracy"))):
            for method, ds in sorted(by_method.items()):
                ds = [d for d in ds if d["ranker_accuracy"] is not None and d[key] is not None]
                ds.sort(key=lambda d: d["ranker_accuracy"])
                x = [100 * d["ranker_accuracy"] for d in ds]
                y = [d[key][0] for d in ds]
                yerr = np.array([[d[key][0] - d[key][1], d[key][2] - d[key][0]] for d in ds]).T
                ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=f"{method} ({', '.join(str(d['seeds']) for d in ds)} seeds)")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel("ranker accuracy on training pairs (%)")
            ax.set_ylabel(f"held-out {what} gain over untrained (points)")
            ax.set_title(f"How good must the feedback be? ({what})")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "noise.png", dpi=120)
        plt.close(fig)
