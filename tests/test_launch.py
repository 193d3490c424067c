"""`launcher: slurm` without a cluster: the dry run, sbatch files through submitit's Slurm executor (a stand-in sbatch
that records them), and a real sweep of tiny-model arms as separate processes (submitit's local executor) with a
pre-empted job requeued, a killed job resubmitted, a failing arm isolated, and the tables equal to the local launcher's."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tb_logs import tb_scalars
from test_pipeline import REPO, run_cli, tiny_pipeline

from tuna.hashing import content_fingerprint
from tuna_recipes.pipeline.config import build_config

ARMS = {"m0": {"prob_rank.loss.margin": 0.0}, "m1": {"prob_rank.loss.margin": 0.1},
        "broken": {"prob_rank.optim.lr": -1.0}}  # a valid config whose training fails at once (torch: invalid lr)
STEPS = 10


def write_sweep(tmp: Path, name: str, *, cluster: dict, **extra) -> Path:
    base = tiny_pipeline(tmp / name)
    base["prob_rank"]["trainer"].update(max_steps=STEPS, max_epochs=STEPS, checkpoint_every_n_steps=1)
    base["cluster"] = cluster
    (tmp / f"{name}.base.yaml").write_text(yaml.safe_dump(base))
    sw = {"base": str(tmp / f"{name}.base.yaml"), "name": "tiny", "run_dir": str(tmp / name / "sweep"),
          "results_dir": str(tmp / name / "results"), "arms": ARMS,
          "set": {"evaluate": ["tuna_p"], "evaluation.benchmarks": ["lmentry"]}, **extra}
    path = tmp / f"{name}.sweep.yaml"
    path.write_text(yaml.safe_dump(sw, sort_keys=False))
    return path


def dry_run_jobs(out: str) -> dict[str, dict[str, str]]:
    """The dry run's jobs: name -> {resources, after, ...} (the lines under each `[i/n] name` header)."""
    jobs: dict[str, dict[str, str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("["):
            current = line.split("] ", 1)[1].split("  (")[0]
            jobs[current] = {"header": line}
        elif current and line.startswith("  ") and ":" in line:
            k, v = line.strip().split(":", 1)
            jobs[current][k] = v.strip()
    return jobs


def test_dry_run_lists_every_job_with_resources_and_dependencies(tmp_path):
    cluster = {"executor": "slurm", "partition": "gpu", "account": "acct", "sbatch": {"qos": "high"},
               "train": {"cpus_per_task": 6, "mem_gb": 100}}
    path = write_sweep(tmp_path, "dry", cluster=cluster)
    proc = run_cli("sweep", "--config", str(path), "--launcher", "slurm", "--dry_run", "true", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout)
    # one teacher job for the three arms, then per arm: training, its evaluation, its report; then the tables
    assert "dry run: 11 jobs to submit (0 done)" in proc.stdout
    assert len(jobs) == 11 and list(jobs)[0] == "teacher@m0" and list(jobs)[-1] == "tables@tiny"
    assert "read by 3 runs" in jobs["teacher@m0"]["header"] and jobs["teacher@m0"]["after"] == "(nothing)"
    for arm in ARMS:
        assert jobs[f"tuna_p@{arm}"]["after"] == "afterok: teacher@m0"
        assert jobs[f"eval_tuna_p@{arm}"]["after"] == f"afterok: tuna_p@{arm}"
        assert jobs[f"report@{arm}"]["after"] == f"afterok: eval_tuna_p@{arm}"
    assert jobs["tables@tiny"]["after"] == "afterany: report@m0, report@m1, report@broken"
    # a training job: Lightning's devices and nodes (cpu here: no GPU) with the cluster's cpus/memory
    assert jobs["tuna_p@m0"]["resources"] == "nodes=1 tasks_per_node=1 gpus_per_node=0 cpus_per_task=6 mem_gb=100 timeout_min=1440"
    assert jobs["eval_tuna_p@m0"]["resources"].startswith("nodes=1 tasks_per_node=1 gpus_per_node=1 cpus_per_task=8 mem_gb=64")
    assert jobs["tuna_p@m0"]["slurm"] == "account=acct partition=gpu qos=high signal_delay_s=120"
    assert not (tmp_path / "dry" / "sweep").exists()  # nothing submitted, nothing written

    # a pipeline: 8 GPUs under FSDP on 2 nodes -> 2 nodes x 8 srun tasks, one per GPU
    cfg = tiny_pipeline(tmp_path / "one")
    cfg["prob_rank"]["trainer"].update(accelerator="gpu", devices=8, num_nodes=2, strategy="fsdp")
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("pipeline", "--config", str(tmp_path / "one.yaml"), "--launcher", "slurm", "--dry_run", "true", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout)
    assert list(jobs) == ["teacher@tiny", "tuna_p@tiny", "eval_student@tiny", "eval_tuna_p@tiny", "report@tiny"]
    assert jobs["tuna_p@tiny"]["resources"].startswith("nodes=2 tasks_per_node=8 gpus_per_node=8 ")
    assert jobs["report@tiny"]["after"] == "afterok: eval_student@tiny, eval_tuna_p@tiny"


def test_paper_ablation_dry_run():
    """The paper-scale objective ablation: the teacher's samples and the reference log-probs are one job each."""
    proc = run_cli("sweep", "--config", "experiments/ablations/objective_slurm.yaml", "--dry_run", "true", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout)
    from tuna.objectives import OBJECTIVES

    n = len(OBJECTIVES)
    refs = [j for j in jobs if j.startswith("reference_")]
    assert len(jobs) == 1 + 3 * n + len(refs) + 1 and len(refs) == 1 and "read by 3 runs" in jobs[refs[0]]["header"]
    assert "read by 8 runs" in jobs["teacher@objective=tuna"]["header"]
    assert jobs["teacher@objective=tuna"]["resources"].startswith("nodes=1 tasks_per_node=1 gpus_per_node=8 ")  # vLLM TP 8
    assert jobs["tuna_p@objective=dpo"]["resources"].startswith("nodes=1 tasks_per_node=8 gpus_per_node=8 ")
    assert jobs["tuna_p@objective=dpo"]["after"] == f"afterok: teacher@objective=tuna, {refs[0]}"


def fake_slurm(bin_dir: Path) -> Path:
    """sbatch that records each script and answers with a job id; sacct that says every job is pending; srun."""
    bin_dir.mkdir()
    log = bin_dir / "sbatch.log"
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(($(cat {log} 2>/dev/null | wc -l) + 100))
cp "$1" {bin_dir}/job$n.sh
echo "$1" >> {log}
echo "Submitted batch job $n"
""")
    (bin_dir / "sacct").write_text("""#!/bin/sh
ids=$(echo "$@" | sed -n 's/.*-j \\([0-9,]*\\).*/\\1/p' | tr ',' ' ')
echo "JobID|State|NodeList"
for i in $ids; do echo "$i|PENDING|None assigned"; done
""")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that it exists; the sbatch scripts call it
    for f in ("sbatch", "sacct", "srun"):
        (bin_dir / f).chmod((bin_dir / f).stat().st_mode | stat.S_IEXEC)
    return log


def test_slurm_executor_writes_sbatch_files_with_dependencies(tmp_path):
    """submitit's own Slurm executor writes the sbatch scripts: resources, partition, and afterok on the real ids."""
    fake_slurm(tmp_path / "bin")
    path = write_sweep(tmp_path, "sb", cluster={"executor": "slurm", "partition": "gpu", "setup": ["echo setup-line"]})
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "TUNA_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "sweep", "--config", str(path), "--launcher", "slurm"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripts = sorted((tmp_path / "bin").glob("job*.sh"))
    assert len(scripts) == 11
    text = {int(p.stem[3:]): p.read_text() for p in scripts}
    assert "#SBATCH --dependency" not in text[100] and "#SBATCH --job-name=teacher@m0" in text[100]
    assert "#SBATCH --dependency=afterok:100" in text[101] and "#SBATCH --kill-on-invalid-dep=yes" in text[101]
    assert "#SBATCH --partition=gpu" in text[101] and "#SBATCH --ntasks-per-node=1" in text[101] and "echo setup-line" in text[101]
    assert "#SBATCH --dependency=afterok:101" in text[102] and "#SBATCH --dependency=afterok:100" in text[104]
    assert "#SBATCH --dependency=afterany:103:106:109" in text[110]
    # each arm's steps: the status asks sacct (here: all pending)
    proc = subprocess.run([sys.executable, "-m", "tuna_recipes", "sweep", "--config", str(path), "--status", "true"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "13 queued"  # 3 arms x 4 steps + the tables


def _pid(job_dir: Path) -> int | None:
    f = job_dir / "started.json"
    return json.loads(f.read_text())["pid"] if f.exists() else None


def _job_dir(root: Path, name: str) -> Path | None:
    found = sorted((root / "launch" / "jobs").glob(f"{name}-*"))
    return found[0] if found else None


def test_local_executor_sweep_resumes_isolates_failures_and_matches_local(shared_data, tmp_path):
    t0 = time.time()
    # the local launcher (one process), on the arms that train
    local = write_sweep(tmp_path, "L", cluster={}, only=["m0", "m1"])
    proc = run_cli("sweep", "--config", str(local))
    assert proc.returncode == 0, proc.stderr[-3000:]
    t_local = time.time() - t0

    # the jobs launcher with submitit's local executor: every step a process
    path = write_sweep(tmp_path, "S", cluster={"executor": "local", "max_running": 2, "poll_s": 0.2})
    root = tmp_path / "S" / "sweep"
    env = {**os.environ, "TUNA_PROGRESS": "0"}
    log = (tmp_path / "launch1.log").open("w")
    launcher = subprocess.Popen([sys.executable, "-m", "tuna_recipes", "sweep", "--config", str(path), "--launcher", "slurm"],
                                stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    preempted = killed = None
    deadline = time.time() + 1200
    while launcher.poll() is None and time.time() < deadline:
        d = _job_dir(root, "tuna_p@m1")
        if preempted is None and d and _pid(d) and (root / "m1/tuna_p/checkpoints/last.ckpt").exists():
            preempted = _pid(d)
            os.kill(preempted, signal.SIGUSR2)  # what Slurm sends before a pre-emption or the time limit
        d = _job_dir(root, "eval_tuna_p@m0")
        if killed is None and d and _pid(d):
            killed = _pid(d)
            os.kill(killed, signal.SIGKILL)  # no warning: the job dies
        time.sleep(0.05)
    assert launcher.wait(timeout=60) == 0, (tmp_path / "launch1.log").read_text()[-3000:]
    first = (tmp_path / "launch1.log").read_text()
    assert preempted and killed, first[-3000:]

    # the pre-empted training was requeued in place and resumed from its checkpoint
    d = _job_dir(root, "tuna_p@m1")
    job_log = "".join(p.read_text() for p in d.glob("*_log.*"))
    assert "Requeued job" in job_log and "requeued 1x" in job_log and "resuming from" in job_log and "last.ckpt" in job_log
    assert json.loads((root / "m1/tuna_p/train_summary.json").read_text())["global_step"] == STEPS
    # the killed evaluation failed, its report never ran; the broken arm failed alone; the tables came anyway
    status = run_cli("sweep", "--config", str(path), "--status", "true", timeout=300)
    assert status.returncode == 0, status.stderr[-3000:]
    rows = {(arm, line.split()[0]): line.split()[1] for arm in ARMS for line in _section(status.stdout, arm)}
    assert rows[("m1", "report")] == "done" and rows[("m0", "tuna_p")] == "done" and rows[("m0", "teacher")] == "done"
    assert rows[("m0", "eval_tuna_p")] == "failed" and rows[("m0", "report")] == "cancelled"
    assert rows[("broken", "tuna_p")] == "failed" and rows[("broken", "eval_tuna_p")] == "cancelled"
    failed_line = next(line for line in _section(status.stdout, "broken") if line.split()[0] == "tuna_p")
    assert "Invalid learning rate" in failed_line and "_log.err" in failed_line
    assert "killed?" in next(line for line in _section(status.stdout, "m0") if line.split()[0] == "eval_tuna_p")
    assert "not finished: m0, broken" in _section(status.stdout, "(sweep)")[0]  # the tables job: partial, so not done
    sweep = json.loads((root / "sweep.json").read_text())
    assert [r["label"] for r in sweep["runs"]] == ["m1"] and sweep["unfinished"] == ["m0", "broken"]

    # launched again: only what did not finish is submitted, and it resumes (the teacher and trainings are not redone)
    proc = run_cli("sweep", "--config", str(path), "--launcher", "slurm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    submitted = sorted(line.split()[2] for line in proc.stdout.splitlines() if line.startswith("[launch] submitted"))
    assert submitted == ["eval_tuna_p@m0", "report@m0", "tables@tiny", "tuna_p@broken"], proc.stdout[-3000:]
    man = json.loads((root / "m0/manifest.json").read_text())["steps"]
    assert all(man[s]["status"] == "done" for s in ("teacher_sample", "teacher_score", "tuna_p", "eval_tuna_p_lmentry"))
    rerun_log = "".join(p.read_text() for p in _job_dir(root, "eval_tuna_p@m0").glob("*_log.out"))
    assert "=== tuna_p ===" not in rerun_log and "=== teacher_sample ===" not in rerun_log

    # the tables: the same as the local launcher's, from the same manifests; the same models and curves
    sweep = json.loads((root / "sweep.json").read_text())
    assert sorted(r["label"] for r in sweep["runs"]) == ["m0", "m1"] and sweep["unfinished"] == ["broken"]
    table = (tmp_path / "S/results/ablation_run.md").read_text()
    assert table == (tmp_path / "L/results/ablation_run.md").read_text()
    assert table.count("\n| m") == 2
    local_root = tmp_path / "L" / "sweep"
    assert content_fingerprint(root / "m0/tuna_p/hf") == content_fingerprint(local_root / "m0/tuna_p/hf")
    got, want = tb_scalars(root / "m1/tuna_p", "train/loss"), tb_scalars(local_root / "m1/tuna_p", "train/loss")
    assert sorted(got) == sorted(want) == list(range(STEPS))
    for s in range(STEPS):
        assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), f"step {s}: the resumed job's loss differs"
    cfg = build_config(yaml.safe_load((tmp_path / "S.base.yaml").read_text()))
    assert cfg.cluster.executor == "local"
    print(f"local launcher {t_local:.0f}s, jobs {time.time() - t0 - t_local:.0f}s")


def _section(out: str, arm: str) -> list[str]:
    """The status lines of one arm (its indented rows under its label)."""
    lines = out.splitlines()
    i = lines.index(arm)
    rows = []
    for line in lines[i + 1:]:
        if not line.startswith("  "):
            break
        rows.append(line.strip())
    assert rows, out
    return rows
