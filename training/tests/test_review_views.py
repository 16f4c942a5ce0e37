"""The review queue: highlight, approve/reject/edit, roles, bulk review, filters, query counts."""
from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masscer.tests import web
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from testing.members import add_member
from training.models import Completion
from training.templatetags.masscer_ui import _QUOTE_CHARS, evidence_span, highlight_evidence
from training.validation import _evidence_form
from workspaces.models import Membership
from workspaces.services import workspace_personal

pytestmark = pytest.mark.django_db

CARD = "data-card data-status"  # one per completion card (the script mentions data-card too)


def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def test_the_highlight_marks_only_the_evidence_and_escapes_the_rest() -> None:
    text = "<b>Intro</b>\nIt   costs 149 EUROS per year.\n<script>x</script>"
    html = highlight_evidence(text, "it costs 149 euros per year")
    assert html == (
        "&lt;b&gt;Intro&lt;/b&gt;\n<mark class=\"evidence\">It   costs 149 EUROS per year</mark>."
        "\n&lt;script&gt;x&lt;/script&gt;"
    )


def test_the_highlight_escapes_markup_inside_the_quote() -> None:
    html = highlight_evidence("a <img src=x onerror=alert(1)> b", "<img src=x onerror=alert(1)>")
    assert html == 'a <mark class="evidence">&lt;img src=x onerror=alert(1)&gt;</mark> b'


def test_without_a_match_the_text_is_only_escaped() -> None:
    assert highlight_evidence("<p>text</p>", "missing") == "&lt;p&gt;text&lt;/p&gt;"
    assert evidence_span("text", "") is None


def test_the_highlight_ignores_quotes_around_the_evidence() -> None:
    assert evidence_span("He said: free brake pads for all.", "“free brake pads”") == (9, 24)


def _span_char_by_char(text: str, evidence: str) -> tuple[int, int] | None:
    """evidence_span as it was before ASCII text got its regex shortcut: the reference."""
    needle = _evidence_form(evidence)
    chars: list[str] = []
    where: list[int] = []
    for index, char in enumerate(text):
        if char.isspace() or char == "…":
            continue
        for folded in unicodedata.normalize("NFKC", char).casefold():
            if not folded.isspace():
                chars.append(folded)
                where.append(index)
    start = "".join(chars).find(needle) if needle else -1
    if start < 0:
        return None
    end = where[start + len(needle) - 1] + 1
    tail = evidence.rstrip().rstrip(_QUOTE_CHARS)[-1:]
    if tail in (".", "…", "!", "?") and text[end : end + 1] == tail:
        end += 1
    return where[start], end


TEXT = st.text(alphabet=st.sampled_from(list("abAB .,?!-\n\t\x1c\"'“…") + ["ß", "ﬁ", "İ", "ſ", "K", "é"]))


@settings(max_examples=400, deadline=None)
@given(text=TEXT, cut=st.tuples(st.integers(0, 40), st.integers(0, 40)), upper=st.booleans(), quoted=st.booleans())
def test_the_highlight_finds_what_the_character_by_character_match_finds(text, cut, upper, quoted) -> None:
    evidence = text[min(cut) : max(cut)]
    evidence = evidence.upper() if upper else evidence
    evidence = f"“{evidence}.”" if quoted else evidence
    assert evidence_span(text, evidence) == _span_char_by_char(text, evidence)
    assert evidence_span(text.encode("ascii", "ignore").decode(), evidence) == _span_char_by_char(
        text.encode("ascii", "ignore").decode(), evidence
    )


@pytest.mark.parametrize("url", ["/jobs/review/", "/jobs/completions/1/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, url) -> None:
    assert client.get(url)["Location"].startswith("/accounts/login/")


def test_the_queue_shows_pending_completions_with_the_evidence_highlighted(client, alice) -> None:
    job = web.job(alice)
    web.completions(job, 2)
    body = logged_in(client, alice).get("/jobs/review/").content.decode()
    assert body.count(CARD) == 2
    assert '<mark class="evidence">It costs 149 euros per year.</mark>' in body
    assert "Approve <kbd>a</kbd>" in body and "Reject <kbd>r</kbd>" in body and "Edit <kbd>e</kbd>" in body
    assert "Not reviewed yet" in body


def test_model_output_is_escaped_in_the_queue(client, alice) -> None:
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    Completion.objects.filter(pk=completion.pk).update(
        question="<script>alert('q')</script>", answer="<img src=x onerror=alert(1)>"
    )
    body = logged_in(client, alice).get("/jobs/review/").content.decode()
    assert "<script>alert('q')</script>" not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(&#x27;q&#x27;)&lt;/script&gt;" in body


def test_approve_returns_the_updated_card_for_htmx(client, alice) -> None:
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    response = logged_in(client, alice).post(
        f"/jobs/completions/{completion.pk}/review/", {"action": "approve"}, headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert body.lstrip().startswith("<article") and 'data-status="approved"' in body
    assert "Approved by alice" in body
    completion.refresh_from_db()
    assert completion.status == "approved" and completion.reviewed_by == alice


def test_reject_without_htmx_goes_back_with_a_message(client, alice) -> None:
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    response = logged_in(client, alice).post(
        f"/jobs/completions/{completion.pk}/review/", {"action": "reject", "next": "/jobs/review/?status=all"}
    )
    assert response["Location"] == "/jobs/review/?status=all"
    completion.refresh_from_db()
    assert completion.status == "rejected"


def test_an_unsafe_next_address_is_ignored(client, alice) -> None:
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    response = logged_in(client, alice).post(
        f"/jobs/completions/{completion.pk}/review/", {"action": "reject", "next": "https://evil.example/"}
    )
    assert response["Location"] == f"/jobs/completions/{completion.pk}/"


def test_edit_and_approve_keeps_the_original(client, alice) -> None:
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    original = completion.question
    logged_in(client, alice).post(
        f"/jobs/completions/{completion.pk}/review/",
        {"action": "approve", "question": "How much is the Gold plan?", "answer": "149 euros a year."},
    )
    completion.refresh_from_db()
    assert completion.status == "approved" and completion.edited
    assert completion.question == "How much is the Gold plan?" and completion.original_question == original
    body = client.get(f"/jobs/completions/{completion.pk}/").content.decode()
    assert "Original, before editing" in body and original in body


def test_an_empty_edit_is_refused(client, alice) -> None:
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    response = logged_in(client, alice).post(
        f"/jobs/completions/{completion.pk}/review/",
        {"action": "approve", "question": "", "answer": "x"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422 or response.status_code == 400
    completion.refresh_from_db()
    assert completion.status == "pending"


def test_a_member_sees_the_queue_but_cannot_approve(client, alice, bob) -> None:
    add_member(actor=alice, workspace=workspace_personal(user=alice), user=bob, role=Membership.Role.MEMBER)
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    body = logged_in(client, bob).get("/jobs/review/").content.decode()
    assert CARD in body and 'data-action="approve"' not in body
    assert "Only reviewers and admins of a workspace can approve" in body
    response = client.post(
        f"/jobs/completions/{completion.pk}/review/", {"action": "approve"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 403 and "Only reviewers and admins" in response.content.decode()
    followed = client.post(f"/jobs/completions/{completion.pk}/review/", {"action": "approve"}, follow=True)
    assert "Only reviewers and admins" in followed.content.decode()
    completion.refresh_from_db()
    assert completion.status == "pending"


def test_a_reviewer_member_can_approve(client, alice, bob) -> None:
    add_member(actor=alice, workspace=workspace_personal(user=alice), user=bob, role=Membership.Role.REVIEWER)
    job = web.job(alice)
    (completion,) = web.completions(job, 1)
    logged_in(client, bob).post(f"/jobs/completions/{completion.pk}/review/", {"action": "approve"})
    completion.refresh_from_db()
    assert completion.status == "approved" and completion.reviewed_by == bob


def test_a_member_cannot_bulk_approve(client, alice, bob) -> None:
    add_member(actor=alice, workspace=workspace_personal(user=alice), user=bob, role=Membership.Role.MEMBER)
    web.completions(web.job(alice), 3)
    response = logged_in(client, bob).post("/jobs/review/bulk/", {"action": "approve", "scope": "all"})
    assert response.status_code == 403
    assert not Completion.objects.exclude(status="pending").exists()


@pytest.mark.parametrize("url", ["/jobs/completions/{pk}/"])
def test_it_hides_alices_completions_from_charlie(client, alice, charlie, url) -> None:
    (completion,) = web.completions(web.job(alice), 1)
    assert logged_in(client, charlie).get(url.format(pk=completion.pk)).status_code == 404
    assert client.post(f"/jobs/completions/{completion.pk}/review/", {"action": "approve"}).status_code == 404
    assert CARD not in client.get("/jobs/review/?status=all").content.decode()


def test_charlies_bulk_approve_leaves_alices_completions_alone(client, alice, charlie) -> None:
    web.completions(web.job(alice), 3)
    web.completions(web.job(charlie), 1)
    logged_in(client, charlie).post("/jobs/review/bulk/", {"action": "approve", "scope": "all"})
    assert Completion.objects.filter(status="approved").count() == 1
    assert Completion.objects.get(status="approved").job.owner == charlie


def test_bulk_approve_of_the_ticked_cards(client, alice) -> None:
    made = web.completions(web.job(alice), 4)
    response = logged_in(client, alice).post(
        "/jobs/review/bulk/", {"action": "approve", "scope": "selected", "ids": [made[0].pk, made[2].pk]}, follow=True
    )
    assert set(Completion.objects.filter(status="approved").values_list("pk", flat=True)) == {made[0].pk, made[2].pk}
    assert "Approved 2 completions." in response.content.decode()


def test_bulk_reject_of_everything_the_filters_match(client, alice) -> None:
    first, second = web.job(alice), web.job(alice)
    web.completions(first, 3)
    web.completions(second, 2)
    logged_in(client, alice).post("/jobs/review/bulk/", {"action": "reject", "scope": "all", "job": first.pk})
    assert Completion.objects.filter(status="rejected", job=first).count() == 3
    assert Completion.objects.filter(status="pending", job=second).count() == 2


def test_the_filters_narrow_the_queue(client, alice) -> None:
    support = web.agent(alice, "Support")
    first, second = web.job(alice), web.job(alice)
    web.completions(first, 2, agent_=support)
    web.completions(second, 3)
    Completion.objects.filter(job=second).update(status="approved")
    logged_in(client, alice)
    assert client.get("/jobs/review/").content.decode().count(CARD) == 2
    assert client.get("/jobs/review/?status=all").content.decode().count(CARD) == 5
    assert client.get("/jobs/review/?status=approved").content.decode().count(CARD) == 3
    assert client.get(f"/jobs/review/?status=all&job={second.pk}").content.decode().count(CARD) == 3
    assert client.get(f"/jobs/review/?status=all&agent={support.pk}").content.decode().count(CARD) == 2
    assert client.get("/jobs/review/?status=all&source_type=conversation").content.decode().count(CARD) == 0
    assert client.get("/jobs/review/?status=all&q=Question 2").content.decode().count(CARD) == 1


def test_who_reviewed_and_when_is_shown(client, alice) -> None:
    (completion,) = web.completions(web.job(alice), 1)
    logged_in(client, alice).post(f"/jobs/completions/{completion.pk}/review/", {"action": "reject"})
    body = client.get("/jobs/review/?status=rejected").content.decode()
    assert "Rejected by alice," in body


@pytest.mark.parametrize("rows", [10, 200])
@pytest.mark.parametrize("query", ["", "?status=all", "?status=all&page=5", "?status=approved"])
def test_the_queue_runs_the_same_queries_for_10_and_200(
    client, alice, rows, query, django_assert_num_queries
) -> None:
    support = web.agent(alice)
    made = web.completions(web.job(alice), rows, agent_=support)
    Completion.objects.filter(pk__in=[c.pk for c in made[::2]]).update(status="approved")
    logged_in(client, alice)
    # session, user, count, the page's ids, its rows (chunk, source, job, reviewer joined),
    # assignments prefetch (agents and context rules), reviewer workspaces, agents whose rules
    # the user may set, job choices, agent choices
    with django_assert_num_queries(10):
        response = client.get(f"/jobs/review/{query}")
    shown = rows if "all" in query else rows // 2  # page 5 of 10 rows is their last page
    assert response.content.decode().count(CARD) == min(shown, 25)


def test_a_deep_page_shows_the_rows_in_queue_order(client, alice) -> None:
    made = web.completions(web.job(alice), 60)
    body = logged_in(client, alice).get("/jobs/review/?page=3").content.decode()
    shown = [int(part.split('"')[0]) for part in body.split('id="c-')[1:]]
    assert shown == [c.pk for c in made[50:60]]
