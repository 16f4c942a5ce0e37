"""The Train dialog's estimate (pure functions)."""
from __future__ import annotations

from decimal import Decimal

from training.estimate import (
    PAIR_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    QUESTION_TOKENS,
    REPLY_OVERHEAD_TOKENS,
    estimate,
    price_for,
    project_chunks,
    user_turns,
)
from training.planning import allocate


def test_it_reads_the_models_price_from_the_setting() -> None:
    assert price_for("gpt-4o-mini=0.15:0.60, local=0:0", "gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"))
    assert price_for("gpt-4o-mini=0.15:0.60", "other") is None


def test_an_unreadable_price_setting_means_no_price() -> None:
    assert price_for("", "m") is None
    assert price_for("nonsense", "m") is None


def test_a_short_text_is_one_chunk() -> None:
    assert project_chunks(500, budget=800, overlap=80) == [500]
    assert project_chunks(0, budget=800, overlap=80) == []


def test_a_long_text_is_projected_into_chunks_within_the_budget() -> None:
    sizes = project_chunks(10_000, budget=800, overlap=80)
    assert len(sizes) == 14  # ceil((10000 - 80) / 720)
    assert max(sizes) <= 800
    assert sum(sizes) == 10_000 + 13 * 80


def test_one_chunk_with_few_pairs_is_one_call() -> None:
    result = estimate(count=6, chunk_tokens=[700], pairs_per_call=10, calls_per_batch=3)
    assert (result.chunks_total, result.chunks_used, result.calls, result.calls_max) == (1, 1, 1, 3)
    assert result.prompt_tokens == PROMPT_OVERHEAD_TOKENS + 700
    assert result.completion_tokens == REPLY_OVERHEAD_TOKENS + 6 * PAIR_TOKENS
    assert result.cost is None and result.planned == 6 and result.shortfall == 0


def test_later_calls_carry_the_questions_already_written() -> None:
    result = estimate(count=25, chunk_tokens=[400], pairs_per_call=10, calls_per_batch=3)
    assert result.calls == 3
    assert result.prompt_tokens == 3 * (PROMPT_OVERHEAD_TOKENS + 400) + (10 + 20) * QUESTION_TOKENS


def test_chunks_used_follow_the_planner() -> None:
    tokens = [800, 800, 800, 100]
    result = estimate(count=2, chunk_tokens=tokens, pairs_per_call=10, calls_per_batch=3)
    assert result.chunks_used == sum(1 for q in allocate(2, tokens) if q) == 2
    assert result.chunks_total == 4


def test_max_tokens_caps_each_reply() -> None:
    result = estimate(count=10, chunk_tokens=[500], pairs_per_call=10, calls_per_batch=3, max_tokens=200)
    assert result.completion_tokens == 200


def test_cost_uses_the_models_prices() -> None:
    price = (Decimal("1"), Decimal("2"))
    result = estimate(count=6, chunk_tokens=[700], pairs_per_call=10, calls_per_batch=3, price=price)
    expected = (Decimal(result.prompt_tokens) * 1 + Decimal(result.completion_tokens) * 2) / Decimal(1_000_000)
    assert result.cost == expected


def test_mining_is_capped_by_the_user_questions() -> None:
    result = estimate(count=10, chunk_tokens=[300, 300], caps=[2, 1], pairs_per_call=10, calls_per_batch=3)
    assert result.planned == 3 and result.shortfall == 7 and result.calls == 2


def test_it_counts_user_turns_in_a_rendered_chunk() -> None:
    assert user_turns("[system] be kind\n[user] hi?\n[assistant] hello\n[user] price?") == 2
