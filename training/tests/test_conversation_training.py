"""Conversations as a training source: synthesize and mine, redaction, locators, export."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from conversations.models import Conversation
from conversations.services import conversation_create, conversations_import
from training.export import export_lines
from training.models import Completion, TrainingJob, WorkItem
from training.services import job_create

from .test_generation import run_job

pytestmark = pytest.mark.django_db
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "conversations"


def imported(owner: Any, name: str) -> list[Conversation]:
    path = SAMPLES / name
    report = conversations_import(owner=owner, data=path.read_bytes(), filename=path.name)
    return list(Conversation.objects.filter(pk__in=[c.id for c in report.imported]).order_by("pk"))


def test_it_synthesizes_n_pairs_spread_over_several_conversations(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "openai-messages.jsonl")
    assert len(conversations) == 2
    job = job_create(owner=alice, count=6, agents=[agent], conversations=conversations)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 6
    sources = set(Completion.objects.filter(job=job).values_list("chunk__conversation_id", flat=True))
    assert sources == {c.pk for c in conversations}
    records = [json.loads(line) for line in export_lines(agent=agent, fmt="records", status="all")]
    assert len(records) == 6
    for record in records:
        assert record["source_type"] == "conversation"
        first, last = record["locator"]["messages"]
        assert 0 <= first <= last


def test_tool_results_reach_the_prompt(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "openai-messages.jsonl")
    job = job_create(owner=alice, count=2, agents=[agent], conversations=conversations[:1])
    run_job(job)
    prompts = " ".join(call["prompt"] for call in fake_llm.calls)
    assert "lookup_policy" in prompts
    assert "5-year warranty against manufacturing defects" in prompts


def test_the_abandoned_chatgpt_branch_never_reaches_the_model(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "chatgpt-export.json")
    job = job_create(owner=alice, count=3, agents=[agent], conversations=conversations)
    run_job(job)
    assert job.created_count == 3
    assert all("draft that was edited" not in call["prompt"] for call in fake_llm.calls)
    assert not Completion.objects.filter(chunk__text__contains="draft that was edited").exists()


def test_mine_asks_for_standalone_rewrites_of_follow_up_questions(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "sharegpt.json")
    job = job_create(owner=alice, count=3, agents=[agent], conversations=conversations, style="mine")
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    # sg-1 has two user questions, sg-2 one: the quotas follow the questions asked.
    assert sorted(WorkItem.objects.filter(job=job).values_list("quota", flat=True)) == [1, 2]
    follow_up = [call["prompt"] for call in fake_llm.calls if "Can I cancel it?" in call["prompt"]]
    assert follow_up, "the chunk with the follow-up question was sent to the model"
    prompt = follow_up[0]
    # The follow-up travels with the earlier turn it refers to, and the model is told to resolve it.
    assert "What does the Gold service plan include?" in prompt
    assert "stands on its own" in prompt and "follow-up" in prompt
    assert "questions the user actually asked" in prompt


def test_mine_caps_at_the_questions_asked_and_records_the_shortfall(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "sharegpt.json")
    job = job_create(owner=alice, count=10, agents=[agent], conversations=conversations, style="mine")
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 3 and job.shortfall == 7
    assert job.shortfall_reasons["source_exhausted"] == 7


def test_mine_is_refused_for_documents(alice, agent, ready_document) -> None:
    with pytest.raises(ValidationError, match="conversations only"):
        job_create(owner=alice, count=2, agents=[agent], documents=[ready_document(alice)], style="mine")


def test_redaction_masks_personal_data_before_it_leaves_for_the_model(alice, agent, fake_llm) -> None:
    conversation = conversation_create(
        owner=alice,
        title="Refund",
        messages=[
            {"role": "user", "content": "My card 4111 1111 1111 1111 was charged twice. Mail me at ana@example.com."},
            {"role": "assistant", "content": "We refund double charges within 5 days. Call +44 20 7946 0958 if not."},
        ],
    )
    job = job_create(owner=alice, count=2, agents=[agent], conversations=[conversation], redact=True)
    run_job(job)
    prompts = " ".join(call["prompt"] for call in fake_llm.calls)
    assert "ana@example.com" not in prompts and "4111 1111 1111 1111" not in prompts
    assert "7946 0958" not in prompts
    assert "[email]" in prompts and "[card]" in prompts
    completions = Completion.objects.filter(job=job)
    assert completions.count() == 2
    assert all(c.redacted for c in completions)
    assert all("ana@example.com" not in c.question + c.answer + c.evidence for c in completions)
