"""Retrieval of an agent's approved material: context rules, token budget, BM25, embeddings."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from agents.models import Agent
from agents.retrieval import _candidates, bm25, forget_indexes, retrieve, terms
from agents.retrieval import _index_for as index_for
from documents.models import Document
from masscer.lib.tokens import count_tokens
from training.models import Assignment, Chunk, Completion, TrainingJob
from training.services import completion_review
from workspaces.services import workspace_personal

pytestmark = pytest.mark.django_db

APPROVED = Completion.Status.APPROVED
PENDING = Completion.Status.PENDING
REJECTED = Completion.Status.REJECTED


@pytest.fixture(autouse=True)
def fresh_indexes() -> Iterator[None]:
    # Test rollbacks reuse primary keys; every test starts without cached indexes.
    forget_indexes()
    yield
    forget_indexes()


def _chunk_for(agent: Agent) -> tuple[TrainingJob, Chunk]:
    job = TrainingJob.objects.filter(workspace=agent.workspace).first()
    if job is not None:
        return job, Chunk.objects.filter(document__workspace=agent.workspace).first()
    document = Document.objects.create(
        owner=agent.owner,
        workspace=agent.workspace,
        title="Handbook",
        filename="handbook.txt",
        file="documents/handbook.txt",
        sha256="1" * 64,
        status=Document.Status.READY,
        page_count=1,
    )
    chunk = Chunk.objects.create(document=document, index=0, text="…", token_count=1, content_hash="0" * 64)
    job = TrainingJob.objects.create(workspace=agent.workspace, owner=agent.owner, requested_count=1, model="m")
    return job, chunk


def material(
    agent: Agent,
    question: str,
    answer: str = "See the handbook.",
    *,
    status: str = APPROVED,
    rule: str = Assignment.Rule.RETRIEVE,
    tags: Sequence[str] = (),
) -> Completion:
    """A completion with the given review status, assigned to the agent with a context rule."""
    job, chunk = _chunk_for(agent)
    completion = Completion.objects.create(
        job=job,
        chunk=chunk,
        ordinal=Completion.objects.filter(job=job).count(),
        question=question,
        answer=answer,
        evidence="…",
        status=status,
    )
    Assignment.objects.create(completion=completion, agent=agent, rule=rule, tags=list(tags))
    return completion


def other_agent(owner: Any, slug: str = "sales") -> Agent:
    return Agent.objects.create(
        owner=owner, workspace=workspace_personal(user=owner), name=slug.title(), slug=slug, system_prompt="Sell."
    )


def ids(items: Sequence[Any]) -> list[int]:
    return [item.completion_id for item in items]


def test_only_approved_material_of_that_agent_is_retrieved(alice, bob, agent) -> None:
    approved = material(agent, "How do I get a refund for my order?")
    material(agent, "Can I have a refund in cash?", status=PENDING)
    material(agent, "Is a refund possible after a year?", status=REJECTED)
    material(other_agent(alice), "Refund rules for resellers?")
    material(other_agent(bob, "support"), "Refund for bob's customers?")
    material(agent, "What about a refund?", status=PENDING, rule=Assignment.Rule.ALWAYS)
    material(agent, "Refund for VIPs?", status=REJECTED, rule=Assignment.Rule.TAGS, tags=["vip"])
    found = retrieve(agent, "refund", k=10, token_budget=10_000, tags=["vip"])
    assert ids(found) == [approved.pk]
    assert found[0].rule == "retrieve" and found[0].score > 0


def test_a_rejected_completion_leaves_the_context_at_once(alice, agent) -> None:
    completion = material(agent, "How do I reset my password?")
    assert ids(retrieve(agent, "reset password")) == [completion.pk]
    completion_review(completion=completion, status=REJECTED, reviewer=alice)
    assert retrieve(agent, "reset password") == []


def test_an_edited_completion_is_retrieved_with_its_new_text(alice, agent) -> None:
    completion = material(agent, "How do I reset my password?", "Ask an admin.")
    retrieve(agent, "password")
    completion_review(
        completion=completion,
        status=APPROVED,
        reviewer=alice,
        question="How do I reset my password?",
        answer="Use the Forgot password link.",
    )
    [found] = retrieve(agent, "password")
    assert found.answer == "Use the Forgot password link."


def test_always_first_then_tags_then_the_relevant_ones(agent) -> None:
    relevant = material(agent, "How long does shipping take?", "Three days.")
    material(agent, "Do you sell gift cards?", "Yes.")  # not relevant to the message
    always = material(agent, "Who are you?", "The support assistant.", rule=Assignment.Rule.ALWAYS)
    billing = material(agent, "How are invoices sent?", "By email.", rule=Assignment.Rule.TAGS, tags=["Billing"])
    material(agent, "Do VIPs get priority?", "Yes.", rule=Assignment.Rule.TAGS, tags=["vip"])
    found = retrieve(agent, "shipping time", tags=[" billing ", "newsletter"])
    assert ids(found) == [always.pk, billing.pk, relevant.pk]
    assert [f.rule for f in found] == ["always", "tags", "retrieve"]
    assert found[0].score is None and found[1].score is None
    assert ids(retrieve(agent, "shipping")) == [always.pk, relevant.pk]  # no tags: no tagged material


def test_the_token_budget_caps_everything(agent) -> None:
    long_answer = "Our policy explains every detail. " * 40
    big_always = material(agent, "What is the policy?", long_answer, rule=Assignment.Rule.ALWAYS)
    small_always = material(agent, "What is your name?", "Masscer.", rule=Assignment.Rule.ALWAYS)
    first = material(agent, "How do refunds work?", "Press Refund.")
    second = material(agent, "Are refunds taxed?", "No.")
    found = retrieve(agent, "refunds", k=5, token_budget=40)
    # The big example does not fit and is skipped; smaller ones after it still get in.
    assert big_always.pk not in ids(found)
    assert ids(found)[0] == small_always.pk and set(ids(found)) <= {small_always.pk, first.pk, second.pk}
    assert sum(f.tokens for f in found) <= 40
    assert all(f.tokens == count_tokens(f"Q: {f.question}\nA: {f.answer}") for f in found)
    assert retrieve(agent, "refunds", token_budget=0) == []
    assert ids(retrieve(agent, "refunds", token_budget=10_000))[0] == big_always.pk


def test_k_limits_only_the_retrieved_ones(agent) -> None:
    always = [material(agent, f"Rule {n} about refunds?", rule=Assignment.Rule.ALWAYS) for n in range(3)]
    for n in range(6):
        material(agent, f"Refund question {n}?")
    found = retrieve(agent, "refund", k=2, token_budget=10_000)
    assert ids(found)[:3] == [c.pk for c in always]
    assert [f.rule for f in found[3:]] == ["retrieve", "retrieve"]


def test_bm25_ranks_sensibly(agent) -> None:
    in_question = material(agent, "How do I change my delivery address?", "In the account settings.")
    in_answer = material(agent, "Can I update my details?", "Yes, including the delivery address.")
    rare = material(agent, "What is the warranty on the espresso machine?", "Two years.")
    material(agent, "What does the warranty cover?", "Parts and labour.")
    material(agent, "Is there a warranty on cables?", "One year.")
    unrelated = material(agent, "Do you ship to Canada?", "Yes.")

    address = retrieve(agent, "change delivery address", k=5)
    assert ids(address)[:2] == [in_question.pk, in_answer.pk]
    assert unrelated.pk not in ids(address)
    # "espresso" is rare, "warranty" is common: the rare word decides.
    assert ids(retrieve(agent, "espresso warranty", k=1)) == [rare.pk]
    # Case and a plural "s" do not matter.
    assert ids(retrieve(agent, "ADDRESS changes", k=1)) == [in_question.pk]
    # Stop words alone match nothing.
    assert retrieve(agent, "how do I do it?") == []


def test_ranking_is_deterministic_with_ties(agent) -> None:
    # Equal for retrieval, not for the job's duplicate check (which keeps punctuation).
    same = [material(agent, f"Where is the invoice{mark}", "In Billing.") for mark in "?!.…"]
    first = ids(retrieve(agent, "invoice", k=4))
    assert first == [c.pk for c in same]
    forget_indexes()
    assert ids(retrieve(agent, "invoice", k=4)) == first


def test_terms_fold_case_plurals_and_stop_words() -> None:
    assert terms("How do I get Refunds for the orders, 2 of them?") == ["get", "refund", "order", "2"]
    assert terms("Class access") == ["class", "access"]


def test_one_query_per_turn_once_the_index_is_built(agent, django_assert_num_queries) -> None:
    for n in range(50):
        material(agent, f"Question {n} about refunds and parcel {n}?", f"Answer {n}.")
    with django_assert_num_queries(2):  # candidates + building the index
        retrieve(agent, "refunds parcel 7")
    with django_assert_num_queries(1):
        found = retrieve(agent, "parcel 7")
    assert found[0].question == "Question 7 about refunds and parcel 7?"
    material(agent, "A new refund question?")
    with django_assert_num_queries(2):  # new material: the index is rebuilt
        retrieve(agent, "refunds")


def test_the_index_scores_only_the_allowed_completions(agent) -> None:
    a = material(agent, "Refund by card?")
    b = material(agent, "Refund by cheque?")
    rows = list(Assignment.objects.filter(agent=agent).values_list("completion_id", flat=True))
    assert sorted(rows) == [a.pk, b.pk]
    index = index_for(agent.pk, _candidates(agent.pk))
    assert [cid for cid, _ in bm25(index, "refund", {b.pk})] == [b.pk]


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_rank_when_a_model_is_configured(agent, fake_llm, settings) -> None:
    settings.MASSCER_EMBEDDINGS_MODEL = "fake-embedding"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "emb"}}
    target = material(agent, "How do I reset my password?", "Use the reset link on the login page.")
    material(agent, "Which payment methods are accepted?", "Cards and transfers.")
    material(agent, "Pending one about password reset?", status=PENDING)
    found = retrieve(agent, "reset password link", k=1)
    assert ids(found) == [target.pk] and 0 < found[0].score <= 1
    calls = fake_llm.embedding_calls
    assert [c["model"] for c in calls] == ["fake-embedding", "fake-embedding"]
    embedded = [text for call in calls for text in call["input"]]
    assert not any("Pending one" in text for text in embedded)  # never even embedded
    assert embedded[-1] == "reset password link"

    retrieve(agent, "reset password link", k=1)
    assert len(fake_llm.embedding_calls) == 2  # documents and query come from the caches
    forget_indexes()
    retrieve(agent, "reset password link", k=1)
    assert len(fake_llm.embedding_calls) == 2  # Django's cache survives the in-memory index


def test_bm25_takes_over_when_embeddings_fail(agent, fake_llm, settings, caplog) -> None:
    settings.MASSCER_EMBEDDINGS_MODEL = "fake-embedding"
    settings.MASSCER_LLM_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
    settings.MASSCER_LLM_TIMEOUT = 2.0
    target = material(agent, "How do I reset my password?")
    with caplog.at_level(logging.WARNING, logger="agents.retrieval"):
        assert ids(retrieve(agent, "password")) == [target.pk]
    assert "ranking with BM25" in caplog.text
    settings.MASSCER_LLM_BASE_URL = fake_llm.base_url  # back up, but not asked again at once
    assert ids(retrieve(agent, "password")) == [target.pk]
    assert fake_llm.embedding_calls == []
