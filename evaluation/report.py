"""``tuna report``: results.json files -> the paper's tables (Markdown + LaTeX) with intervals, and PNG plots.

* Columns are keyed by (metric, protocol): a run's protocol (:mod:`evaluation.protocol`) names the items, shots,
  template, truncation, decoding and judge it used, and two runs share a column only when their protocols are
  equal. The header says the protocol in short (``full 119×100, 2-shot``; ``slice 8 tasks, 16 inst., 0-shot``;
  ``slice 3/task, approx.``), and ``main.md`` lists every column's protocol fields below the table. A 0-shot and
  a 2-shot run of one model are two columns; nothing is overwritten.
* Cells: the value, its 95 % bootstrap interval and n (:mod:`evaluation.stats`): Super-NI over instances, LMentry
  accuracy over examples within task x template (the score and robustness without an interval: biased under
  resampling), Vicuna QA the win rate over decided questions, next to W/T/L.
* ``baseline``: a row every other row is compared with by a paired bootstrap over the same items (difference, its
  interval, ``*`` when the interval excludes 0): a second table in ``main.md`` and ``main_delta.tex``.
* ``main.png``: every numeric column as bars with error bars; ``vicuna_wtl.png``: win/tie/lose bars with the win
  rate's interval; ``ablation_<knob>.md/.tex/.png``: rows = values of a tags or settings key (a protocol field
  that is the knob itself is left out of the column key), with error bars.
* A "(paper)" column follows each metric that the paper-numbers YAML lists for that row; nulls print as "–".
When several results of one row fall into the same column, the newest (``finished_at``) wins.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evaluation import protocol as protocols
from evaluation import stats
from tuna.errors import TunaError

METRICS: list[tuple[str, str, str, int]] = [
    # (metric key, header, benchmark, decimals)
    ("superni_rougeL", "Super-NI ROUGE-L", "superni", 2),
    ("superni_em", "Super-NI EM", "superni", 2),
    ("lmentry_score", "LMentry score", "lmentry", 1),
    ("lmentry_accuracy", "LMentry acc.", "lmentry", 1),
    ("lmentry_robustness", "LMentry rob.", "lmentry", 1),
    ("verifiable_score", "Held-out score", "verifiable", 2),
    ("verifiable_lmentry", "Held-out LMentry acc.", "verifiable", 2),
    ("verifiable_superni", "Held-out Super-NI ROUGE-L", "verifiable", 2),
    ("pair_accuracy", "Held-out pair acc.", "pairs", 2),
]
_VERIFIABLE = {"verifiable_score": None, "verifiable_lmentry": "lmentry", "verifiable_superni": "superni"}
"""The held-out items a verifiable column averages (None: all of them)."""
_SUPERNI = {"superni_rougeL": "rougeL", "superni_em": "exact_match"}
_LMENTRY = {"lmentry_score": "lmentry_score", "lmentry_accuracy": "accuracy", "lmentry_robustness": "robustness"}
_ORDER = {k: i for i, (k, *_rest) in enumerate(METRICS)}


@dataclass(frozen=True)
class Column:
    metric: str
    header: str
    key: str
    label: str
    benchmark: str
    decimals: int = 1

    @property
    def title(self) -> str:
        return f"{self.header} [{self.label}]"

    def sort_key(self) -> tuple[int, str, bool, str]:
        # the single-order Vicuna column (the 2023 protocol) before its both-orders companion
        return (_ORDER.get(self.metric, len(_ORDER)), self.metric, "both orders" in self.label, self.label)


@dataclass
class Entry:
    """One number of one results.json, and where its per-item scores are."""

    column: Column
    result: dict[str, Any]
    value: Any
    fields: dict[str, Any]
    """The protocol fields of the column."""
    block: dict[str, Any] = field(default_factory=dict)
    """Vicuna: the metrics block (single order or both_orders) the W/T/L comes from."""


@dataclass
class Cell:
    value: Any
    n: int | None = None
    lo: float | None = None
    hi: float | None = None
    rate: float | None = None
    """Vicuna: the win rate (%) whose interval lo/hi are."""

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "lo": self.lo, "hi": self.hi, **({"win_rate": self.rate} if self.rate is not None else {})}


def collect(runs: str | os.PathLike) -> list[dict[str, Any]]:
    root = Path(runs)
    if not root.exists():
        raise TunaError("results folder does not exist", path=root)
    out = []
    for p in sorted(root.rglob("results.json")):
        try:
            obj = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise TunaError(f"invalid JSON: {e.msg}", path=p, line=e.lineno) from None
        if "benchmark" in obj and "metrics" in obj:
            obj["_path"] = str(p)
            out.append(obj)
    return sorted(out, key=lambda r: r.get("finished_at", ""))


def label(res: dict[str, Any]) -> str:
    return str((res.get("tags") or {}).get("name") or res.get("model") or "?")


def knob_value(res: dict[str, Any], knob: str) -> Any:
    tags = res.get("tags") or {}
    return tags.get(knob, res.get("settings", {}).get(knob))


def entries(res: dict[str, Any], drop: tuple[str, ...] = ()) -> list[Entry]:
    """The report's numbers in one results.json, each with its column. ``drop``: protocol fields left out of the
    column key (an ablation's own knob)."""
    proto = protocols.of(res)
    b, m = res["benchmark"], res["metrics"]

    def col(metric: str, header: str, fields: dict[str, Any], decimals: int) -> Column:
        d = tuple(k for k in drop if k in fields)
        return Column(metric, header, protocols.protocol_key(fields, d), protocols.label(b, fields, d), b, decimals)

    f = proto["fields"]
    if b == "superni":
        return [Entry(col(k, h, f, d), res, m.get(_SUPERNI[k]), f) for k, h, bench, d in METRICS if bench == "superni"]
    if b == "lmentry":
        return [Entry(col(k, h, f, d), res, m.get(_LMENTRY[k]), f) for k, h, bench, d in METRICS if bench == "lmentry"]
    if b == "verifiable":
        per = m.get("per_benchmark") or {}
        return [Entry(col(k, h, f, d), res, m.get("score") if _VERIFIABLE[k] is None else (per.get(_VERIFIABLE[k]) or {}).get("score"), f)
                for k, h, bench, d in METRICS if bench == "verifiable" and (_VERIFIABLE[k] is None or _VERIFIABLE[k] in per)]
    if b == "pairs":
        return [Entry(col("pair_accuracy", "Held-out pair acc.", f, 2), res, m.get("pair_accuracy"), f)]
    if b == "vicuna":
        opp = (res.get("tags") or {}).get("opponent") or res.get("settings", {}).get("opponent")
        metric, header = f"vicuna_vs_{opp}", f"Vicuna vs {opp} (W/T/L)"
        out = []
        single_fields = {**f, "orders": "single"} if f.get("orders") == "both" else f
        out.append(Entry(col(metric, header, single_fields, 1), res, _wtl(m), single_fields, m))
        both = m.get("both_orders")
        if both:
            out.append(Entry(col(metric, header, f, 1), res, _wtl(both), f, both))
        return out
    return []


def _wtl(m: dict[str, Any]) -> str:
    return f"{m['win']}/{m['tie']}/{m['lose']}" + (f" ({m['error']} err.)" if m.get("error") else "")


# ------------------------------------------------------------------------------------------------ statistics


class Statistics:
    """Intervals and paired differences for entries, reading each result's per-item scores once."""

    def __init__(self, resamples: int = stats.RESAMPLES, seed: int = stats.SEED, level: float = stats.LEVEL):
        self.resamples, self.seed, self.level = resamples, seed, level
        self._items: dict[str, Any] = {}
        self._lmentry: dict[tuple[str, ...], dict[str, stats.Estimate]] = {}  # one bootstrap per result (pair) for 3 metrics

    def items(self, res: dict[str, Any]) -> Any:
        """Super-NI: {id: (rougeL, EM) x100}; LMentry: scored example rows; None when not recorded."""
        spec = res.get("item_scores") or {}
        if "file" not in spec:
            return None
        path = Path(spec["file"])
        if not path.is_absolute():
            path = Path(res["_path"]).parent / path
        if str(path) not in self._items:
            if not path.exists():
                raise TunaError("per-item scores named by results.json are missing", path=path)
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if res["benchmark"] == "superni":
                self._items[str(path)] = {str(r["id"]): (100 * r["rougeL"], 100 * r["exact_match"]) for r in rows}
            elif res["benchmark"] in ("verifiable", "pairs"):
                self._items[str(path)] = {str(r["id"]): r for r in rows}
            else:
                self._items[str(path)] = rows if rows and "template_id" in rows[0] else None
        return self._items[str(path)]

    def _kw(self) -> dict[str, Any]:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level}

    def cell(self, e: Entry) -> Cell:
        res, c = e.result, e.column
        m = res["metrics"]
        if c.benchmark == "vicuna":
            w = _wins(e.block)
            if not w:  # not recorded, or no question decided
                return Cell(e.value, None if w is None else 0)
            est = stats.mean_ci(w, **self._kw())
            return Cell(e.value, est.n, 100 * est.lo, 100 * est.hi, rate=100 * est.value)
        items = self.items(res)
        if c.benchmark in ("verifiable", "pairs"):
            if items is None:
                return Cell(e.value, m.get("n"))
            if c.benchmark == "pairs":
                rows = [r for r in items.values() if r["pairs"]]
                est = stats.ratio_ci([r["right"] for r in rows], [r["pairs"] for r in rows], **self._kw())
                return Cell(e.value, est.n, 100 * est.lo, 100 * est.hi)
            est = stats.mean_ci(_verifiable_scores(items, c.metric, list(items)), **self._kw())
            return Cell(e.value, est.n, est.lo, est.hi)
        if c.benchmark == "superni":
            if items is None:
                return Cell(e.value, m.get("n"))
            j = 0 if c.metric == "superni_rougeL" else 1
            est = stats.mean_ci([v[j] for v in items.values()], **self._kw())
            return Cell(e.value, est.n, est.lo, est.hi)
        if items is None:
            return Cell(e.value, None)
        k = (res["_path"],)
        if k not in self._lmentry:
            self._lmentry[k] = stats.lmentry_cis(items, resamples=self.resamples, seed=self.seed, level=self.level)
        est = self._lmentry[k][_LMENTRY[c.metric]]
        lo, hi = (None, None) if math.isnan(est.lo) else (est.lo, est.hi)
        return Cell(e.value, est.n, lo, hi)

    def delta(self, e: Entry, base: Entry) -> Cell | None:
        """``e`` minus ``base`` over their common items (None when either has no per-item scores)."""
        c = e.column
        if c.benchmark == "vicuna":
            a, b = _win_by_question(e.block), _win_by_question(base.block)
            if a is None or b is None:
                return None
            common = sorted(set(a) & set(b))
            est = stats.paired_difference([a[q] for q in common], [b[q] for q in common], **self._kw())
            return Cell(100 * est.value, est.n, 100 * est.lo, 100 * est.hi)
        ia, ib = self.items(e.result), self.items(base.result)
        if ia is None or ib is None:
            return None
        if c.benchmark == "pairs":
            common = sorted(i for i in set(ia) & set(ib) if ia[i]["pairs"] and ia[i]["pairs"] == ib[i]["pairs"])
            est = stats.paired_ratio_difference([ia[i]["right"] for i in common], [ia[i]["pairs"] for i in common],
                                                [ib[i]["right"] for i in common], [ib[i]["pairs"] for i in common], **self._kw())
            return Cell(100 * est.value, est.n, 100 * est.lo, 100 * est.hi)
        if c.benchmark == "verifiable":
            common = sorted(set(ia) & set(ib))
            est = stats.paired_difference(_verifiable_scores(ia, c.metric, common), _verifiable_scores(ib, c.metric, common),
                                          **self._kw())
            return Cell(est.value, est.n, est.lo, est.hi)
        if c.benchmark == "superni":
            common = sorted(set(ia) & set(ib))
            j = 0 if c.metric == "superni_rougeL" else 1
            est = stats.paired_difference([ia[i][j] for i in common], [ib[i][j] for i in common], **self._kw())
            return Cell(est.value, est.n, est.lo, est.hi)
        k = (e.result["_path"], base.result["_path"])
        if k not in self._lmentry:
            self._lmentry[k] = stats.lmentry_paired(ia, ib, resamples=self.resamples, seed=self.seed, level=self.level)
        est = self._lmentry[k][_LMENTRY[c.metric]]
        if math.isnan(est.value):
            return None
        lo, hi = (None, None) if math.isnan(est.lo) else (est.lo, est.hi)
        return Cell(est.value, est.n, lo, hi)


def _verifiable_scores(items: dict[str, dict[str, Any]], metric: str, ids: list[str]) -> list[float]:
    """x100 per-item verifier scores of the column's held-out items, in the order of ``ids``."""
    want = _VERIFIABLE[metric]
    return [100 * items[i]["score"] for i in ids if want is None or items[i].get("benchmark") == want]


def _wins(block: dict[str, Any]) -> list[float] | None:
    w = _win_by_question(block)
    return None if w is None else list(w.values())


def _win_by_question(block: dict[str, Any]) -> dict[int, float] | None:
    """1.0 for a win, 0.0 for a tie or a loss, per decided question (errors are left out, as in the win rate)."""
    pq = block.get("per_question")
    if not pq:
        return None
    return {int(q["question_id"]): float(q["result"] == "win") for q in pq if q["result"] in ("win", "tie", "lose")}


# ------------------------------------------------------------------------------------------------ formatting


def _num(v: float, d: int, sign: bool = False) -> str:
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


def render_cell(cell: Cell | None, d: int, *, delta: bool = False) -> tuple[str, str]:
    """(markdown, LaTeX) text of a cell: ``value [lo, hi] n=…``; a difference gets ``*`` when significant."""
    if cell is None or cell.value is None:
        return "–", "--"
    v = cell.value
    head = v if isinstance(v, str) else _num(float(v), d, delta)
    if isinstance(v, str) and cell.rate is not None:  # Vicuna: W/T/L, then the win rate
        head = f"{v}, win {_num(cell.rate, d)} %"
    parts_md, parts_tex = [head], [_tex(head)]
    if cell.lo is not None and cell.hi is not None:
        ci = f"[{_num(cell.lo, d, delta)}, {_num(cell.hi, d, delta)}]"
        sig = delta and (cell.lo > 0 or cell.hi < 0)
        parts_md.append(ci + ("*" if sig else ""))
        parts_tex.append(r"{\scriptsize " + ci + "}" + (r"$^{*}$" if sig else ""))
    if cell.n is not None:
        parts_md.append(f"n={cell.n}")
        parts_tex.append(r"{\scriptsize $n$=" + str(cell.n) + "}")
    return " ".join(parts_md), " ".join(parts_tex)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("–", "--"),
                 ("×", r"$\times$"), ("≤", r"$\le$")):
        s = s.replace(a, b)
    return s


def table(rows: dict[str, dict[str, tuple[str, str]]], columns: list[tuple[str, str]], first: str) -> tuple[str, str]:
    """(markdown, latex) for rows {row: {column id: (md, tex)}} and columns [(id, header)]."""
    heads = [first, *[h for _, h in columns]]
    md = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    tex = [r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule", " & ".join(_tex(h) for h in heads) + r" \\", r"\midrule"]
    for r, vals in rows.items():
        cells = [vals.get(k, ("–", "--")) for k, _ in columns]
        md.append("| " + " | ".join([r, *[c[0] for c in cells]]) + " |")
        tex.append(" & ".join([_tex(r), *[c[1] for c in cells]]) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def load_paper(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise TunaError("paper numbers file does not exist", path=p)
    import yaml

    obj = yaml.safe_load(p.read_text()) or {}
    models = obj.get("models", {}) or {}
    if not isinstance(models, dict):
        raise TunaError("'models' must map a row name to {metric: value}", path=p, field="models")
    return {str(k): dict(v or {}) for k, v in models.items()}


def _grid(results: list[dict[str, Any]], row_of: Any, drop: tuple[str, ...] = ()) -> tuple[dict[Any, dict[Column, Entry]], list[Column]]:
    """{row: {column: entry}} (newest result wins a cell) and the columns in metric order."""
    grid: dict[Any, dict[Column, Entry]] = defaultdict(dict)
    for r in results:
        row = row_of(r)
        if row is None:
            continue
        for e in entries(r, drop):
            grid[row][e.column] = e
    cols = sorted({c for cells in grid.values() for c in cells}, key=Column.sort_key)
    # two protocols whose labels read the same (they differ in a field a label does not show, e.g. a template's
    # digest): the protocol key goes into the header, so their numbers still never share a column
    titles = defaultdict(set)
    for c in cols:
        titles[c.title].add(c.key)
    rename = {c: replace(c, label=f"{c.label}, protocol {c.key[:6]}") for c in cols if len(titles[c.title]) > 1}
    if rename:
        grid = defaultdict(dict, {row: {rename.get(c, c): e for c, e in cs.items()} for row, cs in grid.items()})
        cols = sorted({c for cells in grid.values() for c in cells}, key=Column.sort_key)
    return dict(grid), cols


def _protocol_notes(cols: list[Column], grid: dict[Any, dict[Column, Entry]], st: Statistics) -> str:
    fields = {c.key: e.fields for cs in grid.values() for c, e in cs.items()}
    lines = ["", f"Cells: value [95 % bootstrap interval] n = items ({st.resamples} resamples, seed {st.seed}). Resampled: "
             "Super-NI instances; LMentry examples within each task (templates pooled, as the accuracy pools them), with an interval on the accuracy only "
             "(robustness, and so the score, is biased under resampling); Vicuna QA questions, the interval on the "
             "win rate (wins / decided questions); held-out items (verifiable); held-out ranked sets (pair accuracy: right "
             "pairs / pairs, the pairs of a set resampled together).", "", "Protocols (columns with different protocols are never merged):", ""]
    seen = set()
    for c in cols:
        if (c.benchmark, c.key) in seen:
            continue
        seen.add((c.benchmark, c.key))
        fl = ", ".join(f"{k}={v}" for k, v in fields.get(c.key, {}).items())
        lines.append(f"* `{c.key}` {c.benchmark} [{c.label}]: {fl}")
    return "\n".join(lines) + "\n"


def make_report(runs: str | os.PathLike, out_dir: str | os.PathLike, *, paper: str | os.PathLike | None = None, ablation: str | None = None,
                series: str | None = None, baseline: str | None = None, resamples: int = stats.RESAMPLES,
                seed: int = stats.SEED) -> Path:
    results = collect(runs)
    if not results:
        raise TunaError("no results.json found", path=runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = Statistics(resamples=resamples, seed=seed)
    paper_rows = load_paper(paper)

    grid, cols = _grid(results, label)
    if baseline is not None and baseline not in grid:
        raise TunaError(f"baseline row {baseline!r} is not in the report (rows: {', '.join(grid)})", field="baseline")
    cells = {row: {c: st.cell(e) for c, e in cs.items()} for row, cs in grid.items()}
    md_rows: dict[str, dict[str, tuple[str, str]]] = {row: {c.title: render_cell(cell, c.decimals) for c, cell in cs.items()}
                                                      for row, cs in cells.items()}
    columns: list[tuple[str, str]] = []
    paper_keys = {k for pr in paper_rows.values() for k in pr}
    for i, c in enumerate(cols):
        columns.append((c.title, c.title))
        last_of_metric = i + 1 == len(cols) or cols[i + 1].metric != c.metric
        if last_of_metric and c.metric in paper_keys:
            columns.append((f"paper:{c.metric}", f"{c.header} (paper)"))
    for name, pv in paper_rows.items():
        if name in md_rows:
            for k, v in pv.items():
                text = "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
                md_rows[name][f"paper:{k}"] = (text, _tex(text))
    md, tex = table(md_rows, columns, "Model")
    md += _protocol_notes(cols, grid, st)
    files = ["main.md", "main.tex"]
    summary: dict[str, Any] = {
        "n_results": len(results), "sources": [r["_path"] for r in results], "baseline": baseline,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": stats.LEVEL, "method": "percentile"},
        "columns": [{"title": c.title, "metric": c.metric, "protocol": c.key, "label": c.label} for c in cols],
        "cells": {row: {c.title: cell.as_json() for c, cell in cs.items()} for row, cs in cells.items()},
    }
    if baseline is not None:
        deltas: dict[str, dict[Column, Cell | None]] = {}
        for row, cs in grid.items():
            if row == baseline:
                continue
            deltas[row] = {c: st.delta(e, grid[baseline][c]) for c, e in cs.items() if c in grid[baseline]}
        d_rows = {row: {c.title: render_cell(cell, c.decimals, delta=True) for c, cell in ds.items()} for row, ds in deltas.items()}
        dmd, dtex = table(d_rows, [(c.title, c.title) for c in cols], "Model")
        md += (f"\nPaired difference vs {baseline} (same items resampled for both rows; Vicuna: win rate in points over "
               f"the questions both decided; * = the 95 % interval excludes 0):\n\n" + dmd)
        (out / "main_delta.tex").write_text(dtex)
        files.append("main_delta.tex")
        summary["deltas"] = {row: {c.title: (cell.as_json() if cell else None) for c, cell in ds.items()} for row, ds in deltas.items()}
    (out / "main.md").write_text(md)
    (out / "main.tex").write_text(tex)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [c for c in cols if c.benchmark != "vicuna"] + [c for c in cols if c.benchmark == "vicuna"]
    if numeric:
        fig, axes = plt.subplots(1, len(numeric), figsize=(3.2 * len(numeric), 3.6), squeeze=False)
        for ax, c in zip(axes[0], numeric):
            names, ys, errs = [], [], []
            for row, cs in cells.items():
                cell = cs.get(c)
                y = _plot_value(cell, c)
                if y is None:
                    continue
                names.append(row)
                ys.append(y)
                errs.append(_yerr(cell, y))
            ax.bar(range(len(ys)), ys, yerr=_err_array(errs), capsize=3, color="#5b8db8")
            ax.set_xticks(range(len(ys)), names, rotation=30, ha="right", fontsize=7)
            ax.set_title(_wrap(c.title if c.benchmark != "vicuna" else f"{c.header.replace('(W/T/L)', 'win rate %')} [{c.label}]"), fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "main.png", dpi=120)
        plt.close(fig)
        files.append("main.png")

    vic = [(row, c, grid[row][c], cells[row][c]) for row in grid for c in cols if c.benchmark == "vicuna" and c in grid[row]]
    if vic:
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(vic) + 1.5))
        names = [f"{row} vs {c.metric[len('vicuna_vs_'):]} [{c.label}]" for row, c, _, _ in vic]
        left = [0.0] * len(vic)
        for lab, color in (("win", "#4c9f70"), ("tie", "#c9c9c9"), ("lose", "#d1605e"), ("error", "#f2c14e")):
            vals = [float(e.block.get(lab, 0)) for _, _, e, _ in vic]
            ax.barh(names, vals, left=left, color=color, label=lab)
            left = [a + b for a, b in zip(left, vals)]
        for k, (_, _, e, cell) in enumerate(vic):  # the win rate's interval, in questions, at the end of the win bar
            if cell.lo is not None and cell.n:
                w = float(e.block.get("win", 0))
                ax.errorbar([w], [k], xerr=[[w - cell.lo / 100 * cell.n], [cell.hi / 100 * cell.n - w]], fmt="none", ecolor="black", capsize=3)
        ax.set_xlabel("questions (error bar: 95 % interval of the wins, from the win rate)")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("Vicuna QA: win / tie / lose")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "vicuna_wtl.png", dpi=120)
        plt.close(fig)
        files.append("vicuna_wtl.png")

    if ablation:
        files += _ablation(results, out, ablation, series, st, plt)
    summary["files"] = files
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return out


def _plot_value(cell: Cell | None, c: Column) -> float | None:
    if cell is None or cell.value is None:
        return None
    if c.benchmark == "vicuna":
        return cell.rate
    return float(cell.value)


def _yerr(cell: Cell | None, y: float) -> tuple[float, float] | None:
    if cell is None or cell.lo is None or cell.hi is None:
        return None
    return (max(0.0, y - cell.lo), max(0.0, cell.hi - y))


def _err_array(errs: list[tuple[float, float] | None]) -> list[list[float]] | None:
    if not any(errs):
        return None
    return [[e[0] if e else 0.0 for e in errs], [e[1] if e else 0.0 for e in errs]]


def _wrap(s: str, width: int = 44) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(s, width))


def _num_key(s: str | None) -> tuple[int, Any]:
    try:
        return (0, float(s))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, str(s))


def _ablation(results: list[dict[str, Any]], out: Path, ablation: str, series: str | None, st: Statistics, plt: Any) -> list[str]:
    """Rows keyed by (knob value, series value); the knobs themselves are left out of the column keys."""
    drop = tuple(k for k in (ablation, series) if k)

    def row_of(r: dict[str, Any]) -> tuple[str, str | None] | None:
        v = knob_value(r, ablation)
        if v is None:
            return None
        sv = knob_value(r, series) if series else None
        return (str(v), None if sv is None else str(sv))

    grid, cols = _grid(results, row_of, drop)
    if not grid:
        raise TunaError(f"no result has the knob {ablation!r} in its tags or settings", field="ablation")
    keys = sorted(grid, key=lambda k: (_num_key(k[1]), _num_key(k[0])))
    cells = {k: {c: st.cell(e) for c, e in grid[k].items()} for k in keys}
    name = f"{ablation}_x_{series}" if series else ablation
    rows = {(f"{ablation}={x}, {series}={sv}" if series else x): {c.title: render_cell(cell, c.decimals) for c, cell in cells[(x, sv)].items()}
            for x, sv in keys}
    md, tex = table(rows, [(c.title, c.title) for c in cols], f"{ablation}, {series}" if series else ablation)
    (out / f"ablation_{name}.md").write_text(md)
    (out / f"ablation_{name}.tex").write_text(tex)
    files = [f"ablation_{name}.md", f"ablation_{name}.tex"]
    numeric = [c for c in cols if any(_plot_value(cells[k].get(c), c) is not None for k in keys)]
    if numeric:
        xs = sorted({x for x, _ in keys}, key=_num_key)
        lines = sorted({sv for _, sv in keys}, key=_num_key)
        categorical = any(_num_key(x)[0] for x in xs)
        fig, axes = plt.subplots(1, len(numeric), figsize=(3.6 * len(numeric), 3.6), squeeze=False)
        for ax, c in zip(axes[0], numeric):
            for j, sv in enumerate(lines):
                pts = []
                for x in xs:
                    cell = cells.get((x, sv), {}).get(c)
                    y = _plot_value(cell, c)
                    if y is not None:
                        pts.append((x, y, _yerr(cell, y)))
                if not pts:
                    continue
                lab = f"{series}={sv}" if series else None
                err = _err_array([p[2] for p in pts])
                if categorical:  # runs or names: bars side by side, labels readable
                    w = 0.8 / len(lines)
                    ax.bar([xs.index(x) + (j - (len(lines) - 1) / 2) * w for x, _, _ in pts], [y for _, y, _ in pts], width=w,
                           yerr=err, capsize=3, label=lab)
                    ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right", fontsize=7)
                else:
                    ax.errorbar([float(x) for x, _, _ in pts], [y for _, y, _ in pts], yerr=err, marker="o", capsize=3, label=lab)
            ax.set_xlabel(ablation)
            ax.set_title(_wrap(c.title), fontsize=7)
            if series:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"ablation_{name}.png", dpi=120)
        plt.close(fig)
        files.append(f"ablation_{name}.png")
    return files
