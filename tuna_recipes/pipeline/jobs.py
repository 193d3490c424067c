"""What a cluster job runs (launcher slurm): one step of one run, or a sweep's tables once its runs have ended.

Both are ``submitit.helpers.Checkpointable``: a job that times out or is pre-empted is requeued with the same callable,
and the rerun resumes from the run's manifest (finished steps are skipped) and from the training checkpoint
(``resume: auto``), never from zero. A job writes its ``done`` marker (the job's key) only when its step finished.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from submitit import JobEnvironment
from submitit.helpers import Checkpointable, DelayedSubmission

from tuna.errors import TunaError
from tuna.records import atomic_write_json, atomic_write_text
from tuna_recipes.pipeline.config import PipelineConfig
from tuna_recipes.pipeline.sweep import PlannedRun, Sweep, SweepConfig


def job_logging() -> None:
    """The job's log says what ``tuna`` on a terminal says (INFO, the noisy libraries quieter)."""
    import logging

    logging.basicConfig(level=os.environ.get("TUNA_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "absl", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def done_marker(folder: str | Path) -> Path:
    return Path(folder) / "done"


def is_done(folder: str | Path, key: str) -> bool:
    m = done_marker(folder)
    return m.exists() and m.read_text().strip() == key


class StepJob(Checkpointable):
    """Step ``step`` of the run ``cfg`` (after the finished steps it reads)."""

    def __init__(self, cfg: PipelineConfig, step: str, key: str, folder: str):
        self.cfg, self.step, self.key, self.folder = cfg, step, key, folder
        self.requeued = 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Timed out or pre-empted: requeue this callable; the rerun resumes from the manifest and the checkpoints."""
        self.requeued += 1
        return super().checkpoint(*args, **kwargs)

    def __call__(self) -> str:
        from tuna_recipes.pipeline.steps import run_pipeline

        job_logging()
        rank = JobEnvironment().global_rank
        if rank == 0:
            atomic_write_json(Path(self.folder) / "started.json", {"pid": os.getpid(), "host": socket.gethostname(),
                                                                   "requeued": self.requeued})
        if self.requeued:
            print(f"[tuna job] {self.step} of {self.cfg.run_dir}: requeued {self.requeued}x, resuming from its manifest "
                  "(finished steps are skipped) and its training checkpoint, if any", flush=True)
        run_pipeline(self.cfg, self.step, writer=rank == 0)  # every srun task trains; rank 0 keeps the records
        if rank == 0:
            atomic_write_text(done_marker(self.folder), self.key)
        return self.step

    def __repr__(self) -> str:
        return f"StepJob(run={self.cfg.run_dir}, step={self.step})"


class TablesJob(Checkpointable):
    """The sweep's tables over the runs whose report finished; the others are listed in sweep.json (``unfinished``)
    and the job fails naming them, so that launching the sweep again makes the tables again."""

    def __init__(self, sw: SweepConfig, plan: list[PlannedRun], reports: dict[str, tuple[str, str]], key: str, folder: str):
        self.sw, self.plan, self.key, self.folder = sw, plan, key, folder
        self.reports = reports  # run label -> (folder, key) of its report job

    def __call__(self) -> dict[str, Any]:
        s = Sweep(self.sw)
        planned = {p.label for p in self.plan}
        s.runs = {k: v for k, v in s.runs.items() if k not in planned}  # recorded again below, in the plan's order
        failed = []
        for p in self.plan:
            if is_done(*self.reports[p.label]):
                s.record(s.prepare(p.label, p.overrides, p.seed, create=False), p.arm, p.overrides, p.seed, p.selected)
            else:
                failed.append(p.label)
        out = s.tables()
        s.save(unfinished=failed)
        print(json.dumps({"runs": len(out["runs"]), "unfinished": failed}))
        if failed:  # not done: launching the sweep again finishes those runs and makes the tables again
            raise TunaError(f"tables over {len(self.plan) - len(failed)} of {len(self.plan)} runs; not finished: {', '.join(failed)}")
        atomic_write_text(done_marker(self.folder), self.key)
        return {"tables": out["tables"], "unfinished": failed}

    def __repr__(self) -> str:
        return f"TablesJob(sweep={self.sw.name}, runs={len(self.plan)})"
