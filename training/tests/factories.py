"""Rows for review, export and API tests, made directly (the pipeline has its own tests)."""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from agents.models import Agent
from conversations.models import Conversation
from documents.models import Document
from training.models import Assignment, Chunk, Completion, TrainingJob
from workspaces.models import Workspace
from workspaces.services import workspace_personal


def make_document(owner: Any, *, title: str = "Manual", workspace: Workspace | None = None) -> Document:
    return Document.objects.create(
        owner=owner,
        workspace=workspace or workspace_personal(user=owner),
        title=title,
        filename=f"{title}.txt",
        file="documents/x.txt",
        sha256="0" * 64,
        status=Document.Status.READY,
        page_count=1,
    )


def make_conversation(owner: Any, *, title: str = "Chat", workspace: Workspace | None = None) -> Conversation:
    return Conversation.objects.create(owner=owner, workspace=workspace or workspace_personal(user=owner), title=title)


def make_agent(owner: Any, *, slug: str = "support", workspace: Workspace | None = None) -> Agent:
    return Agent.objects.create(
        owner=owner,
        workspace=workspace or workspace_personal(user=owner),
        name=slug.title(),
        slug=slug,
        system_prompt="You help customers.",
    )


def make_job(owner: Any, *, workspace: Workspace | None = None, status: str = TrainingJob.Status.COMPLETED,
             count: int = 0) -> TrainingJob:
    return TrainingJob.objects.create(
        owner=owner,
        workspace=workspace or workspace_personal(user=owner),
        requested_count=count or 1,
        created_count=count,
        model="fake-model",
        status=status,
    )


def make_chunk(source: Document | Conversation, *, index: int = 0, text: str = "Some source text.") -> Chunk:
    kind = "document" if isinstance(source, Document) else "conversation"
    locator = {"pages": [1, 1]} if kind == "document" else {"messages": [0, 1]}
    return Chunk.objects.create(
        **{kind: source}, index=index, text=text, token_count=5, locator=locator, content_hash=f"{kind}{index}"
    )


def make_completions(
    job: TrainingJob,
    chunk: Chunk,
    texts: Sequence[tuple[str, str]],
    *,
    agents: Sequence[Agent] = (),
    status: str = Completion.Status.PENDING,
    **fields: Any,
) -> list[Completion]:
    start = Completion.objects.filter(job=job, chunk=chunk).count()
    fields = {"model": "fake-model", "evidence": "Some source text", **fields}
    rows = Completion.objects.bulk_create(
        Completion(job=job, chunk=chunk, ordinal=start + n, question=q, answer=a, status=status, **fields)
        for n, (q, a) in enumerate(texts)
    )
    Assignment.objects.bulk_create(Assignment(completion=row, agent=agent) for row in rows for agent in agents)
    return rows


VOCABULARY = [
    "river", "bridge", "engine", "harbour", "valve", "turbine", "ledger", "invoice", "customer", "refund",
    "warranty", "policy", "sensor", "voltage", "battery", "charger", "antenna", "signal", "router", "firmware",
    "update", "backup", "archive", "meadow", "forest", "glacier", "volcano", "canyon", "desert", "island", "lagoon",
    "summit", "valley", "plateau", "delta", "protein", "enzyme", "membrane", "neuron", "synapse", "hormone",
    "vitamin"
]


def numbered(count: int, start: int = 0) -> list[tuple[str, str]]:
    """Distinct question/answer pairs (seeded by their number, far from near-duplicates)."""
    pairs = []
    for n in range(start, start + count):
        rng = random.Random(n)
        question = " ".join(rng.sample(VOCABULARY, 6))
        answer = " ".join(rng.sample(VOCABULARY, 12))
        pairs.append((f"Case {n}: how do {question} relate?", f"For case {n}, {answer}."))
    return pairs
