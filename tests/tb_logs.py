"""Reading training curves back from TensorBoard event files (shared by the training and reliability tests)."""

from __future__ import annotations

from pathlib import Path


def tb_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """Step -> value; a later event file (the resumed run) wins for a step logged twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for ev in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.name)):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                out[e.step] = e.value
    return out
