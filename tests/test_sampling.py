"""Sampling as argmax over Gumbel-noised logits (tuna.feedback.generators.GumbelMaxSampler): the same distribution as
softmax sampling with transformers' temperature and nucleus warpers, checked against probabilities computed here."""

from __future__ import annotations

import math

import pytest
import torch

from tuna.feedback.generators import sampling_processors

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -3.0])
DRAWS = 200_000
# chi-square critical value for 7 degrees of freedom at p = 0.001
CHI2_CRIT_DF7 = 24.32


def expected_probs(logits: torch.Tensor, temperature: float, top_p: float, top_k: int = 0) -> torch.Tensor:
    """Softmax at a temperature over the top_k most likely tokens, then the smallest set of most likely tokens whose
    mass reaches top_p, renormalised."""
    p = [math.exp(x / temperature) for x in logits.tolist()]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    if top_k:
        p = [x if i in order[:top_k] else 0.0 for i, x in enumerate(p)]
    z = sum(p)
    p = [x / z for x in p]
    keep, mass = set(), 0.0
    for i in order:
        keep.add(i)
        mass += p[i]
        if mass >= top_p:
            break
    q = [p[i] if i in keep else 0.0 for i in range(len(p))]
    s = sum(q)
    return torch.tensor([x / s for x in q], dtype=torch.float64)


def draw(temperature: float, top_p: float, top_k: int = 0, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    scores = LOGITS.repeat(DRAWS, 1)
    procs = sampling_processors(temperature, top_p, top_k)
    out = procs(torch.zeros((DRAWS, 1), dtype=torch.long), scores)
    return torch.bincount(out.argmax(-1), minlength=len(LOGITS)).double()


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    support = probs > 0
    exp = probs[support] * counts.sum()
    return float(((counts[support] - exp) ** 2 / exp).sum()), int(support.sum()) - 1


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(1.0, 1.0, 0), (0.7, 1.0, 0), (1.3, 0.9, 0), (1.0, 0.6, 0),
                                                           (1.0, 1.0, 5), (1.5, 0.95, 6)])
def test_gumbel_max_matches_the_warped_softmax(temperature, top_p, top_k):
    counts = draw(temperature, top_p, top_k)
    probs = expected_probs(LOGITS, temperature, top_p, top_k)
    assert counts[probs == 0].sum() == 0, "a token outside the nucleus was drawn"
    stat, df = chi2(counts, probs)
    crit = {7: CHI2_CRIT_DF7, 6: 22.46, 5: 20.52, 4: 18.47, 3: 16.27, 2: 13.82, 1: 10.83}[df]
    assert stat < crit, (stat, df, counts.tolist(), probs.tolist())
    # the test has power: the same draws are far from the distribution without the warpers
    if temperature != 1.0:
        wrong, _ = chi2(counts, expected_probs(LOGITS, 1.0, 1.0))
        assert wrong > 50 * crit


def test_generation_samples_are_seeded_and_diverse(smol_tokenizer, tiny_model):
    from tuna.feedback.generators import HFGenerator
    from tuna.generation import GenerationConfig
    from tuna.prompts import alpaca_prompt

    gen = HFGenerator(tiny_model, tokenizer=smol_tokenizer, dtype="float32", device="cpu", batch_size=2)
    prompts = [alpaca_prompt("Name a colour."), alpaca_prompt("Count to three.")]
    params = GenerationConfig(n=4, temperature=1.0, max_new_tokens=6, seed=3)
    a, b = gen.generate(prompts, params), gen.generate(prompts, params)
    assert [[g.text for g in gs] for gs in a] == [[g.text for g in gs] for gs in b]  # same seed, same samples
    assert len(a) == 2 and all(len(gs) == 4 for gs in a)
    assert len({g.text for gs in a for g in gs}) > 4  # a random model sampled at T=1 does not repeat itself
    greedy = gen.generate(prompts, GenerationConfig(n=3, temperature=0.0, max_new_tokens=6))
    assert all(len({g.text for g in gs}) == 1 for gs in greedy)  # greedy: n identical answers
