"""``launcher: slurm``: every step of a pipeline (of every run of a sweep) a job through submitit (docs/slurm.md).

Each step (tuna_recipes.pipeline.steps) becomes one job with the resources of its kind (tuna_recipes.pipeline.cluster)
that waits on the jobs of the steps it reads (Slurm: ``--dependency=afterok:<ids>``); steps of several runs that
compute one thing (one key: the teacher's samples, reference log-probs) are one job. A sweep ends with a tables job
that waits on every run's report whatever its outcome (``afterany``), so a failed arm does not sink the others.

``jobs.json`` in the launch folder records each job's id and logs; a job's ``done`` marker says it finished. Launching
again submits only the jobs that are neither done nor queued or running (a killed or failed job and the jobs after
it), and each resumes from its run's manifest. With submitit's local executor (``cluster.executor: local``) the jobs
are processes on this machine and the launcher submits each once the jobs it waits on have finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.hashing import config_hash
from tuna.records import atomic_write_json
from tuna_recipes.pipeline.cluster import ClusterConfig, Shape, job_parameters
from tuna_recipes.pipeline.config import PipelineConfig
from tuna_recipes.pipeline.jobs import StepJob, TablesJob, is_done
from tuna_recipes.pipeline.steps import pipeline_steps
from tuna_recipes.pipeline.sweep import Sweep, SweepConfig

SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
                "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
"""sacct states of a job that is still queued or running (UNKNOWN: sacct has not seen it yet)."""


@dataclass
class Job:
    key: str
    name: str
    """<step>@<run label> (a shared step: the first run that reads it)."""
    step: str
    kind: str
    runs: list[str]
    """Every run that reads it."""
    needs: list[str]
    """Keys of the jobs it waits on."""
    params: dict[str, Any]
    folder: str
    call: Any
    after: str = "afterok"


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=@," else "_" for c in name)


def plan_jobs(cfgs: list[PipelineConfig], folder: Path) -> list[Job]:
    """The jobs of these runs in submission order (each after the jobs it waits on); one job per step key."""
    jobs: dict[str, Job] = {}
    for cfg in cfgs:
        steps = pipeline_steps(cfg)
        key_of = {s.name: s.key for s in steps}
        for s in steps:
            if s.key in jobs:
                jobs[s.key].runs.append(cfg.name)
                continue
            name = f"{s.name}@{cfg.name}"
            jf = folder / "jobs" / f"{safe(name)}-{s.key[:8]}"
            jobs[s.key] = Job(s.key, name, s.name, s.kind, [cfg.name], [key_of[n] for n in s.needs],
                              job_parameters(cfg.cluster, s.kind, s.shape, name), str(jf), StepJob(cfg, s.name, s.key, str(jf)))
    out = list(jobs.values())
    assert len({j.key for j in out}) == len(out) and sum(len(j.runs) for j in out) == sum(len(pipeline_steps(c)) for c in cfgs)
    return out


class Launcher:
    """Submits planned jobs (or prints them), records them in ``<folder>/jobs.json``, reports their states."""

    def __init__(self, folder: Path, cluster: ClusterConfig):
        self.folder, self.cluster = folder, cluster
        self.index = folder / "jobs.json"
        self.records: dict[str, dict[str, Any]] = json.loads(self.index.read_text()) if self.index.exists() else {}

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.index, self.records)

    def executor(self, job: Job) -> Any:
        import submitit
        from submitit.core.plugins import get_executors

        if self.cluster.executor not in get_executors():
            raise TunaError(f"unknown executor {self.cluster.executor!r} (submitit has {', '.join(get_executors())})",
                            field="cluster.executor")
        try:
            return submitit.AutoExecutor(folder=job.folder, cluster=self.cluster.executor,
                                         slurm_max_num_timeout=self.cluster.max_requeue, local_max_num_timeout=self.cluster.max_requeue)
        except RuntimeError as e:  # submitit's Slurm executor on a machine without srun
            raise TunaError(f"{e} (submit from a Slurm login node; --dry_run true prints the jobs anywhere; "
                            "cluster.executor local runs them here)", field="cluster.executor") from None

    def submit(self, job: Job, dep_ids: list[str]) -> str:
        params = dict(job.params)
        if dep_ids and self.cluster.executor == "slurm":
            params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}),
                                                     "dependency": f"{job.after}:{':'.join(dep_ids)}", "kill_on_invalid_dep": "yes"}
        ex = self.executor(job)
        ex.update_parameters(**params)
        sj = ex.submit(job.call)
        self.records[job.key] = {"name": job.name, "step": job.step, "runs": job.runs, "job_id": str(sj.job_id),
                                 "executor": self.cluster.executor, "folder": job.folder, "state": "submitted",
                                 "stdout": str(sj.paths.stdout), "stderr": str(sj.paths.stderr), "after": dep_ids,
                                 "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()
        print(f"[launch] submitted {job.name} (job {sj.job_id}){' after ' + ','.join(dep_ids) if dep_ids else ''}", flush=True)
        return sj

    # ------------------------------------------------------------------------------------------- states

    def state(self, job: Job) -> tuple[str, str]:
        """(done | running | queued | failed | cancelled | not submitted, detail)."""
        if is_done(job.folder, job.key):
            return "done", ""
        rec = self.records.get(job.key)
        if rec is None:
            return "not submitted", ""
        log = f"log {rec['stderr']}"
        if rec["executor"] == "slurm":
            import submitit

            s = submitit.SlurmJob(folder=rec["folder"], job_id=rec["job_id"]).state
            if s in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "UNKNOWN"):
                return "queued", f"job {rec['job_id']} ({s.lower()})"
            if s in SLURM_ACTIVE:
                return "running", f"job {rec['job_id']}, {log}"
            return "failed", f"job {rec['job_id']} {s.lower()}, {log}"
        state = rec.get("state", "submitted")
        if state in ("failed", "cancelled"):
            return state, rec.get("error", "") + (f" ({log})" if state == "failed" else "")
        if state == "submitted":  # a local job: its launcher records how it ended, unless the launcher was stopped
            if alive(int(rec["job_id"])):
                return "running", f"job {rec['job_id']}, {log}"
            return "failed", f"job {rec['job_id']} ended while its launcher was not watching ({log})"
        return state, ""

    def active(self, job: Job) -> bool:
        return self.state(job)[0] in ("running", "queued")

    # ------------------------------------------------------------------------------------------- launching

    def launch(self, jobs: list[Job], *, dry_run: bool) -> dict[str, str]:
        """Submit (or print) every job not done; returns each job's state when this returns."""
        if dry_run:
            return self.dry_run(jobs)
        if self.cluster.executor != "slurm":
            return self.run_gated(jobs)
        ids: dict[str, str] = {}
        for job in jobs:
            if is_done(job.folder, job.key):
                continue
            if self.active(job):
                ids[job.key] = self.records[job.key]["job_id"]
                print(f"[launch] {job.name}: job {ids[job.key]} is queued or running, kept", flush=True)
                continue
            ids[job.key] = str(self.submit(job, [ids[k] for k in job.needs if k in ids]).job_id)
        if self.cluster.wait:
            while any(self.active(j) for j in jobs):
                time.sleep(self.cluster.poll_s)
        return {j.name: self.state(j)[0] for j in jobs}

    def dry_run(self, jobs: list[Job]) -> dict[str, str]:
        names = {j.key: j.name for j in jobs}
        todo = [j for j in jobs if not is_done(j.folder, j.key)]
        waiting = {j.key for j in todo}
        print(f"dry run: {len(todo)} jobs to submit ({len(jobs) - len(todo)} done) with executor {self.cluster.executor}; "
              f"logs and markers under {self.folder}/jobs")
        for i, j in enumerate(todo, 1):
            p = dict(j.params)
            res = " ".join(f"{k}={p.pop(k)}" for k in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min"))
            setup = p.pop("slurm_setup", [])
            slurm = {**{k.removeprefix("slurm_"): v for k, v in p.items() if k not in ("name", "slurm_additional_parameters")},
                     **p.get("slurm_additional_parameters", {})}
            deps = [names[k] for k in j.needs if k in waiting]
            readers = "the sweep" if j.step == "tables" else f"read by {len(j.runs)} run{'s' * (len(j.runs) > 1)}"
            print(f"\n[{i}/{len(todo)}] {j.name}  ({j.kind}; {readers})")
            print(f"  command:   srun python -u -m submitit.core._submit {j.folder}  -> {j.call!r}")
            print(f"  resources: {res}")
            if slurm:
                print(f"  slurm:     {' '.join(f'{k}={v}' for k, v in sorted(slurm.items()))}")
            if setup:
                print(f"  setup:     {' && '.join(setup)}")
            print(f"  after:     {j.after}: {', '.join(deps)}" if deps else "  after:     (nothing)")
        return {j.name: "dry run" for j in todo}

    def run_gated(self, jobs: list[Job]) -> dict[str, str]:
        """Executors without job dependencies (submitit's local executor, other schedulers' plugins): submit each job
        once the jobs it waits on have ended (``afterok``: finished; ``afterany``: in any state), at most
        ``max_running`` at once; this process stays until every job has ended."""
        outcome: dict[str, str] = {j.key: "done" for j in jobs if is_done(j.folder, j.key)}
        pending = [j for j in jobs if j.key not in outcome]
        running: dict[str, tuple[Job, Any]] = {}
        while pending or running:
            for j in list(pending):
                got = [outcome.get(k) for k in j.needs]
                if any(o is None for o in got):
                    continue
                if j.after == "afterok" and any(o != "done" for o in got):
                    outcome[j.key] = "cancelled"
                    self.records[j.key] = {"name": j.name, "step": j.step, "runs": j.runs, "executor": self.cluster.executor, "folder": j.folder,
                                           "state": "cancelled", "error": "a job it waits on did not finish", "stderr": ""}
                    self.save()
                    print(f"[launch] cancelled {j.name}: a job it waits on did not finish", flush=True)
                    pending.remove(j)
                    continue
                if len(running) < self.cluster.max_running:
                    running[j.key] = (j, self.submit(j, []))
                    pending.remove(j)
            for key, (j, sj) in list(running.items()):
                if not sj.done():
                    continue
                del running[key]
                rec = self.records[key]
                if is_done(j.folder, j.key):
                    outcome[key] = rec["state"] = "done"
                else:
                    outcome[key] = rec["state"] = "failed"
                    rec["error"] = error_line(sj)
                    print(f"[launch] FAILED {j.name}: {rec['error']} (log {rec['stderr']})", flush=True)
                self.save()
            time.sleep(self.cluster.poll_s if running else 0)
        assert len(outcome) == len(jobs)
        return {j.name: outcome[j.key] for j in jobs}


def alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_line(sj: Any) -> str:
    """The last line of a failed job's traceback (or why it has none: killed)."""
    try:
        e = sj.exception()
    except Exception as err:  # noqa: BLE001 - submitit raises when the job left no result (killed)
        return f"ended without a result ({type(err).__name__}: killed?)"
    if e is None:
        return "ended without writing its done marker"
    import re

    from submitit.core.utils import FailedJobError

    if not isinstance(e, FailedJobError):  # (FailedJobError, with the traceback, is a kind of UncompletedJobError)
        return "ended without a result (killed?)"

    raised = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$", str(e), re.M)  # the traceback's last line
    return raised[-1].strip() if raised else type(e).__name__


# ----------------------------------------------------------------------------------------------- commands


def launch_folder(cluster: ClusterConfig, root: Path) -> Path:
    return Path(cluster.folder) if cluster.folder else root / "launch"


def pipeline_command(cfg: PipelineConfig) -> Any:
    """``tuna pipeline``: run here (launcher local) or as jobs (launcher slurm)."""
    from tuna_recipes.pipeline.steps import run_pipeline

    if cfg.launcher == "local":
        return run_pipeline(cfg)
    if cfg.launcher != "slurm":
        raise TunaError(f"unknown launcher {cfg.launcher!r} (local | slurm)", field="launcher")
    folder = launch_folder(cfg.cluster, Path(cfg.run_dir))
    return Launcher(folder, cfg.cluster).launch(plan_jobs([cfg], folder), dry_run=cfg.dry_run)


@dataclass
class SweepLaunch:
    """A sweep's runs and jobs: every run's steps, then the tables job that waits on every run's report."""

    sweep: Sweep
    cfgs: list[PipelineConfig]
    jobs: list[Job]
    launcher: Launcher
    steps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """run label -> [(step, job key)] in order."""


def plan_sweep(sw: SweepConfig, *, create: bool) -> SweepLaunch:
    s = Sweep(sw)
    if sw.select is not None and not sw.select.from_file:
        raise TunaError("launcher slurm runs a sweep whose choices are made: run the validation search first "
                        "(launcher local) and point select.from_file at its selection.json", field="select")
    plan = s.plan()
    cfgs = [s.prepare(p.label, p.overrides, p.seed, create=create) for p in plan]
    cluster = cfgs[0].cluster
    folder = launch_folder(cluster, s.root)
    jobs = plan_jobs(cfgs, folder)
    steps = {c.name: [(st.name, st.key) for st in pipeline_steps(c)] for c in cfgs}
    reports = {label: next(k for n, k in st if n == "report") for label, st in steps.items()}
    by_key = {j.key: j for j in jobs}
    key = config_hash(["tables", str(s.root.resolve()), sorted(reports.values())])
    tf = folder / "jobs" / f"tables@{safe(sw.name)}-{key[:8]}"
    name = f"tables@{sw.name}"
    jobs.append(Job(key, name, "tables", "report", ["(sweep)"], list(reports.values()),
                    job_parameters(cluster, "report", Shape(), name), str(tf),
                    TablesJob(sw, plan, {label: (by_key[k].folder, k) for label, k in reports.items()}, key, str(tf)),
                    after="afterany"))
    return SweepLaunch(s, cfgs, jobs, Launcher(folder, cluster), steps)


def sweep_command(sw: SweepConfig) -> Any:
    """``tuna sweep``: the runs here one after another (launcher local), as jobs (launcher slurm), or their states."""
    from tuna_recipes.pipeline.sweep import run_sweep

    if sw.status:
        return print_status(plan_sweep(sw, create=False))
    if sw.launcher == "local":
        return run_sweep(sw)
    if sw.launcher != "slurm":
        raise TunaError(f"unknown launcher {sw.launcher!r} (local | slurm)", field="launcher")
    sl = plan_sweep(sw, create=not sw.dry_run)
    states = sl.launcher.launch(sl.jobs, dry_run=sw.dry_run)
    if not sw.dry_run:
        print_status(sl)
    return states


def status_rows(sl: SweepLaunch) -> list[tuple[str, str, str, str]]:
    """(run, step, state, detail) for every step of every run, then the tables job."""
    by_key = {j.key: j for j in sl.jobs}
    rows = []
    for label, steps in sl.steps.items():
        for step, key in steps:
            job = by_key[key]
            state, detail = sl.launcher.state(job)
            shared = f"shared with {len(job.runs) - 1} other runs ({job.name})" if len(job.runs) > 1 else ""
            rows.append((label, step, state, "; ".join(x for x in (detail, shared) if x)))
    tables = sl.jobs[-1]
    rows.append(("(sweep)", "tables", *sl.launcher.state(tables)))
    assert len(rows) == sum(len(s) for s in sl.steps.values()) + 1
    return rows


def print_status(sl: SweepLaunch) -> list[tuple[str, str, str, str]]:
    rows = status_rows(sl)
    width = max(len(r[1]) for r in rows)
    current = None
    for label, step, state, detail in rows:
        if label != current:
            print(f"\n{label}")
            current = label
        print(f"  {step:<{width}}  {state:<13} {detail}".rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[2]] = counts.get(r[2], 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return rows
