"""One typed config per feedback concern, defined once and used by the library functions, the ``tuna sample`` /
``tuna score`` / ``tuna judge`` commands, the pipeline and sweeps alike.

* :class:`GeneratorConfig`: who generates (a model and the backend that runs it);
* :class:`SamplingConfig`: how N candidates per instruction are sampled (template, the decoding of
  :class:`tuna.generation.GenerationConfig`, diversity control);
* :class:`ScoringConfig`: how a teacher ranks candidate sets by its length-normalised log-likelihood;
* :class:`EndpointConfig`: an LLM behind an endpoint (API, local llama.cpp server, in process), with its cache,
  retries and budget; :class:`JudgeConfig` adds the ranking prompt and the policies that read its replies.

Commands are these dataclasses (plus the input slice and output file), so a default lives here and nowhere else;
a pipeline section that needs other defaults (the embedded teacher) subclasses the concern and says why.
Kept free of heavy imports so that ``tuna --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuna.generation import GenerationConfig

PAPER_JUDGE_SYSTEM_PROMPT = "You are a professional and experienced data annotator."
"""The released judge request's system message: gpt-eval.py L42 (microsoft/LMOps, tuna/src)."""

UNREACHABLE_TIMEOUT = 30.0
"""Seconds an endpoint may refuse every connection before the step stops (``unreachable_timeout``). Longer than the
~21 s the openai client's own back-off spent on a connection error before (a brief network drop or proxy restart
still passes), and a tenth of the 334 s the bug report lost on a dead judge; a server tuna started is watched by its
process instead (a death is seen at once)."""


@dataclass
class GeneratorConfig:
    """Who generates candidates: a model and the backend that runs it."""

    model: str = "gemma3-270m"
    """Model name or path (hf, vllm; an embedded name or .gguf for llamacpp) or the served model name (openai)."""
    backend: str = "hf"
    """hf | openai | vllm | llamacpp (a local llama.cpp server; no token log-probs)."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda (hf)."""
    dtype: str = "auto"
    """Weights dtype for hf/vllm: auto (bf16 only where the device computes it natively) | float32 | bfloat16 | float16."""
    batch_size: int = 8
    """Prompts per generate call (hf); each brings its n samples."""
    base_url: str | None = None
    """OpenAI-compatible server URL (openai), e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never logged)."""
    api_key_file: str | None = None
    """A file whose first line is the API key (instead of api_key_env; never logged or written)."""
    mode: str = "completions"
    """completions | chat (openai)."""
    concurrency: int = 4
    """Parallel requests (openai)."""
    unreachable_timeout: float = UNREACHABLE_TIMEOUT
    """Stop when no connection to the endpoint has succeeded for this many seconds (openai, llamacpp)."""
    n_ctx: int = 2048
    """Context size of the local llama.cpp server (llamacpp)."""
    tensor_parallel_size: int = 1
    """GPUs one vLLM engine spreads the model over (vllm; a Slurm job of the pipeline asks for this many)."""


@dataclass
class SamplingConfig(GenerationConfig):
    """How N candidate responses per instruction are sampled: the prompt, the decoding (:class:`GenerationConfig`,
    here N candidates with their log-probs) and the paper's diversity control (non_interactive_generate.py: a set with
    a pair at ROUGE-L >= 0.8 is resampled, temperature + 0.1 per trial, 3 trials at most, and the least similar set is
    kept)."""

    template: str = "alpaca"
    """Prompt template: alpaca | chat | raw."""
    system_prompt: str | None = None
    """System message for template chat."""
    n: int = 4
    """Candidates per instruction."""
    seed: int = 0
    """Base seed (each chunk of records uses seed + its first input index)."""
    logprobs: bool = True
    """Store per-token log-probs of the sampled tokens (needed by `tuna score --method sampling`)."""
    stop: list[str] | None = None
    """Stop strings (default for template alpaca: a new "### Instruction/Input/Response" header)."""
    dedup: bool = True
    """Resample sets with a pair of ROUGE-L >= rouge_threshold at temperature + increment."""
    rouge_threshold: float = 0.8
    """ROUGE-L F1 threshold for near-duplicates."""
    temperature_increment: float = 0.1
    """Temperature added per resampling trial."""
    max_trials: int = 3
    """Samplings per set in all, the first included."""


@dataclass
class ScoringConfig:
    """How a teacher ranks candidate sets: by its length-normalised log-likelihood ``sum(logp) / len**beta``."""

    method: str = "sampling"
    """sampling (the candidates' own token_logprobs, as text-davinci-003's) | forced (teacher-forced under `model`)."""
    beta: float = 1.0
    """Length-penalty exponent (1.0 = mean token log-prob, the released data's avg_token_prob)."""
    model: str | None = None
    """The teacher for method forced (name or path); a label for method sampling."""
    template: str = "alpaca"
    """Prompt template for method forced: alpaca | chat | raw."""
    system_prompt: str | None = None
    """System message for template chat."""
    batch_size: int = 8
    """Sequences per forward pass (forced)."""
    device: str = "auto"
    """auto | cpu | cuda (forced)."""
    dtype: str = "auto"
    """Weights dtype (forced): auto | float32 | bfloat16 | float16."""
    autocast_bf16: bool = False
    """bf16 autocast for the forward pass (forced)."""
    max_length: int = 1024
    """Longest prompt+response in tokens (the prompt's head is cut first)."""


@dataclass
class EndpointConfig:
    """An LLM that answers chat requests: an OpenAI-compatible endpoint, a local llama.cpp server started for the
    run, or a model in process; with a persistent reply cache, retries with back-off and a cost budget."""

    model: str = "smollm2-135m-instruct"
    """The served name (openai), or an embedded name / .gguf (llamacpp) / HF model (hf)."""
    backend: str = "llamacpp"
    """openai (any OpenAI-compatible URL) | llamacpp (start a local llama.cpp server) | hf (in process)."""
    base_url: str | None = None
    """Server URL for backend openai (None = api.openai.com)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never logged or written)."""
    api_key_file: str | None = None
    """A file whose first line is the API key (instead of api_key_env; never logged or written)."""
    concurrency: int = 4
    """Parallel requests."""
    max_retries: int = 6
    """Retries per request (429/5xx/timeouts/connection errors, exponential back-off)."""
    timeout: float = 120.0
    """Seconds per request."""
    unreachable_timeout: float = UNREACHABLE_TIMEOUT
    """Stop when no connection to the endpoint has succeeded for this many seconds (openai, llamacpp); a local
    llama.cpp server that dies is restarted once, a second death stops at once."""
    cache_dir: str | None = None
    """Reply cache (default $TUNA_CACHE/judge_cache)."""
    max_cost: float | None = None
    """Stop sending requests before this cost would be passed; the rest is retried next run."""
    price_per_1k_prompt: float = 0.0
    """Price per 1000 prompt tokens."""
    price_per_1k_completion: float = 0.0
    """Price per 1000 completion tokens."""
    n_ctx: int = 4096
    """Context size of the local llama.cpp server (llamacpp)."""


@dataclass
class JudgeConfig(EndpointConfig):
    """The contextual-ranking judge: the paper's request (gpt-eval.py) by default, and how its replies become rankings."""

    template: str | None = None
    """A prompt file with {instruction} and {responses} placeholders (default: the paper's prompt)."""
    instruction_format: str = "alpaca"
    """alpaca (the full Alpaca prompt, as the paper) | plain."""
    system_prompt: str | None = PAPER_JUDGE_SYSTEM_PROMPT
    """System message (the paper's by default, gpt-eval.py L42; null for none)."""
    temperature: float = 1.0
    """Judge temperature (gpt-eval.py: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling (gpt-eval.py: 1.0)."""
    max_tokens: int = 2048
    """Reply length limit (gpt-eval.py: 2048)."""
    parser: str = "robust"
    """robust (the last rank list in the reply, markdown and echoes handled) | released (gpt-eval.py's: every
    integer after the first "rank:")."""
    request_seed: bool | None = None
    """Send a seed with each request (None: only to local judges, llamacpp and hf, so their runs repeat; the request
    to an API judge is then the released one, which has no seed)."""
    reference: str = "drop"
    """drop | include: the judge's own "Response 4"."""
    missing: str = "last"
    """last | drop: candidates the judge left out (duplicates)."""
    shuffles: int = 0
    """0 = one call in sampling order (paper); k = k calls with seeded shuffles, Borda-aggregated."""
    fallback_scores: bool = False
    """If no rank list, rank by the "Response k: score" lines."""
    assistant_prefix: str = ""
    """backend hf only: prefill the start of the reply, e.g. "rank: [" (steers weak judges)."""
    constrain: str = "none"
    """none | rank_grammar: the reply must be "rank: [...]" with a permutation of the candidates (a GBNF grammar;
    llamacpp servers, or openai with a server that accepts llama.cpp's `grammar` field). Vicuna reviews by the same
    judge get a "s1 s2" first line. A 135M judge cannot follow the paper's prompt unaided."""
    seed: int = 0
    """Seed for shuffles and the request seed."""
    reasks: int = 2
    """An unparseable reply is asked again up to this many more times (each attempt recorded; not cached)."""
    mode: str = "sync"
    """sync (one chat request at a time) | batch (OpenAI Batch API: files + batches, 50 % price, within 24 h)."""
    batch_dir: str | None = None
    """Batch mode state (request files, batch ids, replies; resumable): default <out>.batch/."""
    batch_max_requests: int = 50_000
    """Requests per batch file (the API's limit: 50,000)."""
    batch_max_bytes: int = 200_000_000
    """Bytes per batch file (the API's limit: 200 MB)."""
    batch_poll_interval: float = 30.0
    """First wait between polls of a batch (seconds); grows x1.5 while nothing changes."""
    batch_poll_max_interval: float = 600.0
    """Longest wait between polls (seconds)."""
    batch_max_submits: int = 3
    """Submissions per request at most (failed or expired requests are resubmitted; then reported failed)."""
    dry_run: bool = False
    """Print requests, estimated tokens, batch files and the price (sync and batch), send nothing."""
    expected_completion_tokens: int | None = None
    """Dry run: completion tokens per request to assume (default: the paper judge's ~400; max_tokens caps it)."""


@dataclass(kw_only=True)
class InputSlice:
    """Which records of an input file a command reads."""

    input: str
    """Tuna records (JSONL) or Alpaca JSON/JSONL."""
    limit: int | None = None
    """Use at most this many input records."""
    offset: int = 0
    """Skip this many input records first."""
