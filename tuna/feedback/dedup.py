"""The paper's diversity control for sampled candidate sets (the released code's ``tuna/src/non_interactive_generate.py``
L98-155; docs/fidelity.md, row "dedup").

If any two of the N samples of a prompt have ROUGE-L F1 >= ``threshold`` (``rouge_score``, ``use_stemmer=True``),
the whole set is resampled with the temperature raised by ``temperature_increment``, for at most
``max_trials`` trials in all; the set with the lowest mean pairwise ROUGE-L is kept.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from typing import Any


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def pairwise_rouge_l(texts: list[str]) -> list[float]:
    """ROUGE-L F1 of every unordered pair (empty list for fewer than two texts)."""
    sc = _scorer()
    return [sc.score(a, b)["rougeL"].fmeasure for a, b in combinations(texts, 2)]


def set_diversity(texts: list[str]) -> tuple[float, float]:
    """``(mean, max)`` pairwise ROUGE-L of a candidate set (0, 0 for a single text)."""
    r = pairwise_rouge_l(texts)
    return (sum(r) / len(r), max(r)) if r else (0.0, 0.0)
