"""API prices in one place, with their source and date: the dry run, the Batch API ledger and the docs read them here.

Prices are US dollars per 1M tokens, standard (synchronous) tier; the Batch API bills 50 % of them
(``BATCH_DISCOUNT``). Check the source before spending: prices change, and an explicit
``price_per_1k_prompt`` / ``price_per_1k_completion`` always wins over this table.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_SOURCE = "https://platform.openai.com/docs/pricing (standard tier; Batch API = 50 %)"
PRICES_DATE = "2026-12-05"
"""When the table was checked against the source (gpt-4-0613 from its legacy-models section)."""

BATCH_DISCOUNT = 0.5
"""Batch API price / synchronous price (OpenAI: "50% lower costs")."""


@dataclass(frozen=True)
class Price:
    prompt_per_1m: float
    """Dollars per 1M input tokens (synchronous)."""
    completion_per_1m: float
    """Dollars per 1M output tokens (synchronous)."""


PRICES: dict[str, Price] = {
    "gpt-4-0613": Price(30.00, 60.00),          # the paper's GPT-4 (2023), pinned snapshot
    "gpt-4": Price(30.00, 60.00),
    "gpt-4-turbo-2024-04-09": Price(10.00, 30.00),
    "gpt-4o-2024-08-06": Price(2.50, 10.00),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini-2024-07-18": Price(0.15, 0.60),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1-2025-04-14": Price(2.00, 8.00),
    "gpt-4.1-mini-2025-04-14": Price(0.40, 1.60),
}


def price_per_1k(model: str, mode: str = "sync", price_per_1k_prompt: float = 0.0,
                 price_per_1k_completion: float = 0.0) -> tuple[float, float, str]:
    """``(prompt, completion, source)`` dollars per 1k tokens for ``mode`` sync | batch. Explicit prices (either
    non-zero) are synchronous prices and win; else the table's entry for ``model``; else 0 (a local judge)."""
    if mode not in ("sync", "batch"):
        raise ValueError(f"mode must be sync | batch, got {mode!r}")
    f = BATCH_DISCOUNT if mode == "batch" else 1.0
    if price_per_1k_prompt or price_per_1k_completion:
        return price_per_1k_prompt * f, price_per_1k_completion * f, "given"
    p = PRICES.get(model)
    if p is None:
        return 0.0, 0.0, "unknown model: priced 0"
    return p.prompt_per_1m / 1000 * f, p.completion_per_1m / 1000 * f, f"table ({PRICES_DATE})"
