"""Per-task held-out score of each arm of the verifiable experiment, and what each arm's training logged.

    python experiments/verifiable/per_task.py [runs/verifiable [results/verifiable]]
    (after `tuna sweep --config experiments/verifiable/experiment.yaml`)

Prints two Markdown tables: the held-out task score per benchmark task (one column per arm, the untrained student
first) and each arm's last logged training metrics (loss parts, training pair accuracy, tie share); writes
``learning_curves.png`` (training pair accuracy and loss per step, one line per arm, from TensorBoard). The
breakdown says where a change in the held-out score comes from; it is read from the runs' results, not recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def arm_results(run_root: Path) -> dict[str, dict]:
    """{arm: verifiable results.json} for every arm of the sweep, in sweep order."""
    sweep = json.loads((run_root / "sweep.json").read_text())
    out = {}
    for run in sweep["runs"]:
        found = sorted(Path(run["run_dir"], "eval", "runs", "verifiable").rglob("results.json"))
        if len(found) != 1:
            raise SystemExit(f"{run['run_dir']}: expected one verifiable result, found {len(found)}")
        out[run["label"]] = json.loads(found[0].read_text())
    return out


def main(run_root: Path) -> None:
    results = arm_results(run_root)
    arms = list(results)
    tasks = sorted({t for r in results.values() for t in r["metrics"]["per_task"]})
    print("| task | n | " + " | ".join(arms) + " |")
    print("|---|---:|" + "---:|" * len(arms))
    for t in tasks:
        cells = [results[a]["metrics"]["per_task"].get(t, {}) for a in arms]
        n = next(c["n"] for c in cells if c)
        print(f"| {t} | {n} | " + " | ".join(f"{c['score']:.1f}" if c else "–" for c in cells) + " |")
    print(f"\n{len(tasks)} tasks, {len(arms)} arms\n")
    keys = ["train/loss_rank", "train/loss_mle", "train/pair_acc", "train/tie_share", "global_step", "wall_s"]
    print("| arm | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    sweep = json.loads((run_root / "sweep.json").read_text())
    for run in sweep["runs"]:
        summaries = sorted(Path(run["run_dir"]).glob("*/train_summary.json"))
        for s in summaries:
            d = json.loads(s.read_text())
            vals = {**d.get("metrics", {}), "global_step": d["global_step"], "wall_s": d["wall_s"]}
            print(f"| {run['label']} ({s.parent.name}) | " + " | ".join(f"{vals[k]:.3g}" if k in vals else "–" for k in keys) + " |")


def scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    """Step -> value of one TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for ev in sorted(tb_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def plot_curves(run_root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = json.loads((run_root / "sweep.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in sweep["runs"]:
        for tb in sorted(Path(run["run_dir"]).glob("*/tensorboard")):
            for ax, tag in zip(axes, ["train/pair_acc", "train/loss"]):
                pts = sorted(scalars(tb, tag).items())
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=run["label"], lw=1.2)
    for ax, title in zip(axes, ["training pair accuracy (logged batches)", "training loss (each objective's own scale)"]):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "learning_curves.png", dpi=120)
    print(f"-> {out / 'learning_curves.png'}")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/verifiable")
    main(root)
    plot_curves(root, Path(sys.argv[2] if len(sys.argv) > 2 else "results/verifiable"))
