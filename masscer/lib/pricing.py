"""Model prices (per million tokens) from configuration, and the cost of a call."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

MILLION = Decimal(1_000_000)


def parse_prices(spec: str) -> dict[str, tuple[Decimal, Decimal]]:
    """`"gpt-4o-mini=0.15:0.60,gpt-4o=2.5:10"` → {model: (input, output)} per 1M tokens."""
    prices: dict[str, tuple[Decimal, Decimal]] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        try:
            model, rates = item.split("=", 1)
            prompt_rate, completion_rate = rates.split(":", 1)
            prices[model.strip()] = (Decimal(prompt_rate.strip()), Decimal(completion_rate.strip()))
        except (ValueError, InvalidOperation) as exc:
            raise ValueError(f"Bad price entry {item!r}; expected model=input:output per 1M tokens") from exc
    return prices


def call_cost(
    prices: dict[str, tuple[Decimal, Decimal]], model: str, prompt_tokens: int, completion_tokens: int
) -> Decimal | None:
    """The cost of a call, or None when the model has no configured price."""
    rates = prices.get(model)
    if rates is None:
        return None
    return (rates[0] * prompt_tokens + rates[1] * completion_tokens) / MILLION
