from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from training.planning import allocate, calls_budget


def test_it_spreads_n_in_proportion_to_tokens() -> None:
    assert allocate(10, [800, 400, 400, 400]) == [4, 2, 2, 2]


def test_it_gives_the_largest_remainders_the_leftovers() -> None:
    # exact shares 3.33, 3.33, 3.33 -> one extra to the first (ties go to the earlier chunk)
    assert allocate(10, [100, 100, 100]) == [4, 3, 3]


def test_it_picks_chunks_spread_over_the_document_when_n_is_small() -> None:
    quotas = allocate(3, [100] * 9)
    assert sum(quotas) == 3
    picked = [i for i, q in enumerate(quotas) if q]
    assert picked == [1, 4, 7]


@given(st.integers(0, 500), st.lists(st.integers(0, 2000), min_size=1, max_size=60))
def test_quotas_always_sum_to_n(count: int, tokens: list[int]) -> None:
    quotas = allocate(count, tokens)
    assert sum(quotas) == count
    assert len(quotas) == len(tokens)
    assert all(q >= 0 for q in quotas)


def test_calls_budget_grows_with_batches() -> None:
    assert calls_budget(5, per_call=10, calls_per_batch=3) == 3
    assert calls_budget(25, per_call=10, calls_per_batch=3) == 9
