"""``tuna report``: results.json files -> the paper's tables (Markdown + LaTeX) and PNG plots.

* ``main.md`` / ``main.tex``: one row per model (``tags.name`` if given, else the model reference), one column
  per benchmark metric (Super-NI ROUGE-L / EM, LMentry score / accuracy / robustness, Vicuna win/tie/lose per
  opponent). A "(paper)" column follows each metric that the paper-numbers YAML lists for that row; nulls
  print as "–" (the paper's numbers are not in this repository and are never invented).
* ``ablation_<knob>.md/.tex`` + ``ablation_<knob>.png``: rows = values of the knob (a ``tags`` or ``settings``
  key), columns = the same metrics.
* ``vicuna_wtl.png``: win/tie/lose stacked bars per model and opponent.
When several results share a row and column, the newest (``finished_at``) wins.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from tuna.errors import TunaError

METRICS: list[tuple[str, str, str]] = [
    # (column key, header, benchmark)
    ("superni_rougeL", "Super-NI ROUGE-L", "superni"),
    ("superni_em", "Super-NI EM", "superni"),
    ("lmentry_score", "LMentry score", "lmentry"),
    ("lmentry_accuracy", "LMentry acc.", "lmentry"),
    ("lmentry_robustness", "LMentry rob.", "lmentry"),
]


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
    return out


def label(res: dict[str, Any]) -> str:
    return str((res.get("tags") or {}).get("name") or res.get("model") or "?")


def values(res: dict[str, Any]) -> dict[str, Any]:
    m, b = res["metrics"], res["benchmark"]
    if b == "superni":
        return {"superni_rougeL": m.get("rougeL"), "superni_em": m.get("exact_match")}
    if b == "lmentry":
        return {"lmentry_score": m.get("lmentry_score"), "lmentry_accuracy": m.get("accuracy"), "lmentry_robustness": m.get("robustness")}
    if b == "vicuna":
        opp = (res.get("tags") or {}).get("opponent") or res["settings"].get("opponent")
        return {f"vicuna_vs_{opp}": f"{m['win']}/{m['tie']}/{m['lose']}"}
    return {}


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


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


def table(rows: dict[str, dict[str, Any]], columns: list[tuple[str, str]], first: str) -> tuple[str, str]:
    """(markdown, latex) for rows {row: {col key: value}} and columns [(key, header)]."""
    heads = [first, *[h for _, h in columns]]
    md = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    tex = [r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule", " & ".join(_tex(h) for h in heads) + r" \\", r"\midrule"]
    for r, vals in rows.items():
        cells = [fmt(vals.get(k)) for k, _ in columns]
        md.append("| " + " | ".join([r, *cells]) + " |")
        tex.append(" & ".join([_tex(r), *[_tex(c) for c in cells]]) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("–", "--")):
        s = s.replace(a, b)
    return s


def _newest(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: r.get("finished_at", ""))


def knob_value(res: dict[str, Any], knob: str) -> Any:
    tags = res.get("tags") or {}
    return tags.get(knob, res.get("settings", {}).get(knob))


def make_report(runs: str | os.PathLike, out_dir: str | os.PathLike, *, paper: str | os.PathLike | None = None, ablation: str | None = None,
                series: str | None = None) -> Path:
    results = _newest(collect(runs))
    if not results:
        raise TunaError("no results.json found", path=runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paper_rows = load_paper(paper)

    rows: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in results:
        rows[label(r)].update(values(r))
    vic_cols = sorted({k for v in rows.values() for k in v if k.startswith("vicuna_vs_")})
    base_cols = [(k, h) for k, h, _ in METRICS if any(k in v for v in rows.values())]
    base_cols += [(k, f"Vicuna vs {k[len('vicuna_vs_'):]} (W/T/L)") for k in vic_cols]
    cols: list[tuple[str, str]] = []
    paper_keys = {k for pr in paper_rows.values() for k in pr}
    for k, h in base_cols:
        cols.append((k, h))
        if k in paper_keys:
            cols.append((f"paper:{k}", f"{h} (paper)"))
    for name, pv in paper_rows.items():
        if name in rows:
            for k, v in pv.items():
                rows[name][f"paper:{k}"] = v
    md, tex = table(dict(rows), cols, "Model")
    (out / "main.md").write_text(md)
    (out / "main.tex").write_text(tex)
    summary: dict[str, Any] = {"n_results": len(results), "files": ["main.md", "main.tex"], "sources": [r["_path"] for r in results]}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vic = [r for r in results if r["benchmark"] == "vicuna"]
    if vic:
        bars = {}
        for r in vic:
            m = r["metrics"]
            bars[f"{label(r)} vs {(r.get('tags') or {}).get('opponent', '?')}"] = (m["win"], m["tie"], m["lose"], m.get("error", 0))
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(bars) + 1.5))
        names = list(bars)
        left = [0.0] * len(names)
        for i, (lab, color) in enumerate((("win", "#4c9f70"), ("tie", "#c9c9c9"), ("lose", "#d1605e"), ("error", "#f2c14e"))):
            vals = [bars[n][i] for n in names]
            ax.barh(names, vals, left=left, color=color, label=lab)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_xlabel("questions")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("Vicuna QA: win / tie / lose (both orders combined)")
        fig.tight_layout()
        fig.savefig(out / "vicuna_wtl.png", dpi=120)
        plt.close(fig)
        summary["files"].append("vicuna_wtl.png")

    if ablation:
        # rows keyed by (knob value, series value); series=None gives one row per knob value
        cells: dict[tuple[str, str | None], dict[str, Any]] = defaultdict(dict)
        for r in results:
            v = knob_value(r, ablation)
            if v is not None:
                sv = knob_value(r, series) if series else None
                cells[(str(v), None if sv is None else str(sv))].update(values(r))
        if not cells:
            raise TunaError(f"no result has the knob {ablation!r} in its tags or settings", field="ablation")

        def _key(s: str | None) -> tuple[int, Any]:
            try:
                return (0, float(s))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return (1, str(s))

        cells = dict(sorted(cells.items(), key=lambda kv: (_key(kv[0][1]), _key(kv[0][0]))))
        name = f"{ablation}_x_{series}" if series else ablation
        arows = {(f"{ablation}={x}, {series}={sv}" if series else x): v for (x, sv), v in cells.items()}
        acols = [(k, h) for k, h in base_cols if any(k in v for v in arows.values())]
        md, tex = table(arows, acols, f"{ablation}, {series}" if series else ablation)
        (out / f"ablation_{name}.md").write_text(md)
        (out / f"ablation_{name}.tex").write_text(tex)
        summary["files"] += [f"ablation_{name}.md", f"ablation_{name}.tex"]
        numeric = [(k, h) for k, h in acols if any(isinstance(v.get(k), (int, float)) for v in arows.values())]
        if numeric:
            xs = sorted({x for x, _ in cells}, key=_key)
            lines = sorted({sv for _, sv in cells}, key=_key)
            categorical = any(_key(x)[0] for x in xs)
            fig, axes = plt.subplots(1, len(numeric), figsize=(3.6 * len(numeric), 3.4), squeeze=False)
            for ax, (k, h) in zip(axes[0], numeric):
                for j, sv in enumerate(lines):
                    pts = [(x, cells[(x, sv)].get(k)) for x in xs if isinstance(cells.get((x, sv), {}).get(k), (int, float))]
                    lab = f"{series}={sv}" if series else None
                    if categorical:  # runs or names: bars side by side, labels readable
                        w = 0.8 / len(lines)
                        ax.bar([xs.index(x) + (j - (len(lines) - 1) / 2) * w for x, _ in pts], [y for _, y in pts], width=w, label=lab)
                        ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right", fontsize=7)
                    else:
                        ax.plot([float(x) for x, _ in pts], [y for _, y in pts], marker="o", label=lab)
                ax.set_xlabel(ablation)
                ax.set_title(h, fontsize=9)
                if series:
                    ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / f"ablation_{name}.png", dpi=120)
            plt.close(fig)
            summary["files"].append(f"ablation_{name}.png")
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out
