"""Writes of the training app: chunks, jobs, their lifecycle, review and assignment."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from documents.models import Document
from documents.services import document_extract
from masscer.lib.tokens import chunk_pages
from workspaces.models import Membership, Workspace
from workspaces.permissions import require_change
from workspaces.selectors import can_review
from workspaces.services import workspace_for_write

from . import hotsql
from .models import Assignment, Chunk, Completion, TrainingJob, WorkItem
from .planning import allocate, allocate_capped
from .review import require_material_change
from .validation import KEY_SUFFIX, Candidate, add_samples, describe_reasons, pair_text, question_key, same_question

logger = logging.getLogger(__name__)

Status = TrainingJob.Status


class JobNotReady(Exception):
    """A source is still being extracted by another worker; try again shortly."""


# --- chunks -----------------------------------------------------------------------------


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunks_ensure_for_document(*, document: Document) -> list[Chunk]:
    """Split a ready document once; later calls return the stored chunks."""
    existing = list(Chunk.objects.filter(document=document).order_by("index"))
    if existing:
        return existing
    texts = list(document.pages.order_by("number").values_list("text", flat=True))
    specs = chunk_pages(texts, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP)
    rows = [
        Chunk(
            document=document,
            index=spec.index,
            text=spec.text,
            token_count=spec.token_count,
            locator={"pages": [spec.first_page, spec.last_page]},
            start=spec.start,
            end=spec.end,
            content_hash=_hash(spec.text),
        )
        for spec in specs
    ]
    with transaction.atomic():
        # Two workers may chunk the same document at once; the unique index keeps one set.
        Chunk.objects.bulk_create(rows, ignore_conflicts=True)
        Document.objects.filter(pk=document.pk).update(chunk_count=len(rows))
    return list(Chunk.objects.filter(document=document).order_by("index"))


def chunks_ensure_for_conversation(*, conversation: Any, redact: bool = False) -> list[Chunk]:
    from conversations.chunking import conversation_chunk_specs

    existing = list(Chunk.objects.filter(conversation=conversation).order_by("index"))
    if existing:
        return existing
    specs = conversation_chunk_specs(
        conversation, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP
    )
    rows = [
        Chunk(
            conversation=conversation,
            index=spec.index,
            text=spec.text,
            token_count=spec.token_count,
            locator={"messages": [spec.first, spec.last]},
            content_hash=_hash(spec.text),
        )
        for spec in specs
    ]
    Chunk.objects.bulk_create(rows, ignore_conflicts=True)
    return list(Chunk.objects.filter(conversation=conversation).order_by("index"))


# --- jobs ---------------------------------------------------------------------------------


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
    agents: Sequence[Any],
    workspace: Workspace | None = None,
    documents: Sequence[Document] = (),
    conversations: Sequence[Any] = (),
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
) -> TrainingJob:
    """Create a queued job and send it to the workers after commit.

    `mode="batch"` sends the model calls through the provider's batches API (cheaper,
    results within 24 hours; chat endpoints only).
    """
    _check_count(count)
    _check_mode(mode)
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
        enqueued_at=timezone.now(),
    )
    job.documents.set(documents)
    job.conversations.set(conversations)
    job.agents.set(agents)
    from .tasks import job_prepare_task

    job_prepare_task.delay_on_commit(job.pk)
    return job


def _transition(job_id: int, source: Sequence[str], target: str, **fields: Any) -> bool:
    """Move a job between statuses only along the documented transitions."""
    for status in source:
        if target not in TrainingJob.TRANSITIONS[status]:
            raise ValueError(f"job transition {status} → {target} is not allowed")
    updated = TrainingJob.objects.filter(pk=job_id, status__in=list(source)).update(status=target, **fields)
    return updated == 1


def job_fail(*, job_id: int, error: str) -> bool:
    now = timezone.now()
    failed = _transition(
        job_id, [Status.QUEUED, Status.CHUNKING, Status.GENERATING], Status.FAILED, error=error, finished_at=now
    )
    if failed:
        WorkItem.objects.filter(job_id=job_id, status__in=[WorkItem.Status.PENDING, WorkItem.Status.RUNNING]).update(
            status=WorkItem.Status.CANCELLED
        )
    return failed


def job_cancel(*, actor: AbstractBaseUser, job: TrainingJob) -> bool:
    """Stop a job that has not ended (its creator or a workspace admin); False if it had."""
    require_change(user=actor, obj=job, action="cancel it")
    cancelled = _transition(
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
        moved = _transition(job.pk, [Status.FAILED], Status.QUEUED, error="", finished_at=None, enqueued_at=now)
        if moved:
            from .tasks import job_prepare_task

            job_prepare_task.delay_on_commit(job.pk)
        return moved
    with transaction.atomic():
        if not _transition(
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
    if not _transition(job_id, [Status.QUEUED], Status.CHUNKING, started_at=timezone.now()):
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


def user_turns(chunk: Chunk) -> int:
    return sum(1 for line in chunk.text.splitlines() if line.startswith("[user]"))


def _quotas(job: TrainingJob, chunks: list[Chunk]) -> list[int]:
    if job.style == TrainingJob.Style.MINE:
        return allocate_capped(job.requested_count, [user_turns(chunk) for chunk in chunks])
    return allocate(job.requested_count, [chunk.token_count for chunk in chunks])


def _plan(job: TrainingJob, chunks: list[Chunk]) -> None:
    quotas = _quotas(job, chunks)
    if not any(quotas):
        job_fail(job_id=job.pk, error="The conversations contain no user questions to mine.")
        return
    now = timezone.now()
    items = [
        WorkItem(job=job, chunk=chunk, quota=quota, enqueued_at=now)
        for chunk, quota in zip(chunks, quotas, strict=True)
        if quota > 0
    ]
    with transaction.atomic():
        WorkItem.objects.bulk_create(items, ignore_conflicts=True)
        _transition(job.pk, [Status.CHUNKING], Status.GENERATING, chunks_total=len(items))
        pending = list(
            WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True)
        )
        _dispatch_items(job, pending)


def _dispatch_items(job: TrainingJob, item_ids: Sequence[int]) -> None:
    """Send pending work items to the workers after commit: one task each, or one batch round."""
    if not item_ids:
        return
    if job.mode == TrainingJob.Mode.BATCH:
        from .batch import batch_round_open

        batch_round_open(job_id=job.pk)
        return
    from .tasks import generate_task

    for item_id in item_ids:
        generate_task.delay_on_commit(item_id)


def _count_chunks_done(job_id: int) -> None:
    finished = (
        WorkItem.objects.filter(job_id=OuterRef("pk"))
        .exclude(status__in=[WorkItem.Status.PENDING, WorkItem.Status.RUNNING])
        .order_by()
        .values("job_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    TrainingJob.objects.filter(pk=job_id).update(chunks_done=Coalesce(Subquery(finished), 0))


def job_finish_if_done(*, job_id: int, chunks_counted: bool = False) -> bool:
    """Close a job once none of its work items can still make completions.

    `chunks_counted`: the caller closed its item and added it to `chunks_done` already
    (the count is then taken again only when the job finishes).
    """
    if not chunks_counted:
        _count_chunks_done(job_id)
    if hotsql.has_open_items(job_id):
        return False
    if chunks_counted:
        _count_chunks_done(job_id)
    job = TrainingJob.objects.get(pk=job_id)
    if job.status != Status.GENERATING:
        return False
    created = Completion.objects.filter(job_id=job_id).count()
    reasons: Counter[str] = Counter()
    errors: list[str] = []
    for item in WorkItem.objects.filter(job_id=job_id).only("reasons", "error", "status"):
        reasons.update(item.reasons or {})
        if item.error:
            errors.append(item.error)
    planned = sum(WorkItem.objects.filter(job_id=job_id).values_list("quota", flat=True))
    if planned < job.requested_count:
        reasons["source_exhausted"] += job.requested_count - planned
    shortfall = max(0, job.requested_count - created)
    now = timezone.now()
    if created == 0 and errors:
        return _transition(
            job_id, [Status.GENERATING], Status.FAILED, error=errors[0], finished_at=now, created_count=created
        )
    summary: dict[str, Any] = {key: n for key, n in reasons.items() if n}
    if shortfall and errors:
        summary["errors"] = sorted(set(errors))[:5]
    return _transition(
        job_id,
        [Status.GENERATING],
        Status.COMPLETED,
        finished_at=now,
        created_count=created,
        shortfall=shortfall,
        shortfall_reasons=summary,
        error=(f"Made {created} of {job.requested_count}: {describe_reasons(reasons)}" if shortfall else ""),
    )


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
        "error": job.error or None,
    }


# --- sweeper --------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Re-queue work whose lease expired or whose message was lost; close finished jobs."""
    from documents.services import document_requeue_stale

    from .tasks import generate_task, job_prepare_task

    now = timezone.now()
    requeue_after = timedelta(seconds=settings.MASSCER_REQUEUE_AFTER_SECONDS)
    expired = WorkItem.objects.filter(status=WorkItem.Status.RUNNING, lease_expires_at__lt=now)
    # Batch-mode items wait for their round (hours, at times); the batch sweep looks after them.
    lost = WorkItem.objects.filter(status=WorkItem.Status.PENDING, enqueued_at__lt=now - requeue_after).exclude(
        job__mode=TrainingJob.Mode.BATCH
    )
    item_ids = list(expired.values_list("pk", flat=True)[:1000]) + list(lost.values_list("pk", flat=True)[:1000])
    # Expired leases become claimable again via the lease test in the claim itself.
    WorkItem.objects.filter(pk__in=item_ids).update(enqueued_at=now)
    for item_id in item_ids:
        generate_task.delay(item_id)
    stale_jobs = list(
        TrainingJob.objects.filter(
            status__in=[Status.QUEUED, Status.CHUNKING], enqueued_at__lt=now - requeue_after
        ).values_list("pk", flat=True)[:200]
    )
    TrainingJob.objects.filter(pk__in=stale_jobs).update(enqueued_at=now)
    for job_id in stale_jobs:
        job_prepare_task.delay(job_id)
    finished = 0
    for job_id in TrainingJob.objects.filter(status=Status.GENERATING).values_list("pk", flat=True)[:200]:
        finished += int(job_finish_if_done(job_id=job_id))
    documents = document_requeue_stale(older_than=requeue_after)
    from .batch import batch_sweep

    rounds = batch_sweep(requeue_after=requeue_after)
    return {
        "work_items": len(item_ids),
        "jobs": len(stale_jobs),
        "finished": finished,
        "documents": documents,
        "batch_rounds": rounds,
    }


# --- review and assignment -------------------------------------------------------------------


def _require_reviewer(user: AbstractBaseUser, workspace_id: int) -> None:
    if not can_review(user=user, workspace_id=workspace_id):
        raise PermissionDenied("Only reviewers and admins of this workspace may approve or reject completions.")


def completion_review(
    *, completion: Completion, status: str, reviewer: AbstractBaseUser, question: str = "", answer: str = ""
) -> Completion:
    if status not in Completion.Status.values:
        raise ValidationError(f"Unknown status {status!r}.")
    _require_reviewer(reviewer, completion.job.workspace_id)
    fields: dict[str, Any] = {"status": status, "reviewed_by": reviewer, "reviewed_at": timezone.now()}
    if question.strip() and answer.strip() and (question != completion.question or answer != completion.answer):
        if not completion.edited:
            fields["original_question"] = completion.question
            fields["original_answer"] = completion.answer
        fields.update(question=question.strip(), answer=answer.strip(), edited=True)
        key = completion_question_key(completion=completion, question=question.strip())
        if key is not None:
            fields["question_key"] = key
    try:
        with transaction.atomic():
            Completion.objects.filter(pk=completion.pk).update(**fields)
    except IntegrityError as exc:  # another edit gave a completion of the job this question meanwhile
        raise _question_taken(None) from exc
    completion.refresh_from_db()
    return completion


def completion_question_key(*, completion: Completion, question: str) -> str | None:
    """The question key an edit of `completion` to `question` stores; None when it is the same
    question (up to case and spacing: the key stays). A ValidationError when another completion
    of its job asks that question already (every door shows it; the admin's form checks first).
    """
    key = question_key(question)
    if same_question(key, completion.question_key):
        return None
    # Repeats stored before keys were unique carry a suffix (migration 0008): they count too.
    taken = Completion.objects.filter(Q(question_key=key) | Q(question_key__startswith=key + KEY_SUFFIX))
    other = taken.filter(job_id=completion.job_id).exclude(pk=completion.pk).values_list("pk", flat=True).first()
    if other is not None:
        raise _question_taken(other)
    return key


def _question_taken(other: int | None) -> ValidationError:
    which = f"completion #{other}" if other is not None else "another completion"
    return ValidationError(
        f"This job already has this question ({which}; compared ignoring case and spacing). "
        "Word it differently, or reject this completion instead.",
        code="duplicate_question",
    )


def completions_review_bulk(*, completions: QuerySet[Completion], status: str, reviewer: AbstractBaseUser) -> int:
    """Approve or reject many at once; only rows in workspaces where the user reviews are touched."""
    if status not in Completion.Status.values:
        raise ValidationError(f"Unknown status {status!r}.")
    allowed = Membership.objects.filter(user=reviewer, role__in=Membership.REVIEW_ROLES).values("workspace_id")
    return Completion.objects.filter(pk__in=completions.values("pk"), job__workspace__in=allowed).update(
        status=status, reviewed_by=reviewer, reviewed_at=timezone.now()
    )


def store_completions(
    *,
    item: WorkItem,
    claim: int,
    pairs: Sequence[tuple[str, str, str]],
    model: str,
    redacted: bool,
    reasons: Counter[str],
    calls: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: Decimal | float = 0,
    start: int | None = None,
    agent_ids: Sequence[int] | None = None,
    close: bool = False,
    samples: Sequence[dict[str, str]] | None = None,
    duplicates: list[str] | None = None,
) -> int:
    """Store accepted pairs for a claimed work item in one short transaction; the number stored.

    `claim` is the attempt number that claimed the item; if another worker has taken it
    over since (our lease expired), nothing is written and -1 is returned.

    A pair whose question the job already has (compared as `validation.question_key` does:
    another worker may have stored it since the caller's duplicate check) is skipped by the
    insert itself, so the check and the write are one step. It is counted as a `duplicate`
    rejection in `reasons` (the caller's counter too) and in the item's samples, is not in
    the returned number, and its question is appended to `duplicates` when that is given;
    an item it leaves short is not closed and tops up like after any rejected pair.

    `calls`, the token counts and `cost` are the model call(s) these pairs came from; they
    are added to the work item's and the job's counters in the same transaction (when -1
    is returned they are not: the caller records the call on its own).

    `start` is the chunk's number of completions in the job when the caller knows it, and
    `agent_ids` the job's agents (each saves a query); `close` closes the item as done in
    the same transaction and counts it in the job's `chunks_done`. `samples`, when given,
    replace the item's rejected-reply samples (the caller holds the claim, so it has the
    current list and adds to it).
    """
    merged = Counter(item.reasons or {})
    merged.update(reasons)
    with transaction.atomic():
        if start is None:
            start = Completion.objects.filter(job_id=item.job_id, chunk_id=item.chunk_id).count()
        rows = [
            Completion(
                job_id=item.job_id,
                chunk_id=item.chunk_id,
                ordinal=start + offset,
                question=question,
                answer=answer,
                evidence=evidence,
                model=model,
                redacted=redacted,
            )
            for offset, (question, answer, evidence) in enumerate(pairs)
        ]
        try:
            # No savepoint (two round trips fewer per call): an IntegrityError marks the
            # outer transaction for rollback, which happens when this block is left.
            with transaction.atomic(savepoint=False):
                # Plain SQL, as bulk_create would write it, at a fraction of its CPU.
                hotsql.insert(rows, skip_on=("job", "question_key"))
        except IntegrityError:
            return -1
        stored = [row for row in rows if row.pk is not None]
        if len(stored) < len(rows):
            samples = _skipped_as_duplicates(rows, start, merged, reasons, samples, item, duplicates)
            close = False
        # The item's update comes after the rows it counts, and its condition (the claim
        # number) rolls all of them back for a worker whose lease was taken over meanwhile.
        if not hotsql.item_stored(
            item.pk, claim, made=len(stored), calls=calls, reasons=dict(merged), close=close, samples=samples
        ):
            transaction.set_rollback(True)
            return -1
        if stored:
            if agent_ids is None:
                agent_ids = hotsql.job_agent_ids(item.job_id)
            hotsql.insert(
                [Assignment(completion=row, agent_id=agent_id) for row in stored for agent_id in agent_ids],
                ignore_conflicts=True,
            )
        hotsql.job_counted(
            item.job_id,
            created=len(stored),
            calls=calls,
            prompt_tokens=prompt_tokens if calls else 0,
            completion_tokens=completion_tokens if calls else 0,
            cost=Decimal(cost) if calls else Decimal(0),
            chunks_done=1 if close else 0,
        )
    item.reasons = dict(merged)
    if samples is not None:
        item.samples = list(samples)
    return len(stored)


def _skipped_as_duplicates(
    rows: list[Completion],
    start: int,
    merged: Counter[str],
    reasons: Counter[str],
    samples: Sequence[dict[str, str]] | None,
    item: WorkItem,
    duplicates: list[str] | None,
) -> Sequence[dict[str, str]] | None:
    """Account for the rows the insert skipped (the job has their questions); the samples to write.

    The stored rows move down to the ordinals `start`, `start + 1`, ... (the skipped ones left
    gaps, and the next call numbers on from the chunk's count). Only this item's claim writes
    its chunk's ordinals, and each row moves to a lower one that is free by then.
    """
    ordinal = start
    skipped: list[Completion] = []
    for row in rows:
        if row.pk is None:
            skipped.append(row)
            continue
        if row.ordinal != ordinal:
            Completion.objects.filter(pk=row.pk).update(ordinal=ordinal)
            row.ordinal = ordinal
        ordinal += 1
    merged["duplicate"] += len(skipped)
    reasons["duplicate"] += len(skipped)
    if duplicates is not None:
        duplicates.extend(row.question for row in skipped)
    found = [("duplicate", pair_text(Candidate(row.question, row.answer, row.evidence))) for row in skipped]
    added = add_samples(samples if samples is not None else item.samples or [], found)
    return added if added is not None else samples

