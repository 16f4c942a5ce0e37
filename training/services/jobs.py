"""A training job's life from the user's side: create, prepare (chunk and plan), dispatch,
cancel, retry, and the summary the API and the `train` command show."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
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
from ..planning import allocate, allocate_capped, group_spans
from ..question_types import (
    DEFAULT_TYPE,
    MULTI_HOP,
    MULTI_HOP_SPAN,
    SPREAD_PHASES,
    clean_audience,
    clean_difficulty,
    clean_types,
    neighbour_units,
    type_counts,
    with_fallback,
)
from ..review import require_material_change
from ..selectors import job_type_mix
from ..tasks import generate_task, job_prepare_task
from . import prepare, templates
from .chunks import user_turns
from .rounds import batch_round_open
from .state import job_fail, job_finish_if_done, job_transition

if TYPE_CHECKING:
    from agents.models import Agent

Status = TrainingJob.Status
logger = logging.getLogger(__name__)
# Approved completions a job may show the model as examples of style (each costs prompt tokens).
MAX_SEED_EXAMPLES = 20


class JobNotReady(Exception):
    """A source is still being extracted by another worker; try again in `countdown` seconds."""

    def __init__(self, message: str, *, countdown: float = 2.0) -> None:
        super().__init__(message)
        self.countdown = countdown


# How often a job whose document another worker reads plans the pages read meanwhile.
READING_POLL_SECONDS = 0.5
# How long one prepare run follows another worker's reading in-process (looking at the
# document's progress every FOLLOW_LOOK_SECONDS) before it hands the wait to a retry.
FOLLOW_READING_SECONDS = 20.0
FOLLOW_LOOK_SECONDS = 0.05


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
    """Whether the job has the judge pass: as asked, else the default where it can run (a chat
    endpoint, live or batch: batch mode judges a round's pairs in the next round)."""
    if not 1 <= threshold <= 5:
        raise ValidationError("The judge threshold must be between 1 and 5.", code="judge_threshold")
    available = settings.MASSCER_LLM_MODE == "chat"
    if judge is None:
        return settings.MASSCER_JUDGE_DEFAULT and available
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


def _guidance_fields(
    question_types: Mapping[str, Any] | None, style: str, audience: str, difficulty: str, seed_examples: int
) -> dict[str, Any]:
    """The job's question types, audience, difficulty and seed examples, checked (each door's
    input arrives here, so a bad value gets the same message from all of them)."""
    shares = clean_types(question_types)
    if style == TrainingJob.Style.MINE and set(shares) - {DEFAULT_TYPE}:
        raise ValidationError(
            "Question types apply to the synthesize style; mine keeps the questions users really asked.",
            code="question_types",
        )
    if not 0 <= seed_examples <= MAX_SEED_EXAMPLES:
        raise ValidationError(
            f"Seed examples must be between 0 and {MAX_SEED_EXAMPLES} (asked for {seed_examples}).",
            code="seed_examples",
        )
    return {
        "question_types": shares,
        "audience": clean_audience(audience),
        "difficulty": clean_difficulty(difficulty),
        "seed_examples": seed_examples,
    }


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
    question_types: Mapping[str, Any] | None = None,
    audience: str = "",
    difficulty: str = "",
    template: str = "",
    seed_examples: int = 0,
) -> TrainingJob:
    """Create a queued job and send it to the workers after commit.

    `mode="batch"` sends the model calls through the provider's batches API (cheaper,
    results within 24 hours; chat endpoints only). `judge` (None: MASSCER_JUDGE_DEFAULT
    where available) scores each pair and rejects those with faithfulness below
    `judge_threshold` (`services.judging`). `question_types` maps
    kinds of question to shares (None: factual only; `question_types.clean_types`), `audience`
    and `difficulty` go into the prompt, `template` names a prompt template of the workspace
    and `seed_examples` is how many approved completions of the agents the prompt shows.
    """
    _check_count(count)
    _check_mode(mode)
    judge = job_judge_setting(judge, judge_threshold, mode)
    guidance = _guidance_fields(question_types, style, audience, difficulty, seed_examples)
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
    chosen_template = templates.template_for_job(workspace=workspace, name=template.strip(), agents=agents)
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
        **guidance,
        prompt_template=chosen_template,
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


def _job_chunks(job: TrainingJob) -> list[prepare.SourceChunks]:
    """Each source's chunks as far as they are final (a document being read: its first ones)."""
    return [prepare.document_chunks(document) for document in job.documents.order_by("pk")] + [
        prepare.conversation_chunks(conversation) for conversation in job.conversations.order_by("pk")
    ]


def job_prepare(*, job_id: int) -> None:
    """Extract and chunk the sources, plan quotas and send one task per work item.

    A live job starts generating while its documents are read: each batch of pages the
    extraction stores lets `_plan` give the new final chunks their share, and their items
    run at once; the job stays `chunking` (and cannot finish) until the last pass has
    planned exactly N. A document read by another worker is followed by running again
    shortly (JobNotReady) until it is ready.

    Idempotent: a second run (redelivery, sweeper) finds the work items already planned,
    plans only chunks nobody has, and resumes a planning that was interrupted.
    """
    if not job_transition(job_id, [Status.QUEUED], Status.CHUNKING, started_at=timezone.now()):
        job = TrainingJob.objects.get(pk=job_id)
        if job.status != Status.CHUNKING:
            return
    job = TrainingJob.objects.get(pk=job_id)
    on_progress = _ReadingPlanner(job) if job.mode == TrainingJob.Mode.LIVE else None
    reading = job.documents.filter(status__in=[Document.Status.UPLOADED, Document.Status.EXTRACTING])
    for document in reading.order_by("pk"):
        document_extract(document_id=document.pk, on_progress=on_progress)
    try:
        planned = _plan(job) or (on_progress is not None and _follow_reading(job, on_progress))
    except ValidationError as exc:
        _fail_preparing(job, " ".join(exc.messages))
        return
    if not planned:
        raise JobNotReady(f"job {job_id} waits for its documents to be read", countdown=READING_POLL_SECONDS)


def _follow_reading(job: TrainingJob, on_progress: _ReadingPlanner) -> bool:
    """Follow documents another worker reads (an upload's own ingest task usually claims the
    file before the job's prepare runs): plan the pages they store as they come, at most every
    READING_POLL_SECONDS, and the last pass as soon as the last one is read, instead of a
    retry through the broker every half second (up to half a second late at each end).

    A document whose reader's lease lapsed (or that nobody claimed yet) is read here. True
    once the job is fully planned; False after FOLLOW_READING_SECONDS (the task retries, so a
    very long read does not hold an ingest worker); a failed document raises ValidationError."""
    ends = time.monotonic() + FOLLOW_READING_SECONDS
    seen, waiting = _reading_state(job), False
    while time.monotonic() < ends:
        time.sleep(FOLLOW_LOOK_SECONDS)
        state = _reading_state(job)
        claimable = [pk for pk, status, _, lease in state if _claimable(status, lease)]
        for document_id in claimable:
            document_extract(document_id=document_id, on_progress=on_progress)
        if claimable or not state or any(status == Document.Status.FAILED for _, status, _, _ in state):
            return _plan(job)
        if state != seen:
            seen, waiting = state, True
        # Pages stored since the last pass: a pass as soon as the planner's interval allows.
        if waiting and on_progress():
            waiting = False
            if on_progress.done:
                return True
    return False


def _reading_state(job: TrainingJob) -> list[tuple[int, str, int, Any]]:
    """The job's documents not read yet: id, status, pages stored, lease end."""
    return list(
        job.documents.exclude(status=Document.Status.READY)
        .order_by("pk")
        .values_list("pk", "status", "pages_extracted", "lease_expires_at")
    )


def _claimable(status: str, lease: Any) -> bool:
    return status == Document.Status.UPLOADED or (
        status == Document.Status.EXTRACTING and lease is not None and lease < timezone.now()
    )


class _ReadingPlanner:
    """Called by the extraction after each batch of stored pages: a planning pass at most every
    READING_POLL_SECONDS (each splits the text read so far again, CPU the extraction child
    could use)."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.last = 0.0
        self.done = False

    def __call__(self) -> bool:
        """A pass if the last one is READING_POLL_SECONDS old; whether one ran."""
        if time.monotonic() - self.last < READING_POLL_SECONDS:
            return False
        self.done = _plan_while_reading(self.job)
        self.last = time.monotonic()
        return True


def _plan_while_reading(job: TrainingJob) -> bool:
    """A planning pass while a document is read; a failed pass is logged (the next one, or
    the last, plans what it did not), never allowed to stop the extraction."""
    try:
        return _plan(job)
    except ValidationError:
        return False  # a source failed: the job fails after the extraction, in job_prepare
    except Exception:
        logger.exception("planning pass of job %s failed; the next pass retries it", job.pk)
        return False


def _fail_preparing(job: TrainingJob, error: str) -> None:
    if WorkItem.objects.filter(job=job).exists():
        error += " Completions made from what was read before are kept."
    job_fail(job_id=job.pk, error=error)


def _quotas(job: TrainingJob, units: list[list[Chunk]], count: int, question_type: str) -> list[int]:
    if job.style == TrainingJob.Style.MINE:
        return allocate_capped(count, [sum(user_turns(chunk) for chunk in unit) for unit in units])
    tokens = [sum(chunk.token_count for chunk in unit) for unit in units]
    return allocate(count, tokens, phase=SPREAD_PHASES[question_type])


def _units(chunks: list[Chunk], question_type: str) -> list[list[Chunk]]:
    """The chunks one item of `question_type` reads: one, or for multi-hop two neighbours of a source."""
    if question_type != MULTI_HOP:
        return [[chunk] for chunk in chunks]
    keys = [((chunk.document_id, chunk.conversation_id), chunk.index) for chunk in chunks]
    return [[chunks[i] for i in unit] for unit in neighbour_units(keys, MULTI_HOP_SPAN)]


def _spans(job: TrainingJob, chunks: list[Chunk], count: int) -> list[list[Chunk]]:
    """Consecutive chunks of a document grouped so that one item asks for at least
    MASSCER_MIN_PAIRS_PER_CALL pairs within MASSCER_SPAN_MAX_TOKENS (`planning.group_spans`).

    Mining keeps one chunk per item (a quota is capped by its chunk's user questions), and so
    do conversations: each chunk repeats the conversation's system prompt as its context.
    """
    if job.style == TrainingJob.Style.MINE:
        return [[chunk] for chunk in chunks]
    # A conversation chunk is a source of its own here: it never joins a span.
    keys = [((chunk.document_id, 0 if chunk.document_id else chunk.pk), chunk.index) for chunk in chunks]
    spans = group_spans(
        [chunk.token_count for chunk in chunks],
        keys,
        count=count,
        min_pairs=min(settings.MASSCER_MIN_PAIRS_PER_CALL, settings.MASSCER_PAIRS_PER_CALL),
        max_tokens=settings.MASSCER_SPAN_MAX_TOKENS,
    )
    return [chunks[span.start : span.stop] for span in spans]


def plan_items(job: TrainingJob, chunks: list[Chunk], counts: dict[str, int], now: Any) -> list[WorkItem]:
    """The work items (unsaved) that ask `chunks` for `counts` pairs of each question type
    (multi-hop: with no two neighbouring chunks anywhere, its count is factual)."""
    items = []
    for question_type, count in with_fallback(counts, bool(_units(chunks, MULTI_HOP))).items():
        units = _units(chunks, question_type) if question_type == MULTI_HOP else _spans(job, chunks, count)
        quotas = _quotas(job, units, count, question_type)
        items.extend(
            WorkItem(
                job=job, chunk=unit[0], span=len(unit), quota=quota, question_type=question_type, enqueued_at=now
            )
            for unit, quota in zip(units, quotas, strict=True)
            if quota > 0
        )
    return items


def _plan(job: TrainingJob) -> bool:
    """Plan the work items of the sources' final chunks not planned yet, with their share of
    N (`prepare`); True once the job is fully planned (or no longer being prepared).

    One pass at a time per job (the job's row is locked), so concurrent passes (the
    extraction's, a redelivered task's) never plan a chunk twice nor exceed N.
    """
    sources = _job_chunks(job)
    share = prepare.seen_share(sources)
    last = share == 1.0
    if share is None or (not last and job.mode == TrainingJob.Mode.BATCH):
        return False
    now = timezone.now()
    with transaction.atomic():
        if not TrainingJob.objects.select_for_update().filter(pk=job.pk, status=Status.CHUNKING).exists():
            return True
        covered, planned = prepare.planned_so_far(job)
        chunks = prepare.unplanned(sources, covered)
        counts = prepare.batch_counts(
            type_counts(job.question_types or {}, job.requested_count), planned, share, last=last
        )
        items = plan_items(job, chunks, counts, now) if chunks and counts else []
        WorkItem.objects.bulk_create(items, ignore_conflicts=True)
        new = WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING, chunk_id__in={i.chunk_id for i in items})
        total = WorkItem.objects.filter(job=job).count()
        if not last:
            TrainingJob.objects.filter(pk=job.pk).update(chunks_total=total, enqueued_at=now)
            _dispatch_items(job, list(new.values_list("pk", flat=True)))
            return False
        if not total:
            job_fail(job_id=job.pk, error=_nothing_to_plan(sources))
            return True
        job_transition(job.pk, [Status.CHUNKING], Status.GENERATING, chunks_total=total)
        pending = list(
            WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True)
        )
        _dispatch_items(job, pending)
    # Items that ran while the job was being planned may all be done already.
    job_finish_if_done(job_id=job.pk)
    return True


def _nothing_to_plan(sources: list[prepare.SourceChunks]) -> str:
    if not any(source.chunks for source in sources):
        return "The sources have no text to train with."
    return "The conversations contain no user questions to mine."


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
        "question_types": job.question_types or {DEFAULT_TYPE: 1},
        "type_mix": job_type_mix(job=job),
        "audience": job.audience,
        "difficulty": job.difficulty,
        "seed_examples": job.seed_examples,
        "template": _template_ref(job),
        "error": job.error or None,
    }


def _template_ref(job: TrainingJob) -> dict[str, Any] | None:
    """The prompt template version the job uses, by name and number (None: the built-in prompt)."""
    if job.prompt_template_id is None:
        return None
    version = job.prompt_template
    return {"name": version.template.name, "version": version.number}


