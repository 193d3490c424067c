"""``manifest.json``: what each step of a run consumed, produced, cost and took, and whether it can be skipped.

A step is keyed by the hash of its inputs (configs, file hashes, model fingerprints); a re-run skips a finished step
whose inputs did not change and resumes the others (every step resumes on its own). Outputs shared between the runs of
a sweep (the teacher's data) carry a completion marker beside them, so every run of the sweep skips them.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.hashing import config_hash
from tuna.machine_load import CpuMeter
from tuna.records import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tuna", "torch", "transformers", "lightning", "datasets", "openai", "llama_cpp_python"):
        try:
            out[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            pass
    return out


class Manifest:
    """``manifest.json`` of a run: what each step consumed, produced, cost and took."""

    def __init__(self, run_dir: Path, config: dict[str, Any], *, writer: bool = True):
        """``writer`` False: another rank of a multi-GPU job, which runs the steps but leaves the records to rank 0."""
        self.writer = writer
        self.path = run_dir / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"steps": {}}
        self.data["config"] = config
        self.data["versions"] = versions()
        self.touched: set[str] = set()
        self.save()

    def save(self) -> None:
        """Write the manifest, keeping the steps other processes recorded since it was read: the jobs of a run on a
        cluster (launcher slurm) write one manifest at once; each owns the steps it ran."""
        from filelock import FileLock

        if not self.writer:
            return
        with FileLock(str(self.path) + ".lock"):
            disk = json.loads(self.path.read_text()) if self.path.exists() else {"steps": {}}
            mine = {k: v for k, v in self.data["steps"].items() if k in self.touched}
            self.data["steps"] = {**disk.get("steps", {}), **mine}
            atomic_write_json(self.path, self.data)

    def run(self, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any],
            shared_marker: Path | None = None) -> float:
        """Run ``fn`` unless a finished run with the same inputs already produced ``outputs``.

        ``shared_marker``: for outputs shared between runs (a sweep's teacher data): a file beside them holding the
        inputs' hash once they are complete, so another run's manifest can skip the step too."""
        key = config_hash(inputs)
        prev = self.data["steps"].get(name)
        done_here = prev and prev.get("status") == "done" and prev.get("inputs_hash") == key
        done_shared = shared_marker is not None and shared_marker.exists() and shared_marker.read_text().strip() == key
        if (done_here or done_shared) and all(p.exists() for p in outputs):
            log.info("step %s: done already (inputs unchanged), skipping", name)
            if not done_here:
                self.touched.add(name)
                self.data["steps"][name] = {"status": "done", "inputs_hash": key, "inputs": inputs, "shared": True,
                                            "outputs": [str(p) for p in outputs], "wall_s": 0.0}
                self.save()
            return 0.0
        self.touched.add(name)
        self.data["steps"][name] = {"status": "running", "inputs_hash": key, "inputs": inputs,
                                    "outputs": [str(p) for p in outputs], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        meter = CpuMeter()  # so that a step timed while other jobs shared the cores says so
        try:
            extra = fn() or {}
        except BaseException as e:
            # The manifest says where the run stopped and why: a TunaError's one line (it names no secret), else the
            # exception's type only.
            why = str(e) if isinstance(e, TunaError) else type(e).__name__
            self.data["steps"][name].update({"status": "failed", "error": why, "wall_s": round(time.time() - t0, 1)})
            self.save()
            raise
        wall = time.time() - t0
        self.data["steps"][name].update({"status": "done", "wall_s": round(wall, 1),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine_load": meter.reading(), **extra})
        self.save()
        if shared_marker is not None and self.writer:
            atomic_write_text(shared_marker, key)
        return wall

    def timings(self) -> dict[str, float]:
        return {k: v.get("wall_s", 0.0) for k, v in self.data["steps"].items()}
