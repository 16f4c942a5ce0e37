"""A training job's life from the user's side: create, prepare (chunk and plan), dispatch,
cancel, retry, and the summary the API and the `train` command show."""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from conversations.models import Conversation
from documents.models import Document
from documents.services import document_extract
from workspaces.models import Workspace
from workspaces.permissions import require_change
from workspaces.services import workspace_for_write

from ..models import Chunk, TrainingJob, WorkItem
from ..planning import allocate, allocate_capped
from ..question_types import type_counts
from ..review import require_material_change
from ..tasks import generate_task, job_prepare_task
from .chunks import chunks_ensure_for_conversation, chunks_ensure_for_document, user_turns
from .rounds import batch_round_open
from .state import job_fail, job_finish_if_done, job_transition

if TYPE_CHECKING:
    from agents.models import Agent

Status = TrainingJob.Status


class JobNotReady(Exception):
    """A source is still being extracted by another worker; try again shortly."""


def _check_count(count: int) -> None:
    limit = settings.MASSCER_MAX_COMPLETIONS_PER_JOB
    if count < 1:
        raise ValidationError("Number of completions must be at least 1.", code="count")
    if count > limit:
        raise ValidationError(
            f"Number of completions must be at most {limit:,} per job (asked for {count:,}).", code="count"
        )


def _check_mode(mode: str) -> None:
    if mode not in TrainingJob.Mode.values:
        raise ValidationError(f"Unknown mode {mode!r}; use live or batch.", code="mode")
    if mode == TrainingJob.Mode.BATCH and settings.MASSCER_LLM_MODE != "chat":
        raise ValidationError(
            "Batch mode needs a chat model endpoint with the OpenAI batches API (MASSCER_LLM_MODE=chat).",
            code="mode",
        )


def job_judge_setting(judge: bool | None, threshold: int, mode: str) -> bool:
    """Whether the job has the judge pass: as asked, else the default where it can run."""
    if not 1 <= threshold <= 5:
        raise ValidationError("The judge threshold must be between 1 and 5.", code="judge_threshold")
    available = mode == TrainingJob.Mode.LIVE and settings.MASSCER_LLM_MODE == "chat"
    if judge is None:
        return settings.MASSCER_JUDGE_DEFAULT and available
    if judge and mode == TrainingJob.Mode.BATCH:
        raise ValidationError("The judge pass is not available in batch mode yet; use live mode.", code="judge")
    if judge and not available:
        raise ValidationError("The judge pass needs a chat model endpoint (MASSCER_LLM_MODE=chat).", code="judge")
    return judge


def _check_active_jobs(owner: AbstractBaseUser) -> None:
    limit = settings.MASSCER_MAX_ACTIVE_JOBS_PER_USER
    active = TrainingJob.objects.filter(
        owner=owner, status__in=[Status.QUEUED, Status.CHUNKING, Status.GENERATING]
    ).count()
    if active >= limit:
        raise ValidationError(
            f"You already have {active} jobs running (the limit is {limit}); "
            "wait for one to finish or cancel one.",
            code="too_many_jobs",
        )


def _check_same_workspace(workspace_id: int, objects: Sequence[Any], label: str) -> None:
    for obj in objects:
        if obj.workspace_id != workspace_id:
            raise ValidationError(f"The {label} '{obj}' is not in this job's workspace.", code="forbidden")


@transaction.atomic
def job_create(
    *,
    owner: AbstractBaseUser,
    count: int,
    agents: Sequence[Agent],
    workspace: Workspace | None = None,
    documents: Sequence[Document] = (),
    conversations: Sequence[Conversation] = (),
    model: str = "",
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    frequency_penalty: float | None = None,
    stop: Sequence[str] = (),
    instructions: str = "",
    style: str = TrainingJob.Style.SYNTHESIZE,
    redact: bool = False,
    budget: Decimal | None = None,
    mode: str = TrainingJob.Mode.LIVE,
    judge: bool | None = None,
    judge_threshold: int = 4,
) -> TrainingJob:
    """Create a queued job and send it to the workers after commit.

    `mode="batch"` sends the model calls through the provider's batches API (cheaper,
    results within 24 hours; chat endpoints only). `judge` (None: MASSCER_JUDGE_DEFAULT
    where available) scores each pair and rejects those with faithfulness below
    `judge_threshold` (`services.judging`; live mode only for now).
    """
    _check_count(count)
    _check_mode(mode)
    judge = job_judge_setting(judge, judge_threshold, mode)
    _check_active_jobs(owner)
    if not documents and not conversations:
        raise ValidationError("Choose at least one document or conversation to train with.", code="sources")
    if workspace is None:
        # The sources say where the job belongs; with none given, the user's own workspace.
        first = next(iter([*documents, *conversations]), None)
        workspace = first.workspace if first is not None else None
    workspace = workspace_for_write(user=owner, workspace=workspace)
    _check_same_workspace(workspace.pk, documents, "document")
    _check_same_workspace(workspace.pk, conversations, "conversation")
    _check_same_workspace(workspace.pk, agents, "agent")
    for agent in agents:  # the job attaches its completions to them: assignment, checked as such
        require_material_change(actor=owner, agent=agent)
    if style not in TrainingJob.Style.values:
        raise ValidationError(f"Unknown style {style!r}; use synthesize or mine.", code="style")
    if style == TrainingJob.Style.MINE and documents:
        raise ValidationError("The mine style works on conversations only; use synthesize for documents.")
    job = TrainingJob.objects.create(
        owner=owner,
        workspace=workspace,
        requested_count=count,
        model=model or settings.MASSCER_LLM_MODEL,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        frequency_penalty=frequency_penalty,
        stop=[s for s in stop if s],
        instructions=instructions.strip(),
        style=style,
        redact=redact,
        budget=budget,
        mode=mode,
        judge=judge,
        judge_threshold=judge_threshold,
        enqueued_at=timezone.now(),
    )
    job.documents.set(documents)
    job.conversations.set(conversations)
    job.agents.set(agents)
    job_prepare_task.delay_on_commit(job.pk)
    return job


def job_cancel(*, actor: AbstractBaseUser, job: TrainingJob) -> bool:
    """Stop a job that has not ended (its creator or a workspace admin); False if it had."""
    require_change(user=actor, obj=job, action="cancel it")
    cancelled = job_transition(
        job.pk,
        [Status.QUEUED, Status.CHUNKING, Status.GENERATING],
        Status.CANCELLED,
        error="Cancelled by the user.",
        finished_at=timezone.now(),
    )
    if cancelled:
        WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).update(status=WorkItem.Status.CANCELLED)
    return cancelled


def job_retry(*, actor: AbstractBaseUser, job: TrainingJob) -> bool:
    """Run again what failed or fell short (its creator or a workspace admin); completions
    already made are kept.

    A job that failed before planning (e.g. a source could not be read) starts over from
    its sources; otherwise failed and short work items get a fresh call budget.
    """
    require_change(user=actor, obj=job, action="retry it")
    retryable = WorkItem.objects.filter(job=job).filter(
        Q(status__in=[WorkItem.Status.FAILED, WorkItem.Status.CANCELLED]) | Q(made__lt=F("quota"))
    )
    now = timezone.now()
    if job.status == Status.FAILED and not WorkItem.objects.filter(job=job).exists():
        moved = job_transition(job.pk, [Status.FAILED], Status.QUEUED, error="", finished_at=None, enqueued_at=now)
        if moved:
            job_prepare_task.delay_on_commit(job.pk)
        return moved
    with transaction.atomic():
        if not job_transition(
            job.pk, [Status.FAILED, Status.COMPLETED], Status.GENERATING, error="", finished_at=None, shortfall=0
        ):
            return False
        item_ids = list(retryable.values_list("pk", flat=True))
        WorkItem.objects.filter(pk__in=item_ids).update(**WorkItem.fresh_start(now))
        _dispatch_items(job, item_ids)
    if not item_ids:
        job_finish_if_done(job_id=job.pk)
    return True


def _job_chunks(job: TrainingJob) -> list[Chunk]:
    chunks: list[Chunk] = []
    for document in job.documents.order_by("pk"):
        if document.status in (Document.Status.UPLOADED, Document.Status.EXTRACTING):
            document = document_extract(document_id=document.pk)
        if document.status == Document.Status.EXTRACTING:
            raise JobNotReady(f"document {document.pk} is being extracted")
        if document.status == Document.Status.FAILED:
            raise ValidationError(f"The document '{document.title}' could not be read: {document.error}")
        chunks.extend(chunks_ensure_for_document(document=document))
    for conversation in job.conversations.order_by("pk"):
        chunks.extend(chunks_ensure_for_conversation(conversation=conversation))
    return chunks


def job_prepare(*, job_id: int) -> None:
    """Extract and chunk the sources, plan quotas and send one task per chunk.

    Idempotent: a second run (redelivery, sweeper) finds the work items already planned
    and only re-sends the ones nobody has claimed.
    """
    if not job_transition(job_id, [Status.QUEUED], Status.CHUNKING, started_at=timezone.now()):
        job = TrainingJob.objects.get(pk=job_id)
        if job.status != Status.CHUNKING:
            return
    job = TrainingJob.objects.get(pk=job_id)
    try:
        chunks = _job_chunks(job)
    except ValidationError as exc:
        job_fail(job_id=job_id, error=" ".join(exc.messages))
        return
    if not chunks:
        job_fail(job_id=job_id, error="The sources have no text to train with.")
        return
    _plan(job, chunks)


def _quotas(job: TrainingJob, chunks: list[Chunk], count: int) -> list[int]:
    if job.style == TrainingJob.Style.MINE:
        return allocate_capped(count, [user_turns(chunk) for chunk in chunks])
    return allocate(count, [chunk.token_count for chunk in chunks])


def plan_items(job: TrainingJob, chunks: list[Chunk], counts: dict[str, int], now: Any) -> list[WorkItem]:
    """The work items (unsaved) that ask `chunks` for `counts` pairs of each question type."""
    items = []
    for question_type, count in counts.items():
        quotas = _quotas(job, chunks, count)
        items.extend(
            WorkItem(job=job, chunk=chunk, quota=quota, question_type=question_type, enqueued_at=now)
            for chunk, quota in zip(chunks, quotas, strict=True)
            if quota > 0
        )
    return items


def _plan(job: TrainingJob, chunks: list[Chunk]) -> None:
    items = plan_items(job, chunks, type_counts(job.question_types or {}, job.requested_count), timezone.now())
    if not items:
        job_fail(job_id=job.pk, error="The conversations contain no user questions to mine.")
        return
    with transaction.atomic():
        WorkItem.objects.bulk_create(items, ignore_conflicts=True)
        job_transition(job.pk, [Status.CHUNKING], Status.GENERATING, chunks_total=len(items))
        pending = list(
            WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True)
        )
        _dispatch_items(job, pending)


def _dispatch_items(job: TrainingJob, item_ids: Sequence[int]) -> None:
    """Send pending work items to the workers after commit: one task each, or one batch round."""
    if not item_ids:
        return
    if job.mode == TrainingJob.Mode.BATCH:
        batch_round_open(job_id=job.pk)
        return
    for item_id in item_ids:
        generate_task.delay_on_commit(item_id)


def job_summary(job: TrainingJob) -> dict[str, Any]:
    """What `train --json` prints and the API returns."""
    elapsed = None
    if job.started_at:
        elapsed = round(((job.finished_at or timezone.now()) - job.started_at).total_seconds(), 3)
    return {
        "job_id": job.pk,
        "status": job.status,
        "requested": job.requested_count,
        "completions_created": job.created_count,
        "shortfall": job.shortfall,
        "outcome": job.outcome,
        "outcome_label": job.outcome_label,
        "shortfall_reasons": job.shortfall_reasons,
        "next_step": job.next_step,
        "model_calls": job.calls,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "elapsed_seconds": elapsed,
        "cost": float(job.cost),
        "judge": job.judge,
        "judge_threshold": job.judge_threshold,
        "error": job.error or None,
    }


