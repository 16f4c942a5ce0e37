"""Exports stream an agent's completions as JSON lines."""
from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command

from testing.members import add_member
from training.export import export_lines
from training.models import Completion
from training.services import completion_review, job_create

from .test_generation import run_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(alice, bob, agent, ready_document, fake_llm) -> list[Completion]:
    job = job_create(owner=alice, count=4, agents=[agent], documents=[ready_document(alice, pages=1)])
    run_job(job)
    add_member(actor=alice, workspace=job.workspace, user=bob, role="reviewer")
    completions = list(Completion.objects.filter(job=job).order_by("pk"))
    completion_review(completion=completions[0], status="approved", reviewer=bob)
    completion_review(
        completion=completions[1], status="approved", reviewer=bob, question="Edited question?", answer="Edited."
    )
    completion_review(completion=completions[2], status="rejected", reviewer=bob)
    return completions


def test_openai_jsonl_has_system_user_assistant_for_approved_only(agent, reviewed) -> None:
    lines = [json.loads(line) for line in export_lines(agent=agent, fmt="openai-jsonl")]
    assert len(lines) == 2
    for line in lines:
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert line["messages"][0]["content"] == "You help customers."
    assert lines[1]["messages"][1]["content"] == "Edited question?"


def test_records_carry_full_provenance(agent, reviewed) -> None:
    records = [json.loads(line) for line in export_lines(agent=agent, fmt="records", status="all")]
    assert [r["status"] for r in records] == ["approved", "approved", "rejected", "pending"]
    edited = records[1]
    assert edited["edited"] is True and edited["question"] == "Edited question?"
    for record in records:
        assert record["agents"] == ["support"]
        assert record["source_type"] == "document" and record["source_title"] == "Manual"
        assert record["locator"] == {"pages": [1, 1]}
        assert record["evidence"].lower().strip(".") in record["chunk_text"].lower()
        assert record["model"] == "fake-model" and record["chunk_index"] == 0


def test_the_export_command_writes_a_file(alice, agent, reviewed, tmp_path, capsys, monkeypatch: Any) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    target = tmp_path / "out.jsonl"
    call_command("export", "--agent", "support", "--format", "openai-jsonl", "--output", str(target))
    assert len(target.read_text().splitlines()) == 2


def test_editing_keeps_the_original_text(reviewed) -> None:
    edited = Completion.objects.get(pk=reviewed[1].pk)
    assert edited.edited and edited.original_question and edited.original_question != edited.question
    assert edited.reviewed_by.username == "bob" and edited.reviewed_at is not None
