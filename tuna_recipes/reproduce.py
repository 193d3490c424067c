"""``tuna reproduce``: the paper's models from its released files, with the paper's numbers beside ours.

    tuna reproduce --base_model huggyllama/llama-7b --alpaca alpaca_data.json \\
        --prob_data train.davinci_003_w_prob.w_orig_alpaca.json \\
        --context_data train.gpt-4-ranking.w_orig_alpaca.json --paper_numbers my_paper_numbers.yaml

The released files are imported (``tuna import``'s importers; the format is recognised by its fields), then the
paper pipeline (``experiments/pipeline/paper.yaml``, the settings docs/fidelity.md traces) runs SFT on Alpaca →
Tuna_p on the probabilistic-ranking data → Tuna on the contextual-ranking data, evaluates the three models and
prints the main tables, each metric with a "(paper)" column from the numbers file.

The data files may be the released training files (``--fmt tuna-train``: their original-Alpaca rows are already
inside, so no regulariser is added) or the released source files (the text-davinci-003 data and
``gpt-4-ranking.json``: the regulariser adds each instruction's Alpaca example, ``data.regularizer: copies``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError

log = logging.getLogger(__name__)

PAPER_PIPELINE = Path(__file__).resolve().parents[1] / "experiments" / "pipeline" / "paper.yaml"
ROWS = {"student": "Alpaca", "tuna_p": "Tuna_p", "tuna_c": "Tuna_c", "tuna": "Tuna"}
"""Pipeline model labels → the paper's row names (the keys of the paper-numbers file)."""
TABLES = [("Super-NI", "superni"), ("LMentry", "lmentry"), ("Vicuna", "vicuna")]
"""The main tables: the report's columns whose header starts with the first item."""

_FORMAT_KEYS = {"tuna-gpt4": ("instruct", "generation"), "tuna-davinci": ("orig", "text"), "tuna-train": ("output", "score")}


@dataclass
class ReproduceConfig:
    """Reproduce the paper from its released files: SFT → Tuna_p → Tuna, evaluation, the main tables."""

    base_model: str = ""
    """The model the paper fine-tunes (LLaMA-7B): a hub id or a local folder."""
    prob_data: str = ""
    """train.davinci_003_w_prob.w_orig_alpaca.json, or the text-davinci-003 data (orig, text, avg_token_prob, ...)."""
    context_data: str = ""
    """train.gpt-4-ranking.w_orig_alpaca.json, or gpt-4-ranking.json."""
    alpaca: str | None = None
    """Alpaca 52K (alpaca_data.json) for SFT and for the examples gpt-4-ranking.json's instructions get as their
    regulariser; None: the `orig` examples of the text-davinci-003 data."""
    paper_numbers: str | None = None
    """The paper's numbers, keyed by the paper's row names (experiments/paper_numbers.example.yaml)."""
    pipeline: str | None = None
    """The pipeline settings YAML (default: experiments/pipeline/paper.yaml); its data keys are set from the files above."""
    set: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides of the pipeline settings, applied last, e.g. {prob_rank.trainer.devices: 4, evaluation.superni_limit: 10}."""
    name: str = "reproduce"
    run_dir: str = "runs/reproduce"
    results_dir: str = "results/reproduce"


def released_format(path: str | Path) -> str:
    """tuna-train | tuna-davinci | tuna-gpt4, from the field names near the start of the file."""
    import gzip

    p = Path(path)
    if not p.exists():
        raise TunaError("file does not exist", path=p)
    with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
        head = f.read(1 << 20).decode("utf-8", errors="replace")
    keys = set(re.findall(r'"(\w+)"\s*:', head))
    for fmt, needed in _FORMAT_KEYS.items():
        if all(k in keys for k in needed):
            return fmt
    raise TunaError("not one of the released formats (fields: orig/text, instruct/generation, or instruction/output/score)",
                    path=p, line=1)


def _import(path: str, allowed: tuple[str, ...], what: str, alpaca: str | None) -> tuple[str, list[Any]]:
    from tuna.importers import IMPORTERS

    fmt = released_format(path)
    if fmt not in allowed:
        raise TunaError(f"is a {fmt} file; {what} takes {' or '.join(allowed)}", path=path, field=what)
    kwargs = {"alpaca": alpaca} if fmt == "tuna-gpt4" else {}
    records = IMPORTERS[fmt](path, **kwargs)
    log.info("%s: %d records from %s (%s)", what, len(records), path, fmt)
    return fmt, records


def paper_rows_by_label(path: str | None, out: Path) -> str | None:
    """The paper-numbers file with its rows renamed to the pipeline's model labels (Alpaca → student, ...)."""
    if not path:
        return None
    import yaml

    p = Path(path)
    if not p.exists():
        raise TunaError("paper numbers file does not exist", path=p, field="paper_numbers")
    obj = yaml.safe_load(p.read_text()) or {}
    by_paper = {v: k for k, v in ROWS.items()}
    models = {by_paper.get(str(k), str(k)): v for k, v in (obj.get("models") or {}).items()}
    from tuna.records import atomic_write_text

    atomic_write_text(out, yaml.safe_dump({"models": models}, sort_keys=False))
    return str(out)


def split_table(md: str, prefix: str) -> str | None:
    """The rows of a Markdown table with only its first column and the columns whose header starts with ``prefix``
    (rows renamed to the paper's names); None when no column matches."""
    lines: list[str] = []
    for ln in md.splitlines():  # the first table only (the report adds a table of differences below it)
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break
    if len(lines) < 2:
        return None
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    keep = [0] + [i for i, h in enumerate(cells[0]) if i and h.startswith(prefix)]
    if len(keep) == 1:
        return None
    out = []
    for n, row in enumerate(cells):
        if n >= 2:
            row = [ROWS.get(row[0], row[0]), *row[1:]]
        out.append("| " + " | ".join(row[i] if i < len(row) else "" for i in keep) + " |")
    return "\n".join(out) + "\n"


def prepare(rc: ReproduceConfig) -> Any:
    """Import the released files into ``run_dir/released/`` and build the pipeline config that trains on them."""
    import yaml

    from tuna.records import write_records
    from tuna_recipes.pipeline.config import build_config, set_dotted

    for key in ("base_model", "prob_data", "context_data"):
        if not getattr(rc, key):
            raise TunaError("is required (see `tuna reproduce --help`)", field=key)
    run = Path(rc.run_dir)
    data_dir = run / "released"
    data_dir.mkdir(parents=True, exist_ok=True)

    prob_fmt, prob = _import(rc.prob_data, ("tuna-train", "tuna-davinci"), "prob_data", None)
    alpaca = rc.alpaca
    if alpaca is None:
        if prob_fmt != "tuna-davinci":
            raise TunaError("SFT needs the Alpaca data: give --alpaca (or the text-davinci-003 data as --prob_data, whose "
                            "`orig` examples are Alpaca)", field="alpaca")
        alpaca = str(data_dir / "alpaca.jsonl")
        from tuna.records import atomic_write_text

        atomic_write_text(alpaca, "".join(json.dumps({"instruction": r.instruction, "input": r.input, "output": r.gold},
                                                     ensure_ascii=False) + "\n" for r in prob))
    context_fmt, context = _import(rc.context_data, ("tuna-train", "tuna-gpt4"), "context_data", alpaca)
    prob_path, context_path = data_dir / "prob.ranked.jsonl", data_dir / "context.ranked.jsonl"
    write_records(prob_path, prob)
    write_records(context_path, context)

    base = yaml.safe_load(Path(rc.pipeline or PAPER_PIPELINE).read_text()) or {}
    cfg = asdict(build_config(base))
    cfg.update(name=rc.name, run_dir=rc.run_dir, results_dir=rc.results_dir, student=rc.base_model,
               prob_ranked=str(prob_path), context_ranked=str(context_path), variants=["tuna_p", "tuna"],
               evaluate=["student", "tuna_p", "tuna"],
               paper_numbers=paper_rows_by_label(rc.paper_numbers, run / "paper_numbers.yaml"))
    cfg["sft_instructions"] = {"path": alpaca, "offset": 0, "limit": None}
    if cfg.get("sft") is None:
        raise TunaError("the pipeline settings have no sft section (the paper fine-tunes LLaMA on Alpaca first)",
                        path=rc.pipeline or PAPER_PIPELINE, field="sft")
    # files imported with --fmt tuna-train already hold their original-Alpaca rows: no second regulariser
    cfg["prob_rank"]["data"]["regularizer"] = "none" if prob_fmt == "tuna-train" else "copies"
    cfg["context_rank"]["data"]["regularizer"] = "none" if context_fmt == "tuna-train" else "copies"
    for k, v in rc.set.items():
        set_dotted(cfg, k, v)
    return build_config(cfg)


def run_reproduce(rc: ReproduceConfig) -> dict[str, Any]:
    from tuna_recipes.pipeline.steps import run_pipeline

    data = run_pipeline(prepare(rc))

    main = Path(rc.results_dir) / "main.md"
    tables = {}
    if main.exists():
        md = main.read_text()
        for title, key in TABLES:
            t = split_table(md, title)
            if t is not None:
                tables[key] = t
                (Path(rc.results_dir) / f"table_{key}.md").write_text(t)
                print(f"\n## {title}\n\n{t}")
    data["tables"] = tables
    return data


COMMANDS = {"reproduce": ReproduceConfig}
RUNNERS = {ReproduceConfig: run_reproduce}
