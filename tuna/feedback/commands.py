"""``tuna sample``, ``tuna score``, ``tuna reference`` and ``tuna judge``: each command is its job's dataclass (the
flags are its fields, built from the concern configs of :mod:`tuna.feedback.config`) and a runner that reads the
input slice and calls the library function. Nothing else lives here.

Every library function appends to its output one fsync'ed record at a time and skips ids already there, so a
killed run resumes where it stopped and never duplicates a record.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from tuna.config import DataConfig, LogprobMode, ModelConfig
from tuna.errors import TunaError
from tuna.feedback.config import GeneratorConfig, InputSlice, JudgeConfig, SamplingConfig, ScoringConfig
from tuna.importers import load_inputs


@dataclass(kw_only=True)
class SampleJob(InputSlice, GeneratorConfig, SamplingConfig):
    """Sample N candidate responses per instruction (candidate sets, ranking null)."""

    out: str
    """Output JSONL; ids already there are skipped (resume)."""
    input_format: str = "auto"
    """auto | tuna | alpaca."""
    chunk_size: int = 8
    """Records per chunk; a kill loses at most the chunk in flight."""


def run_sample(job: SampleJob) -> str:
    from tuna.feedback.sampling import sample_candidates

    records = load_inputs(job.input, fmt=job.input_format, limit=job.limit, offset=job.offset)
    return sample_candidates(records, job.out, job, job, chunk_size=job.chunk_size)


@dataclass(kw_only=True)
class ScoreJob(InputSlice, ScoringConfig):
    """Rank candidate sets by the teacher's length-normalised log-likelihood sum(logp)/len**beta."""

    out: str
    """Output JSONL of ranked sets; ids already there are skipped (resume)."""
    chunk_size: int = 16
    """Records per chunk written together (forced)."""


def run_score(job: ScoreJob) -> str:
    from tuna.feedback.scoring import score_candidates

    records = load_inputs(job.input, fmt="tuna", limit=job.limit, offset=job.offset)
    return score_candidates(records, job.out, job, chunk_size=job.chunk_size)


@dataclass(kw_only=True)
class ReferenceJob(InputSlice):
    """Score every candidate of ranked sets under a frozen reference model, once, for loss.objective dpo | ipo.

    Writes the ranked sets with each candidate's ref_logprob (summed over the response tokens training scores, EOS
    included), ref_tokens and ref_model. Give the data settings training uses (template, max_length, ...): the
    candidates are tokenised by the training data module, and training checks the token counts."""

    out: str
    """Output JSONL; ids already there are skipped (resume)."""
    model: str
    """The reference model (usually the model the stage starts from), name or path."""
    template: str = DataConfig.template
    """As the training's data.template: alpaca | chat | raw."""
    system_prompt: str | None = DataConfig.system_prompt
    """As the training's data.system_prompt."""
    max_length: int = DataConfig.max_length
    """As the training's data.max_length."""
    min_response_tokens: int = DataConfig.min_response_tokens
    """As the training's data.min_response_tokens."""
    overlong: str = DataConfig.overlong
    """As the training's data.overlong: truncate | error."""
    logprob_mode: str = ModelConfig.logprob_mode
    """As model.logprob_mode: auto | full | chunked | packed | prefix_shared (all give the same sums)."""
    batch_size: int = 4
    """Records per forward pass (each with all its candidates)."""
    chunk_size: int = 32
    """Records written together; a kill loses at most the chunk in flight."""
    device: str = "auto"
    """auto | cpu | cuda."""
    dtype: str = ModelConfig.dtype
    """Weights dtype: as training's model.dtype (float32) | bfloat16 | float16 | auto."""
    autocast_bf16: bool = False
    """bf16 autocast for the forward pass (as training with trainer.precision bf16-mixed)."""


def run_reference(job: ReferenceJob) -> str:
    from tuna.feedback.reference import score_reference

    modes = typing.get_args(LogprobMode)
    if job.logprob_mode not in modes:
        raise TunaError(f"unknown logprob_mode {job.logprob_mode!r} ({' | '.join(modes)})", field="logprob_mode")
    if job.overlong not in ("truncate", "error"):
        raise TunaError(f"overlong must be truncate | error, got {job.overlong!r}", field="overlong")
    data = DataConfig(template=job.template, system_prompt=job.system_prompt, max_length=job.max_length,  # type: ignore[arg-type]
                      min_response_tokens=job.min_response_tokens, overlong=job.overlong)  # type: ignore[arg-type]
    records = load_inputs(job.input, fmt="tuna", limit=job.limit, offset=job.offset, kind="ranked")
    return score_reference(records, job.out, job.model, data, logprob_mode=job.logprob_mode, batch_size=job.batch_size,
                           chunk_size=job.chunk_size, device=job.device, dtype=job.dtype, autocast_bf16=job.autocast_bf16,
                           source=job.input)


@dataclass(kw_only=True)
class JudgeJob(InputSlice, JudgeConfig):
    """Rank candidate sets with an LLM judge (the paper's contextual ranking request by default)."""

    out: str
    """Output JSONL of ranked sets; ids already there are skipped; failures go to <out>.failed.jsonl."""
    summary: str | None = None
    """Where to write the JSON summary (default <out>.summary.json)."""
    stand_in_candidates: int = 0
    """Dry run only: read instructions without candidates (Alpaca) and stand in this many copies of each gold response
    for the candidates (the paper: 4), to price a pass before sampling."""


def run_judge(job: JudgeJob) -> str:
    from tuna.feedback.judge import judge_candidates
    from tuna.records import Candidate

    if job.stand_in_candidates:
        if not job.dry_run:
            raise TunaError("stand_in_candidates prices a pass: it needs dry_run true", field="stand_in_candidates")
        records = load_inputs(job.input, fmt="auto", limit=job.limit, offset=job.offset)
        for r in records:
            r.candidates = [Candidate(text=r.gold or "", source="stand-in: gold") for _ in range(job.stand_in_candidates)]
    else:
        records = load_inputs(job.input, fmt="tuna", limit=job.limit, offset=job.offset, min_candidates=2)
    return judge_candidates(records, job.out, job, summary=job.summary)


@dataclass(kw_only=True)
class JudgeReliabilityJob(InputSlice, JudgeConfig):
    """Measure a judge: order flips, self-agreement, position bias and agreement with a verifiable ranker."""

    out_dir: str = "results/judge_reliability"
    """Where report.md, report.json and asks.jsonl go."""
    sample: int | None = 60
    """Candidate sets drawn from the input (seeded by seed); null = all."""
    orders: int = 3
    """Shown orders per set (seeded shuffles)."""
    repeats: int = 2
    """Asks per shown order."""
    reference: str | None = None
    """Ranked sets of the same ids from a verifiable ranker (tuna rank --by rouge_l | task), for agreement."""
    bootstrap_samples: int = 2000
    """Bootstrap resamples of the sets for the intervals."""


def run_judge_reliability(job: JudgeReliabilityJob) -> dict:
    from tuna.feedback.reliability import command_line, measure, sample_records

    records = load_inputs(job.input, fmt="tuna", limit=job.limit, offset=job.offset, min_candidates=2)
    records = sample_records(records, job.sample, job.seed)
    return measure(records, job, orders=job.orders, repeats=job.repeats, out_dir=job.out_dir, reference=job.reference,
                   command=command_line(), bootstrap_samples=job.bootstrap_samples)


COMMANDS = {"sample": SampleJob, "score": ScoreJob, "reference": ReferenceJob, "judge": JudgeJob,
            "judge-reliability": JudgeReliabilityJob}
RUNNERS = {SampleJob: run_sample, ScoreJob: run_score, ReferenceJob: run_reference, JudgeJob: run_judge,
           JudgeReliabilityJob: run_judge_reliability}
