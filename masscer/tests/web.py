"""Rows for the web UI tests, made straight through the ORM so lists of 200 stay fast."""
from __future__ import annotations

import hashlib
from typing import Any

import pytest

from agents.models import Agent
from conversations.models import Conversation, Message
from documents.models import Document, Page
from training.models import Assignment, Chunk, Completion, TrainingJob
from workspaces.services import workspace_personal


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """The named users' passwords hashed cheaply (autouse, so it runs before they are made)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def eager_celery() -> Any:
    """Run tasks inline, after commit, in the thread that commits (the test or the live server).

    The root conftest asks for this through the environment, but pytest-django imports the
    settings before conftest.py runs, so CELERY_TASK_ALWAYS_EAGER is still False there.
    """
    from masscer.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = before


TEXT = (
    "The Gold service plan includes two full services a year and free brake pads. "
    "It costs 149 euros per year. You can cancel within 14 days for a full refund."
)


def document(owner: Any, *, title: str = "Manual", status: str = Document.Status.READY, pages: int = 2) -> Document:
    doc = Document.objects.create(
        owner=owner,
        workspace=workspace_personal(user=owner),
        title=title,
        filename=f"{title}.txt",
        file="documents/missing.txt",
        sha256="0" * 64,
        status=status,
        page_count=pages if status == Document.Status.READY else 0,
        token_count=40 * pages if status == Document.Status.READY else 0,
        error="The PDF has no extractable text." if status == Document.Status.FAILED else "",
    )
    if status == Document.Status.READY:
        Page.objects.bulk_create(Page(document=doc, number=n, text=f"Page {n}. {TEXT}") for n in range(1, pages + 1))
    return doc


def documents(owner: Any, count: int) -> None:
    workspace = workspace_personal(user=owner)
    Document.objects.bulk_create(
        Document(owner=owner, workspace=workspace, title=f"Doc {i}", filename=f"d{i}.txt", file="x", sha256="0" * 64)
        for i in range(count)
    )


def conversation(owner: Any, *, title: str = "Plans chat") -> Conversation:
    conv = Conversation.objects.create(owner=owner, workspace=workspace_personal(user=owner), title=title)
    Message.objects.bulk_create(
        [
            Message(conversation=conv, position=0, role="user", content="What does the Gold plan include?"),
            Message(conversation=conv, position=1, role="assistant", content=TEXT),
        ]
    )
    return conv


def conversations(owner: Any, count: int) -> None:
    workspace = workspace_personal(user=owner)
    made = Conversation.objects.bulk_create(
        Conversation(owner=owner, workspace=workspace, title=f"Chat {i}") for i in range(count)
    )
    Message.objects.bulk_create(Message(conversation=c, position=0, role="user", content="Hi") for c in made)


def agent(owner: Any, name: str = "Support") -> Agent:
    return Agent.objects.create(
        owner=owner, workspace=workspace_personal(user=owner), name=name, slug=name.lower(), system_prompt="Be kind."
    )


def agents(owner: Any, count: int) -> list[Agent]:
    workspace = workspace_personal(user=owner)
    return Agent.objects.bulk_create(
        Agent(owner=owner, workspace=workspace, name=f"Agent {i}", slug=f"agent-{i}", system_prompt="x")
        for i in range(count)
    )


def job(owner: Any, source: Document | None = None, *, agent_: Agent | None = None, count: int = 3) -> TrainingJob:
    source = source or document(owner)
    made = TrainingJob.objects.create(
        owner=owner, workspace=source.workspace, requested_count=count, model="fake-model", status="completed"
    )
    made.documents.add(source)
    if agent_:
        made.agents.add(agent_)
    return made


def jobs(owner: Any, count: int) -> None:
    source = document(owner)
    made = TrainingJob.objects.bulk_create(
        TrainingJob(owner=owner, workspace=source.workspace, requested_count=5, model="m", status="completed")
        for _ in range(count)
    )
    TrainingJob.documents.through.objects.bulk_create(
        TrainingJob.documents.through(trainingjob=j, document=source) for j in made
    )


def completions(the_job: TrainingJob, count: int, *, agent_: Agent | None = None) -> list[Completion]:
    """`count` pending completions of the job's first document, each quoting the chunk."""
    source = the_job.documents.first()
    text = f"Page 1. {TEXT}"
    chunk, _ = Chunk.objects.get_or_create(
        document=source,
        index=0,
        defaults={
            "text": text,
            "token_count": 40,
            "locator": {"pages": [1, 1]},
            "content_hash": hashlib.sha256(text.encode()).hexdigest(),
        },
    )
    start = Completion.objects.filter(job=the_job).count()
    made = Completion.objects.bulk_create(
        Completion(
            job=the_job,
            chunk=chunk,
            ordinal=start + i,
            question=f"Question {start + i}: what does the Gold plan cost?",
            answer="149 euros per year.",
            evidence="It costs 149 euros per year.",
            model="fake-model",
        )
        for i in range(count)
    )
    if agent_:
        Assignment.objects.bulk_create(Assignment(completion=c, agent=agent_) for c in made)
    return made
