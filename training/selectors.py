"""Reads of the training app, scoped to what a user may see."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from masscer.lib.llm.prompts import JUDGE_CRITERIA
from workspaces.selectors import visible_to

from .models import Chunk, Completion, TrainingJob, WorkItem
from .previews import conversation_version
from .question_types import DEFAULT_TYPE, QUESTION_TYPES, type_counts, type_filter
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
    conversation, model, question_type, q (search in question and answer), judge_below (judged with
    faithfulness below it), judged (whether the judge scored it) and order (a judge criterion: lowest first)."""
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
    if "question_type" in filters:
        rows = rows.filter(question_type__in=type_filter(filters["question_type"]))
    if "q" in filters:
        rows = rows.filter(Q(question__icontains=filters["q"]) | Q(answer__icontains=filters["q"]))
    rows = _judge_filters(rows, filters).select_related("chunk", "job", "reviewed_by")
    if filters.get("order") in JUDGE_CRITERIA:
        # Lowest score first (what a reviewer checks first); unjudged completions last.
        score = F(f"judge__{filters['order']}")
        return rows.order_by(score.asc(nulls_last=True), "-created_at", "-id")
    return rows.order_by("-created_at", "-id")


def _made_name(question_type: str) -> str:
    return f"made_{question_type}"


def jobs_with_type_mix(rows: QuerySet[TrainingJob]) -> QuerySet[TrainingJob]:
    """`rows` with each job's completions counted per question type, for `job_type_mix`: a list
    of jobs costs one query whatever its length (a subquery per type, run for the rows shown)."""
    for key in QUESTION_TYPES:
        made = (
            Completion.objects.filter(job=OuterRef("pk"), question_type__in=type_filter(key))
            .order_by()
            .values("job")
            .annotate(n=Count("pk"))
            .values("n")
        )
        rows = rows.annotate(**{_made_name(key): Coalesce(Subquery(made), 0)})
    return rows


def _made_by_type(job: TrainingJob) -> dict[str, int]:
    if all(_made_name(key) in job.__dict__ for key in QUESTION_TYPES):  # from `jobs_with_type_mix`
        return {key: job.__dict__[_made_name(key)] for key in QUESTION_TYPES}
    made: dict[str, int] = {}
    rows = Completion.objects.filter(job=job).values_list("question_type").annotate(n=Count("id")).order_by()
    for question_type, n in rows:
        key = question_type or DEFAULT_TYPE
        made[key] = made.get(key, 0) + n
    return made


def job_type_mix(*, job: TrainingJob) -> dict[str, dict[str, int]]:
    """Per question type, the pairs asked (the job's shares of N) and made (its completions;
    "" for ones made before types is factual), types in the order the job lists them."""
    asked = type_counts(job.question_types or {}, job.requested_count)
    made = _made_by_type(job)
    keys = [*asked, *(key for key, n in made.items() if n and key not in asked)]
    return {key: {"asked": asked.get(key, 0), "made": made.get(key, 0)} for key in keys}


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
