"""Sampling N responses per prompt from a model: a local Hugging Face model, an OpenAI-compatible server, or vLLM.

Every backend takes fully rendered prompt strings (render them with :func:`tuna.prompts.render_prompt`) and
returns ``len(prompts)`` lists of ``params.n`` :class:`Generation` objects.

Log-probs (``params.logprobs``) are the model's *raw* per-token log-probs of the sampled tokens (log_softmax of
the unprocessed logits, not of the temperature/top-p-warped distribution), which is what teacher scoring needs.
The HF backend includes the EOS token's log-prob when a sequence ends with EOS (as teacher-forced scoring
does, because the training data appends EOS); OpenAI-compatible servers never report it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tuna.errors import TunaError
from tuna.feedback.config import UNREACHABLE_TIMEOUT
from tuna.feedback.keys import read_api_key
from tuna.generation import GenerationConfig

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str
    token_logprobs: list[float] | None
    num_tokens: int
    finish_reason: str
    """``stop`` (EOS or a stop string) or ``length``."""


class Generator(Protocol):
    name: str

    def generate(self, prompts: list[str], params: GenerationConfig) -> list[list[Generation]]: ...


def _cut_at_stop(text: str, stop: list[str] | None) -> int | None:
    """Position of the earliest stop string in ``text`` (None: no stop string present)."""
    cuts = [text.find(s) for s in (stop or []) if s and s in text]
    return min(cuts) if cuts else None


# ----------------------------------------------------------------------------------------------- HF


def _forward_logprobs_impl(model: Any, enc: dict[str, Any], sequences: Any, chunk_tokens: int = 256) -> Any:
    """Raw log-probs of the generated tokens ``sequences[:, P:]`` by one forward pass (left padding respected);
    ``enc`` holds one row per sequence."""
    import torch

    from tuna.logprobs import causal_lm, chunked_response_logprobs, final_logit_softcap

    p = enc["input_ids"].shape[1]
    am = torch.cat([enc["attention_mask"], torch.ones_like(sequences[:, p:])], dim=1)
    pos = (am.cumsum(-1) - 1).clamp_min(0)  # as generate does for left-padded rows
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=sequences, attention_mask=am, position_ids=pos).last_hidden_state[:, p - 1 : -1]
    tgt = sequences[:, p:]
    flat = chunked_response_logprobs(hidden.reshape(-1, hidden.shape[-1]), lm.get_output_embeddings(), tgt.reshape(-1),
                                     softcap=final_logit_softcap(lm), chunk_tokens=chunk_tokens)
    return flat.view(tgt.shape).float().cpu()


def torch_inference_mode() -> Callable:
    """``torch.inference_mode`` as a decorator without importing torch at module import time."""

    def deco(fn: Callable) -> Callable:
        def wrapper(*a: Any, **kw: Any) -> Any:
            import torch

            with torch.inference_mode():
                return fn(*a, **kw)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper

    return deco




class GumbelMaxSampler:
    """A logits processor that turns transformers' greedy search into sampling: ``argmax(logits + g)`` with ``g`` drawn
    from a standard Gumbel distribution (``g = -log(-log u)``, ``u ~ U(0, 1)``) is a sample of ``softmax(logits)``
    (the Gumbel-max trick).

    Why not ``do_sample=True``: transformers then draws with ``torch.multinomial``, which on the CPU costs more than
    the model's forward for a large vocabulary (84 ms per step for 16 rows of Gemma 3's 262k vocabulary, against
    12 ms for the uniform draws and two vectorised logs here). Same distribution (tested), other random stream."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()
        return scores - torch.rand_like(scores).log_().neg_().log_()


def sampling_processors(temperature: float, top_p: float = 1.0, top_k: int = 0) -> Any:
    """transformers' own temperature, top-k and nucleus warpers (in the order ``generate`` applies them), then
    :class:`GumbelMaxSampler` (pass with ``do_sample=False``)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs: list[Any] = []
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    procs.append(GumbelMaxSampler())
    return LogitsProcessorList(procs)


class _TailStop:
    """A per-row stopping criterion: true once the decoded tail of the new tokens contains a stop string."""

    def __init__(self, tokenizer: Any, stop: list[str], prompt_len: int, tail_tokens: int = 12):
        self.tok, self.stop, self.prompt_len, self.tail = tokenizer, [x for x in stop if x], prompt_len, tail_tokens

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_len :]
        tails = self.tok.batch_decode(new[:, -self.tail :], skip_special_tokens=True)
        return torch.tensor([any(x in t for x in self.stop) for t in tails], dtype=torch.bool, device=input_ids.device)


@dataclass
class HFGenerator:
    """transformers ``generate`` with left padding; each prompt is encoded once and expanded to its n samples
    (one row per sample). ``batch_size`` counts prompts, so a batch holds ``batch_size * n`` sequences."""

    model: Any
    tokenizer: Any = None
    name: str = "hf"
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda[:k]."""
    dtype: str = "auto"
    """Weights dtype: auto | float32 | bfloat16 | float16; auto picks bf16 only where the device computes it natively
    (1.5x faster than fp32 on CPUs with AVX512-BF16, ~50x slower on AVX2-only CPUs; tuna.precision). A model object
    given instead of a name keeps its dtype under auto."""
    batch_size: int = 8
    add_special_tokens: bool | None = None
    """None: add the tokenizer's BOS unless the prompt already starts with it (chat-rendered prompts do)."""
    logprob_source: str = "auto"
    """logits: keep generate's raw per-step logits (memory T*B*V); forward: one teacher-forced pass over the sampled
    sequences afterwards (chunked LM head, small memory); auto: forward when the logits would pass ~1 G values."""
    _loaded: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            self.name = self.name if self.name != "hf" else self.model
        self._load()

    def _load(self) -> None:
        import torch

        from tuna.models import load_model, load_tokenizer
        from tuna.precision import device_type, resolve_dtype

        if self.device == "auto":
            self.device = device_type(self.device)
        ref = self.model if isinstance(self.model, str) else None
        if ref is None and self.dtype == "auto":  # a model object keeps the dtype it comes in
            self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.dtype = resolve_dtype(self.dtype, self.device)
        if self.tokenizer is None:
            if ref is None:
                raise TunaError("HFGenerator needs a tokenizer when given a model object")
            self.tokenizer = load_tokenizer(ref, padding_side="left")
        self.tokenizer.padding_side = "left"
        if ref is not None:
            self.model = load_model(ref, dtype=self.dtype, tokenizer=self.tokenizer)
        else:
            self.model = self.model.to(getattr(torch, self.dtype))
        self.model.to(self.device).eval()

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        tok = self.tokenizer
        add = self.add_special_tokens
        if add is None:
            bos = tok.bos_token
            add = not (bos and all(p.startswith(bos) for p in prompts))
        return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=add).to(self.device)

    def _forward_logprobs(self, enc: dict[str, Any], sequences: Any) -> Any:
        return _forward_logprobs_impl(self.model, enc, sequences)

    def generate(self, prompts: list[str], params: GenerationConfig) -> list[list[Generation]]:
        import torch

        out: list[list[Generation]] = []
        for b in range(0, len(prompts), self.batch_size):
            # Seeded per batch from the caller's seed, so a resumed run samples the same way.
            torch.manual_seed(params.seed + b)
            out.extend(self._generate_batch(prompts[b : b + self.batch_size], params))
        return out

    @torch_inference_mode()
    def _generate_batch(self, prompts: list[str], params: GenerationConfig) -> list[list[Generation]]:
        import torch

        tok = self.tokenizer
        enc = self._encode(prompts)
        greedy = params.temperature <= 0
        eos_ids = self.model.generation_config.eos_token_id
        eos_set = set(eos_ids if isinstance(eos_ids, list) else [eos_ids if eos_ids is not None else tok.eos_token_id])
        eos_set.discard(None)
        if params.n > 1:
            # one row per sample, expanded here: sampling runs as transformers' greedy search over noised logits
            # (below), which allows one return sequence per row
            enc = {k: v.repeat_interleave(params.n, dim=0) for k, v in enc.items()}
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
            # the model's generation_config may carry sampling defaults; the processors below decide everything
            temperature=None, top_p=None, top_k=None,
        )
        rows_total = enc["input_ids"].shape[0]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        src = self.logprob_source
        if src == "auto":
            src = "forward" if rows_total * params.max_new_tokens * vocab > 1e9 else "logits"
        kwargs["output_logits"] = params.logprobs and src == "logits"
        if not greedy:
            kwargs["logits_processor"] = sampling_processors(params.temperature, params.top_p, params.top_k)
        if params.stop:
            # Not transformers' stop_strings: its StopStringCriteria pre-processes the whole vocabulary (minutes for
            # Gemma's 262k tokens). Decoding the last few tokens of each row per step is cheap.
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_TailStop(tok, params.stop, enc["input_ids"].shape[1])])
        res = self.model.generate(**enc, **kwargs)
        seqs = res.sequences[:, enc["input_ids"].shape[1] :]
        lps = None
        if params.logprobs and src == "forward":
            lps = self._forward_logprobs(enc, res.sequences).tolist()
        elif params.logprobs:
            # Raw (un-warped) log-probs of the chosen tokens, one decoding step at a time: never a [B, T, V] copy.
            steps = [
                torch.log_softmax(lg.float(), dim=-1).gather(-1, seqs[:, t : t + 1]).squeeze(-1)
                for t, lg in enumerate(res.logits)
            ]
            lps = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(seqs.shape[0])]
        rows = seqs.tolist()
        gens: list[Generation] = []
        for i, ids in enumerate(rows):
            n_tok, finish = len(ids), "length"
            for t, tid in enumerate(ids):
                if tid in eos_set:
                    n_tok, finish = t + 1, "stop"  # the EOS is part of the response (its log-prob counts)
                    break
            gen_ids = ids[:n_tok]
            text_ids = gen_ids[:-1] if finish == "stop" else gen_ids
            text = tok.decode(text_ids, skip_special_tokens=True)
            cut = _cut_at_stop(text, params.stop)
            if cut is not None:
                # Keep the tokens that lie fully before the stop string.
                keep = len(text_ids)
                for k in range(1, len(text_ids) + 1):
                    if len(tok.decode(text_ids[:k], skip_special_tokens=True)) > cut:
                        keep = k - 1
                        break
                text, n_tok, finish = text[:cut], keep, "stop"
            gens.append(Generation(text=text, token_logprobs=lps[i][:n_tok] if lps is not None else None,
                                   num_tokens=n_tok, finish_reason=finish))
        return [gens[j * params.n : (j + 1) * params.n] for j in range(len(prompts))]


# ----------------------------------------------------------------------------------------------- OpenAI-compatible


@dataclass
class OpenAIGenerator:
    """An OpenAI-compatible endpoint (OpenAI, llama.cpp server, vLLM server).

    ``mode="completions"`` sends the prompt string; ``mode="chat"`` sends it as the user message. Servers that
    ignore ``n`` (llama.cpp returns one choice) are topped up with extra single calls with seeds ``seed+k``.
    The API key is read from ``api_key_file`` when given, else from the environment variable ``api_key_env``; it
    is never logged or written. Every attempt is watched (:mod:`tuna.feedback.endpoint`): a server tuna started for
    ``base_url`` that dies is restarted once, and a second death or an endpoint that refuses every connection for
    ``unreachable_timeout`` seconds stops ``generate`` with :class:`tuna.feedback.endpoint.EndpointDown`."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None
    mode: str = "completions"
    concurrency: int = 4
    max_retries: int = 6
    timeout: float = 120.0
    name: str = ""
    send_top_k: bool = False
    """Send ``top_k`` (a field llama.cpp and vLLM servers accept; the OpenAI API does not). llama.cpp's server
    otherwise samples with its own default top_k of 40."""
    unreachable_timeout: float = UNREACHABLE_TIMEOUT
    """Stop when no connection to the endpoint has succeeded for this many seconds."""

    def __post_init__(self) -> None:
        from tuna.feedback.endpoint import watched_openai

        if self.mode not in ("completions", "chat"):
            raise TunaError(f"unknown mode {self.mode!r} (completions | chat)", field="mode")
        key = read_api_key(self.api_key_env, self.api_key_file)
        if not key and self.base_url is None:
            raise TunaError(f"environment variable {self.api_key_env} is not set and no api_key_file given (needed for the OpenAI API)")
        self.name = self.name or self.model
        # The client retries 429 (honouring Retry-After), 5xx, timeouts and connection resets with back-off; the
        # watch stops the run when the endpoint is gone.
        self.client, self.health = watched_openai(base_url=self.base_url, api_key=key or "none", max_retries=self.max_retries,
                                                  timeout=self.timeout, unreachable_timeout=self.unreachable_timeout)

    def _call(self, prompt: str, params: GenerationConfig, n: int, seed: int) -> list[Generation]:
        common: dict[str, Any] = dict(model=self.model, n=n, temperature=params.temperature, top_p=params.top_p,
                                      max_tokens=params.max_new_tokens, seed=seed)
        if params.stop:
            common["stop"] = params.stop
        if self.send_top_k:
            common["extra_body"] = {"top_k": params.top_k}  # llama.cpp: 0 = off
        gens = []
        if self.mode == "completions":
            r = self.client.completions.create(prompt=prompt, logprobs=1 if params.logprobs else None, **common)
            for ch in r.choices:
                lp = list(ch.logprobs.token_logprobs) if (params.logprobs and ch.logprobs and ch.logprobs.token_logprobs) else None
                ntok = len(lp) if lp is not None else (r.usage.completion_tokens // max(len(r.choices), 1) if r.usage else 0)
                gens.append(Generation(ch.text, lp, ntok, "length" if ch.finish_reason == "length" else "stop"))
        else:
            extra = {"logprobs": True} if params.logprobs else {}
            r = self.client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common, **extra)
            for ch in r.choices:
                content = getattr(ch.logprobs, "content", None) if ch.logprobs else None
                lp = [c.logprob for c in content] if (params.logprobs and content) else None
                ntok = len(lp) if lp is not None else (r.usage.completion_tokens // max(len(r.choices), 1) if r.usage else 0)
                gens.append(Generation(ch.message.content or "", lp, ntok, "length" if ch.finish_reason == "length" else "stop"))
        return gens

    def _one_prompt(self, prompt: str, params: GenerationConfig) -> list[Generation]:
        gens = self._call(prompt, params, params.n, params.seed)
        k = 1
        while len(gens) < params.n:  # the server ignored n: one more call per missing sample, each with its own seed
            gens += self._call(prompt, params, 1, params.seed + 7919 * k)
            k += 1
        return gens[: params.n]

    def generate(self, prompts: list[str], params: GenerationConfig) -> list[list[Generation]]:
        import openai

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
                return list(pool.map(lambda p: self._one_prompt(p, params), prompts))
        except openai.APIConnectionError as e:
            self.health.raise_if_down()  # openai releases that wrap the watch's error as a connection error
            raise TunaError(f"cannot reach the server at {self.base_url or 'api.openai.com'}: {e}") from None
        except openai.APIStatusError as e:
            raise TunaError(f"server error {e.status_code}: {str(e)[:300]}") from None


# ----------------------------------------------------------------------------------------------- vLLM


@dataclass
class VLLMGenerator:
    """vLLM's offline engine with prefix caching (the n samples of a prompt share its KV cache)."""

    model: str
    name: str = ""
    dtype: str = "auto"
    """auto: bf16 where the GPU supports it, else fp16 (tuna.precision)."""
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            import vllm
        except ImportError:
            raise TunaError("backend 'vllm' needs vLLM installed (pip install 'tuna[vllm]', GPU machines); "
                            "use backend 'hf' or 'openai' here") from None
        from tuna.models import resolve

        self.name = self.name or self.model
        from tuna.precision import resolve_dtype

        self.dtype = resolve_dtype(self.dtype, "cuda")
        self.llm = vllm.LLM(model=resolve(self.model), dtype=self.dtype, enable_prefix_caching=True,
                            gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                            tensor_parallel_size=self.tensor_parallel_size, **self.engine_kwargs)

    def generate(self, prompts: list[str], params: GenerationConfig) -> list[list[Generation]]:
        import vllm

        sp = vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                 top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
                                 seed=params.seed, logprobs=0 if params.logprobs else None, stop=params.stop)
        out = []
        for req in self.llm.generate(prompts, sp, use_tqdm=False):
            gens = []
            for o in req.outputs:
                lp = None
                if params.logprobs and o.logprobs is not None:
                    lp = [step[tid].logprob for step, tid in zip(o.logprobs, o.token_ids)]
                gens.append(Generation(o.text, lp, len(o.token_ids), "length" if o.finish_reason == "length" else "stop"))
            out.append(gens)
        return out


def make_generator(backend: str, model: str, **kwargs: Any) -> Generator:
    """``backend``: ``hf`` (kwargs: device, dtype, batch_size, tokenizer), ``openai`` (base_url, api_key_env,
    mode, concurrency, max_retries, timeout, unreachable_timeout) or ``vllm`` (dtype, gpu_memory_utilization, tensor_parallel_size, engine_kwargs)."""
    if backend == "hf":
        return HFGenerator(model, **kwargs)
    if backend == "openai":
        return OpenAIGenerator(model, **kwargs)
    if backend == "vllm":
        return VLLMGenerator(model, **kwargs)
    raise TunaError(f"unknown generator backend {backend!r} (hf | openai | vllm)", field="backend")


def with_seed(params: GenerationConfig, seed: int, temperature: float | None = None) -> GenerationConfig:
    return replace(params, seed=seed, temperature=params.temperature if temperature is None else temperature)
