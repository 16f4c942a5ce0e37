"""Reads of the training app, scoped to what a user may see."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, Q, QuerySet

from masscer.lib.llm.prompts import JUDGE_CRITERIA
from workspaces.selectors import visible_to

from .models import Chunk, Completion, TrainingJob, WorkItem
from .previews import conversation_version
from .validation import REASON_LABELS, SAMPLES_PER_ITEM, pick_samples

if TYPE_CHECKING:
    from agents.models import Agent


def agent_material(*, agent: Agent) -> QuerySet[Completion]:
    """The agent's pending and approved completions (rejected ones are not material)."""
    return Completion.objects.filter(assignments__agent=agent).exclude(status=Completion.Status.REJECTED)


def jobs_for(*, user: AbstractBaseUser) -> QuerySet[TrainingJob]:
    return visible_to(TrainingJob.objects.all(), user=user).select_related("owner").order_by("-created_at", "-id")


def completions_for(*, user: AbstractBaseUser, filters: dict[str, Any] | None = None) -> QuerySet[Completion]:
    """Completions the user may see, with optional filters: status, job, agent, source type, document,
    conversation, model, q (search in question and answer), judge_below (judged with faithfulness
    below it), judged (whether the judge scored it) and order (a judge criterion: lowest first)."""
    rows = visible_to(Completion.objects.all(), user=user, path="job__workspace")
    filters = {key: value for key, value in (filters or {}).items() if value not in (None, "")}
    if "status" in filters:
        rows = rows.filter(status=filters["status"])
    if "job" in filters:
        rows = rows.filter(job_id=filters["job"])
    if "agent" in filters:
        rows = rows.filter(assignments__agent_id=filters["agent"])
    if "document" in filters:
        rows = rows.filter(chunk__document_id=filters["document"])
    if "conversation" in filters:
        rows = rows.filter(chunk__conversation_id=filters["conversation"])
    if filters.get("source_type") == "document":
        rows = rows.filter(chunk__document__isnull=False)
    elif filters.get("source_type") == "conversation":
        rows = rows.filter(chunk__conversation__isnull=False)
    if "model" in filters:
        rows = rows.filter(model=filters["model"])
    if "q" in filters:
        rows = rows.filter(Q(question__icontains=filters["q"]) | Q(answer__icontains=filters["q"]))
    rows = _judge_filters(rows, filters).select_related("chunk", "job", "reviewed_by")
    if filters.get("order") in JUDGE_CRITERIA:
        # Lowest score first (what a reviewer checks first); unjudged completions last.
        score = F(f"judge__{filters['order']}")
        return rows.order_by(score.asc(nulls_last=True), "-created_at", "-id")
    return rows.order_by("-created_at", "-id")


def _judge_filters(rows: QuerySet[Completion], filters: dict[str, Any]) -> QuerySet[Completion]:
    if "judge_below" in filters:
        rows = rows.filter(judge__faithfulness__lt=int(filters["judge_below"]))
    if "judged" in filters:
        rows = rows.filter(judge__isnull=not filters["judged"])
    return rows


def chunks_for_document(*, document: Any) -> QuerySet[Chunk]:
    return Chunk.objects.filter(document=document).order_by("index")


def chunks_for_conversation(*, conversation: Any) -> QuerySet[Chunk]:
    """The stored chunks of the conversation as it is now (none if it changed since its last split)."""
    version = conversation_version(conversation)
    return Chunk.objects.filter(conversation=conversation, source_version=version).order_by("index")


def job_rejected_samples(*, job: TrainingJob, limit: int = SAMPLES_PER_ITEM) -> list[dict[str, str]]:
    """Up to `limit` of the model's rejected replies in a job, one of each reason first, with
    the reason's label: {"reason", "label", "text"} (the text is model output: escape it)."""
    # Every item with samples has at least one, so `limit` items are enough to fill the list.
    rows = (
        WorkItem.objects.filter(job=job)
        .exclude(samples=[])
        .order_by("pk")
        .values_list("samples", flat=True)[:limit]
    )
    return [
        {**sample, "label": REASON_LABELS.get(sample["reason"], sample["reason"].replace("_", " "))}
        for sample in pick_samples(rows, limit)
    ]
