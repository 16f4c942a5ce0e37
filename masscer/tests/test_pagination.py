"""Pages read ids first hold the same rows, in the same order, as Django's own paginator's."""
from __future__ import annotations

import pytest
from django.core.paginator import Paginator

from masscer.views import IdsFirstPaginator, rows_ids_first
from training.models import Completion
from training.tests.factories import make_chunk, make_completions, make_document, make_job, numbered

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows(alice) -> list[Completion]:
    return make_completions(make_job(alice), make_chunk(make_document(alice)), numbered(23))


@pytest.mark.parametrize(("per_page", "orphans"), [(5, 0), (5, 2), (10, 3), (30, 0)])
@pytest.mark.parametrize("order", [("created_at", "id"), ("-created_at", "-id"), ("-question",)])
def test_every_page_matches_djangos_paginator(rows, per_page, orphans, order) -> None:
    queryset = Completion.objects.select_related("chunk").prefetch_related("agents").order_by(*order)
    plain, ids_first = Paginator(queryset, per_page, orphans), IdsFirstPaginator(queryset, per_page, orphans)
    assert ids_first.num_pages == plain.num_pages
    for number in plain.page_range:
        assert [c.pk for c in ids_first.page(number)] == [c.pk for c in plain.page(number)]


def test_a_slice_past_the_end_is_empty_and_costs_one_query(rows, django_assert_num_queries) -> None:
    with django_assert_num_queries(1):
        assert rows_ids_first(Completion.objects.order_by("id"), 100, 110) == []


def test_a_known_count_is_not_counted_again(rows, rf, alice, django_assert_num_queries) -> None:
    from masscer.views import paginate

    request = rf.get("/?page=2")
    with django_assert_num_queries(2):  # the page's ids and its rows; no COUNT
        page = paginate(request, Completion.objects.order_by("id"), per_page=10, count=23, ids_first=True)
        assert [c.pk for c in page] == [c.pk for c in rows[10:20]]
