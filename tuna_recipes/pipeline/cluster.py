"""What each step of a pipeline asks a cluster for when ``launcher: slurm`` makes it a job (docs/slurm.md).

One :class:`Resources` per kind of step, each default in one place (the fields of :class:`ClusterConfig`). A training
step's nodes and GPUs come from its own ``trainer`` section (``num_nodes``, ``devices``: Lightning reads the same
numbers inside the job, one ``srun`` task per GPU), a vLLM teacher's from ``teacher.tensor_parallel_size``; the
resources here give the rest (CPUs, memory, time, partition, account, extra sbatch flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuna.errors import TunaError

KINDS = ("data", "sample", "judge", "reference", "train", "eval", "report")
"""The kinds of step (tuna_recipes.pipeline.steps): each is a field of ClusterConfig."""


@dataclass
class Resources:
    """One job's request. ``gpus_per_node``/``nodes`` are used where the step's own config does not say them."""

    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int = 4
    mem_gb: int = 32
    """Memory per node (sbatch --mem)."""
    timeout_min: int = 60
    partition: str | None = None
    """None: ClusterConfig.partition."""
    account: str | None = None
    """None: ClusterConfig.account."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """Extra sbatch flags for this kind of step (e.g. {constraint: a100, qos: high}), merged over ClusterConfig.sbatch."""


@dataclass
class ClusterConfig:
    """Where the jobs of ``launcher: slurm`` run, and what each kind of step asks for. The defaults fit 8-GPU nodes;
    experiments/ablations/paper_slurm.yaml spells them out."""

    executor: str = "slurm"
    """slurm (sbatch through submitit; dependencies held by Slurm) | local (submitit's local executor: each job a process
    on this machine) | another submitit executor (a plugin); for those the launcher holds the dependencies and stays."""
    folder: str | None = None
    """Jobs' logs, pickles and markers (None: <sweep or run dir>/launch)."""
    partition: str | None = None
    account: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    """sbatch flags for every job (e.g. {qos: normal, mail-type: FAIL})."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before each job (e.g. [module load cuda/12.1, source .venv/bin/activate])."""
    max_requeue: int = 3
    """Times a job that timed out is requeued from its checkpoint (pre-emptions do not count)."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which a job is told to checkpoint and requeue."""
    wait: bool = False
    """slurm: stay until every job has ended (other executors always do: the launcher submits each job once the jobs it
    waits on have ended)."""
    max_running: int = 2
    """Executors other than slurm: jobs submitted at once."""
    poll_s: float = 2.0
    data: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=8, timeout_min=30))
    sample: Resources = field(default_factory=lambda: Resources(gpus_per_node=1, cpus_per_task=8, mem_gb=64, timeout_min=12 * 60))
    """Teacher sampling and scoring, the models' own samples (vLLM or HF on GPUs; an API teacher asks for no GPU)."""
    judge: Resources = field(default_factory=lambda: Resources(cpus_per_task=4, mem_gb=16, timeout_min=48 * 60))
    """The LLM judge: a network and patience (a local judge server: give it GPUs here)."""
    reference: Resources = field(default_factory=lambda: Resources(gpus_per_node=1, cpus_per_task=8, mem_gb=64, timeout_min=6 * 60))
    train: Resources = field(default_factory=lambda: Resources(cpus_per_task=10, mem_gb=480, timeout_min=24 * 60))
    """Per node; GPUs and nodes from the stage's trainer.devices and trainer.num_nodes."""
    eval: Resources = field(default_factory=lambda: Resources(gpus_per_node=1, cpus_per_task=8, mem_gb=64, timeout_min=12 * 60))
    report: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=8, timeout_min=30))


@dataclass
class Shape:
    """How a step spreads over the machine: from its own config, or None for the resources' default."""

    gpus_per_node: int | None = None
    nodes: int | None = None
    tasks_per_node: int = 1


def job_parameters(cluster: ClusterConfig, kind: str, shape: Shape, name: str) -> dict[str, Any]:
    """The parameters a submitit AutoExecutor gets for one job (generic ones, and ``slurm_*`` that other executors
    ignore)."""
    if kind not in KINDS:
        raise TunaError(f"unknown kind of step {kind!r} ({' | '.join(KINDS)})")
    r: Resources = getattr(cluster, kind)
    params: dict[str, Any] = {
        "name": name,
        "nodes": shape.nodes if shape.nodes is not None else r.nodes,
        "gpus_per_node": shape.gpus_per_node if shape.gpus_per_node is not None else r.gpus_per_node,
        "tasks_per_node": shape.tasks_per_node,
        "cpus_per_task": r.cpus_per_task,
        "mem_gb": r.mem_gb,
        "timeout_min": r.timeout_min,
        "slurm_signal_delay_s": cluster.signal_delay_s,
    }
    partition, account = r.partition or cluster.partition, r.account or cluster.account
    if partition:
        params["slurm_partition"] = partition
    if account:
        params["slurm_account"] = account
    extra = {**cluster.sbatch, **r.sbatch}
    if extra:
        params["slurm_additional_parameters"] = extra
    if cluster.setup:
        params["slurm_setup"] = list(cluster.setup)
    return params
