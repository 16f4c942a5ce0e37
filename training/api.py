"""API: training jobs, completions (review and assignment), near-duplicates and dataset export."""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError
from ninja.pagination import paginate
from ninja.responses import Status

from agents.models import Agent
from agents.selectors import agents_for
from conversations.selectors import conversations_for
from documents.selectors import documents_for
from masscer.api_common import (
    ERRORS,
    ErrorOut,
    Id,
    IdsFirstPage,
    Page,
    Text,
    all_or_404,
    get_or_404,
    user_of,
    username,
)
from workspaces.selectors import workspaces_for

from . import conversation_export, export, review
from .models import Assignment, Completion, TrainingJob
from .question_types import AUDIENCE_MAX_CHARS, QUESTION_TYPES, known_type
from .selectors import completions_for, jobs_for, jobs_with_type_mix
from .services import completion_review, job_cancel, job_create, job_retry, job_summary
from .services.jobs import MAX_SEED_EXAMPLES

router = Router()

IdList = list[Id]


# --- jobs ----------------------------------------------------------------------------------


class JobIn(Schema):
    count: int = Field(..., ge=1, le=1_000_000, description="How many completions to make (N).")
    documents: IdList = Field(default_factory=list, max_length=500)
    conversations: IdList = Field(default_factory=list, max_length=500)
    agents: IdList = Field(default_factory=list, max_length=100)
    workspace: Id | None = None
    model: Text = Field("", max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: list[Text] = Field(default_factory=list, max_length=4)
    instructions: Text = Field("", max_length=20_000)
    style: Literal["synthesize", "mine"] = "synthesize"
    redact: bool = False
    judge: bool | None = Field(
        None, description="Score each pair with a judge call (default: on unless the model is the embedded one)."
    )
    judge_threshold: int = Field(4, ge=1, le=5, description="Pairs with judge faithfulness below this are replaced.")
    question_types: dict[str, int] | None = Field(
        None,
        max_length=len(QUESTION_TYPES),
        description="Kinds of question and their shares, e.g. {\"factual\": 2, \"procedural\": 1}; N is spread "
        f"over them by the largest remainder (default: factual only). Kinds: {', '.join(QUESTION_TYPES)}.",
    )
    audience: Text = Field("", max_length=AUDIENCE_MAX_CHARS, description="Who asks the questions (a persona line).")
    difficulty: Literal["", "easy", "medium", "hard"] = ""
    template: Text = Field("", max_length=200, description="A prompt template of the workspace, by name.")
    seed_examples: int = Field(
        0, ge=0, le=MAX_SEED_EXAMPLES, description="Approved completions of the agents shown as examples of style."
    )


class JobOut(Schema):
    job_id: int
    workspace_id: int
    owner: str | None
    status: str
    outcome: str = Field(
        ...,
        description='How the job ended: for a completed job "completed" (all N made), '
        '"completed_with_shortfall" (fewer) or "no_completions" (none); otherwise the status.',
    )
    outcome_label: str = Field(..., description='The outcome for people, e.g. "No completions made".')
    next_step: str | None = Field(
        None, description="What to do when a completed job made fewer than asked because of the model."
    )
    requested: int
    completions_created: int
    shortfall: int
    shortfall_reasons: dict[str, Any]
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_seconds: float | None
    error: str | None
    chunks_total: int
    chunks_done: int
    documents: list[int]
    conversations: list[int]
    agents: list[int]
    model: str
    style: str
    judge: bool
    judge_threshold: int
    question_types: dict[str, int] = Field(..., description="The kinds of question asked and their shares.")
    type_mix: dict[str, dict[str, int]] = Field(
        ..., description='Per kind of question, the pairs asked and made: {"factual": {"asked": 4, "made": 4}}.'
    )
    audience: str
    difficulty: str
    seed_examples: int
    template: dict[str, Any] | None = Field(
        ..., description='The prompt template version used: {"name", "version"}; null: the built-in prompt.'
    )
    created_at: datetime
    finished_at: datetime | None

    # Progress comes from `job_summary` (what `train --json` prints), plus the sources.
    @staticmethod
    def resolve_job_id(obj: TrainingJob) -> int:
        return obj.pk

    @staticmethod
    def resolve_requested(obj: TrainingJob) -> int:
        return _summary(obj)["requested"]

    @staticmethod
    def resolve_completions_created(obj: TrainingJob) -> int:
        return _summary(obj)["completions_created"]

    @staticmethod
    def resolve_model_calls(obj: TrainingJob) -> int:
        return _summary(obj)["model_calls"]

    @staticmethod
    def resolve_elapsed_seconds(obj: TrainingJob) -> float | None:
        return _summary(obj)["elapsed_seconds"]

    @staticmethod
    def resolve_error(obj: TrainingJob) -> str | None:
        return _summary(obj)["error"]

    @staticmethod
    def resolve_question_types(obj: TrainingJob) -> dict[str, int]:
        return _summary(obj)["question_types"]

    @staticmethod
    def resolve_type_mix(obj: TrainingJob) -> dict[str, dict[str, int]]:
        return _summary(obj)["type_mix"]

    @staticmethod
    def resolve_template(obj: TrainingJob) -> dict[str, Any] | None:
        return _summary(obj)["template"]

    @staticmethod
    def resolve_owner(obj: TrainingJob) -> str | None:
        return username(obj.owner)

    @staticmethod
    def resolve_documents(obj: TrainingJob) -> list[int]:
        return [row.pk for row in obj.documents.all()]

    @staticmethod
    def resolve_conversations(obj: TrainingJob) -> list[int]:
        return [row.pk for row in obj.conversations.all()]

    @staticmethod
    def resolve_agents(obj: TrainingJob) -> list[int]:
        return [row.pk for row in obj.agents.all()]


def _summary(job: TrainingJob) -> dict[str, Any]:
    """`job_summary` once per job object (several fields are read from it)."""
    summary = job.__dict__.get("_api_summary")
    if summary is None:
        summary = job.__dict__["_api_summary"] = job_summary(job)
    return summary


def _jobs(request: HttpRequest) -> QuerySet[TrainingJob]:
    rows = jobs_with_type_mix(jobs_for(user=user_of(request))).select_related("prompt_template__template")
    return rows.prefetch_related("documents", "conversations", "agents")


@router.post("/jobs", response={201: JobOut, **ERRORS}, tags=["jobs"])
def jobs_create(request: HttpRequest, payload: JobIn) -> Status[dict[str, Any]]:
    """Train: make N completions from documents and/or conversations for the given agents."""
    user = user_of(request)
    target = get_or_404(workspaces_for(user=user), payload.workspace, "workspace") if payload.workspace else None
    job = job_create(
        owner=user,
        count=payload.count,
        workspace=target,
        documents=all_or_404(documents_for(user=user), payload.documents, "document"),
        conversations=all_or_404(conversations_for(user=user), payload.conversations, "conversation"),
        agents=all_or_404(agents_for(user=user), payload.agents, "agent"),
        **payload.model_dump(include={"model", "temperature", "top_p", "max_tokens", "frequency_penalty", "stop",
                                      "instructions", "style", "redact", "judge", "judge_threshold",
                                      "question_types", "audience", "difficulty", "template", "seed_examples"}),
    )
    return Status(201, _jobs(request).get(pk=job.pk))


@router.get("/jobs", response={200: list[JobOut], **ERRORS}, tags=["jobs"])
@paginate(Page)
def jobs_list(request: HttpRequest) -> QuerySet[TrainingJob]:
    return _jobs(request)


@router.get("/jobs/{int:job_id}", response={200: JobOut, **ERRORS}, tags=["jobs"])
def jobs_get(request: HttpRequest, job_id: Id) -> TrainingJob:
    """A job and its progress (chunks done of total, completions created, shortfall)."""
    return get_or_404(_jobs(request), job_id, "job")


@router.post("/jobs/{int:job_id}/cancel", response={200: JobOut, 409: ErrorOut, **ERRORS}, tags=["jobs"])
def jobs_cancel(request: HttpRequest, job_id: Id) -> TrainingJob:
    """Stop a job (its creator or a workspace admin); 409 once it has ended."""
    job = get_or_404(_jobs(request), job_id, "job")
    if not job_cancel(actor=user_of(request), job=job):
        raise HttpError(409, f"The job has already ended ({job.status}).")
    return _jobs(request).get(pk=job.pk)


@router.post("/jobs/{int:job_id}/retry", response={200: JobOut, 409: ErrorOut, **ERRORS}, tags=["jobs"])
def jobs_retry(request: HttpRequest, job_id: Id) -> TrainingJob:
    """Run again what failed or fell short (its creator or a workspace admin); completions already
    made are kept."""
    job = get_or_404(_jobs(request), job_id, "job")
    if not job_retry(actor=user_of(request), job=job):
        raise HttpError(409, f"Only failed jobs and completed ones with a shortfall can be retried ({job.status}).")
    return _jobs(request).get(pk=job.pk)


# --- completions ---------------------------------------------------------------------------


class CompletionOut(Schema):
    id: int
    job_id: int
    chunk_id: int
    source_type: str
    source_id: int | None
    source_title: str
    locator: dict[str, Any]
    question: str
    answer: str
    evidence: str
    status: str
    model: str
    edited: bool
    original_question: str
    original_answer: str
    redacted: bool
    question_type: str | None = Field(
        ..., description="The kind of question (factual, procedural, ...); null for completions made before types."
    )
    judge: dict[str, Any] | None = Field(
        ..., description='Judge scores {"faithfulness", "answerability", "usefulness": 1-5, "reasons"}, or null.'
    )
    duplicate_of_id: int | None
    agents: list[int]
    context_rules: list[dict[str, Any]] = Field(
        ..., description="Per agent: how it uses this completion in its context (rule, tags)."
    )
    reviewed_by: str | None
    reviewed_at: datetime | None
    created_at: datetime

    @staticmethod
    def resolve_question_type(obj: Completion) -> str | None:
        return obj.question_type or None

    @staticmethod
    def resolve_source_type(obj: Completion) -> str:
        return obj.chunk.source_type

    @staticmethod
    def resolve_source_id(obj: Completion) -> int | None:
        return obj.chunk.document_id or obj.chunk.conversation_id

    @staticmethod
    def resolve_source_title(obj: Completion) -> str:
        source = obj.chunk.document if obj.chunk.document_id else obj.chunk.conversation
        return str(source) if source else ""

    @staticmethod
    def resolve_locator(obj: Completion) -> dict[str, Any]:
        return obj.chunk.locator

    @staticmethod
    def resolve_agents(obj: Completion) -> list[int]:
        return [assignment.agent_id for assignment in obj.assignments.all()]

    @staticmethod
    def resolve_context_rules(obj: Completion) -> list[dict[str, Any]]:
        return [{"agent": a.agent_id, "rule": a.rule, "tags": a.tags} for a in obj.assignments.all()]

    @staticmethod
    def resolve_reviewed_by(obj: Completion) -> str | None:
        return username(obj.reviewed_by)


class CompletionFilters(Schema):
    status: Literal["pending", "approved", "rejected"] | None = None
    job: Id | None = None
    agent: Id | None = None
    source_type: Literal["document", "conversation"] | None = None
    document: Id | None = None
    conversation: Id | None = None
    model: Text | None = Field(None, max_length=200)
    question_type: Text | None = Field(None, max_length=20, description="Only this kind of question (factual, ...).")
    q: Text | None = Field(None, max_length=500, description="Search in question and answer.")
    duplicates: bool | None = Field(None, description="Only completions flagged as near-duplicates.")
    judge_below: int | None = Field(None, ge=1, le=5, description="Only those judged with faithfulness below this.")
    judged: bool | None = Field(None, description="Only completions the judge scored (or, false, did not).")
    order: Literal["faithfulness", "answerability", "usefulness"] | None = Field(
        None, description="Sort by a judge score, lowest first (unjudged last)."
    )


class CompletionEdit(Schema):
    question: Text | None = Field(None, min_length=1, max_length=20_000)
    answer: Text | None = Field(None, min_length=1, max_length=100_000)
    status: Literal["pending", "approved", "rejected"] | None = None


class AssignIn(Schema):
    agent: Id
    completion_ids: IdList = Field(..., min_length=1, max_length=1000)


class IdsIn(Schema):
    completion_ids: IdList = Field(..., min_length=1, max_length=1000)


class KeepIn(Schema):
    merge: bool = Field(False, description="Move the others' agent assignments to the kept one first.")


class OutcomeOut(Schema):
    done: int
    skipped: dict[str, list[int]]


def _completions(request: HttpRequest, filters: dict[str, Any] | None = None) -> QuerySet[Completion]:
    rows = completions_for(user=user_of(request), filters=filters).select_related(
        "chunk__document", "chunk__conversation"
    ).defer("chunk__text")
    assignments = Assignment.objects.only("completion_id", "agent_id", "rule", "tags")
    return rows.prefetch_related(Prefetch("assignments", queryset=assignments))


def _completion(request: HttpRequest, completion_id: int) -> Completion:
    return get_or_404(_completions(request), completion_id, "completion")


@router.get("/completions", response={200: list[CompletionOut], **ERRORS}, tags=["completions"])
@paginate(IdsFirstPage)
def completions_list(request: HttpRequest, filters: Query[CompletionFilters]) -> QuerySet[Completion]:
    values = filters.model_dump(exclude_none=True)
    if "question_type" in values:
        known_type(values["question_type"])  # a typo is a 400, not an empty list
    duplicates = values.pop("duplicates", None)
    rows = _completions(request, values)
    if duplicates is not None:
        rows = rows.filter(duplicate_of__isnull=not duplicates)
    return rows


@router.get("/completions/{int:completion_id}", response={200: CompletionOut, **ERRORS}, tags=["completions"])
def completions_get(request: HttpRequest, completion_id: Id) -> Completion:
    return _completion(request, completion_id)


def _review(request: HttpRequest, completion_id: int, status: str, question: str = "", answer: str = "") -> Completion:
    completion = _completion(request, completion_id)
    completion_review(
        completion=completion, status=status, reviewer=user_of(request), question=question, answer=answer
    )
    return _completion(request, completion_id)


@router.post("/completions/{int:completion_id}/approve", response={200: CompletionOut, **ERRORS}, tags=["completions"])
def completions_approve(request: HttpRequest, completion_id: Id) -> Completion:
    """Approve (reviewers and admins of the workspace)."""
    return _review(request, completion_id, Completion.Status.APPROVED)


@router.post("/completions/{int:completion_id}/reject", response={200: CompletionOut, **ERRORS}, tags=["completions"])
def completions_reject(request: HttpRequest, completion_id: Id) -> Completion:
    """Reject (reviewers and admins of the workspace)."""
    return _review(request, completion_id, Completion.Status.REJECTED)


@router.patch("/completions/{int:completion_id}", response={200: CompletionOut, **ERRORS}, tags=["completions"])
def completions_edit(request: HttpRequest, completion_id: Id, payload: CompletionEdit) -> Completion:
    """Edit the question and/or answer (the original text is kept) and/or set the status."""
    completion = _completion(request, completion_id)
    question = payload.question if payload.question is not None else completion.question
    answer = payload.answer if payload.answer is not None else completion.answer
    if not (question.strip() and answer.strip()):
        raise ValidationError("The question and the answer cannot be blank.")
    return _review(request, completion_id, payload.status or completion.status, question, answer)


@router.post("/completions/assign", response={200: OutcomeOut, **ERRORS}, tags=["completions"])
def completions_assign(request: HttpRequest, payload: AssignIn) -> dict[str, Any]:
    """Attach completions to an agent of the same workspace (the agent's creator or a workspace admin)."""
    agent = get_or_404(agents_for(user=user_of(request)), payload.agent, "agent")
    ids = _visible_ids(request, payload.completion_ids)
    outcome = review.completions_assign(actor=user_of(request), completion_ids=ids, agent=agent)
    return _with_missing(outcome, payload.completion_ids, ids).as_dict()


@router.post("/completions/unassign", response={200: OutcomeOut, **ERRORS}, tags=["completions"])
def completions_unassign(request: HttpRequest, payload: AssignIn) -> dict[str, Any]:
    """Detach completions from an agent (the agent's creator or a workspace admin)."""
    agent = get_or_404(agents_for(user=user_of(request)), payload.agent, "agent")
    ids = _visible_ids(request, payload.completion_ids)
    outcome = review.completions_unassign(actor=user_of(request), completion_ids=ids, agent=agent)
    return _with_missing(outcome, payload.completion_ids, ids).as_dict()


@router.post("/completions/regenerate", response={200: OutcomeOut, **ERRORS}, tags=["completions"])
def completions_regenerate(request: HttpRequest, payload: IdsIn) -> dict[str, Any]:
    """Reject these completions and have the model make as many new ones from the same chunks."""
    ids = _visible_ids(request, payload.completion_ids)
    outcome = review.completions_regenerate(
        completions=Completion.objects.filter(pk__in=ids), reviewer=user_of(request)
    )
    return _with_missing(outcome, payload.completion_ids, ids).as_dict()


@router.post("/completions/{int:completion_id}/keep", response={200: OutcomeOut, **ERRORS}, tags=["completions"])
def completions_keep(request: HttpRequest, completion_id: Id, payload: KeepIn) -> dict[str, Any]:
    """Resolve a near-duplicate group: keep this one and reject the others (merge: move their agents)."""
    completion = _completion(request, completion_id)
    return review.duplicates_keep_one(keep=completion, reviewer=user_of(request), merge=payload.merge).as_dict()


def _visible_ids(request: HttpRequest, ids: list[int]) -> list[int]:
    visible = completions_for(user=user_of(request)).filter(pk__in=ids).values_list("pk", flat=True)
    return list(visible)


def _with_missing(outcome: review.Outcome, asked: list[int], found: list[int]) -> review.Outcome:
    outcome.skip("not found", [pk for pk in dict.fromkeys(asked) if pk not in set(found)])
    return outcome


# --- agents' material: near-duplicates and export -------------------------------------------


class DuplicatesOut(Schema):
    groups: list[list[int]] = Field(..., description="Near-duplicate groups, the kept one first.")
    flagged: int


@router.post("/agents/{int:agent_id}/duplicates", response={200: DuplicatesOut, **ERRORS}, tags=["agents"])
def agents_flag_duplicates(request: HttpRequest, agent_id: Id) -> dict[str, Any]:
    """Find near-duplicates in the agent's pending and approved material and flag them (reviewers
    and admins of its workspace)."""
    agent = get_or_404(agents_for(user=user_of(request)), agent_id, "agent")
    groups = review.duplicates_flag(actor=user_of(request), agent=agent)
    return {"groups": groups, "flagged": sum(len(group) - 1 for group in groups)}


class RulesIn(Schema):
    completion_ids: IdList = Field(..., min_length=1, max_length=1000)
    rule: Literal["retrieve", "always", "tags"] = Field(
        ..., description="retrieve: when relevant; always: every turn; tags: when the conversation has one of the tags."
    )
    tags: list[Text] = Field(default_factory=list, max_length=20)


@router.post("/agents/{int:agent_id}/rules", response={200: OutcomeOut, **ERRORS}, tags=["agents"])
def agents_set_rules(request: HttpRequest, agent_id: Id, payload: RulesIn) -> dict[str, Any]:
    """Set how the agent uses some of its material in context (its creator or a workspace admin)."""
    agent = get_or_404(agents_for(user=user_of(request)), agent_id, "agent")
    ids = _visible_ids(request, payload.completion_ids)
    outcome = review.assignments_set_rule(
        actor=user_of(request), agent=agent, completion_ids=ids, rule=payload.rule, tags=payload.tags
    )
    return _with_missing(outcome, payload.completion_ids, ids).as_dict()


class ExportQuery(Schema):
    format: Literal["openai-jsonl", "records", "alpaca", "sharegpt", "csv"] = "openai-jsonl"
    status: Literal["approved", "pending", "rejected", "all"] = "approved"
    split: float = Field(0.0, ge=0, lt=1, description="Fraction for validation, grouped by source (0: no split).")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    part: Literal["train", "validation"] = "train"
    max_tokens: int = Field(export.MAX_EXAMPLE_TOKENS, ge=1, le=10_000_000)
    question_type: Text = Field("", max_length=20, description="Only this kind of question (factual, ...); empty: all.")


class ExportReportOut(Schema):
    written: dict[str, int]
    sources: dict[str, int]
    skipped: dict[str, int]
    skipped_total: int
    skipped_examples: list[dict[str, Any]]


def _export_agent(request: HttpRequest, agent_id: int, query: ExportQuery) -> Agent:
    if query.question_type:
        known_type(query.question_type)  # a 400 now, not an error half-way through a streamed file
    return get_or_404(agents_for(user=user_of(request)), agent_id, "agent")


@router.get(
    "/agents/{int:agent_id}/export",
    response={200: None, **ERRORS},
    tags=["agents"],
    openapi_extra={"responses": {200: {"description": "The dataset file, streamed.", "content": {
        content_type: {"schema": {"type": "string"}} for content_type in sorted(set(export.CONTENT_TYPES.values()))
    }}}},
)
def agents_export(request: HttpRequest, agent_id: Id, query: Query[ExportQuery]) -> StreamingHttpResponse:
    """Download the agent's dataset, streamed (constant memory whatever its size).

    OpenAI examples that fail the format check are left out; `/export/report` says which and why.
    """
    agent = _export_agent(request, agent_id, query)
    lines = export.export_lines(
        agent=agent, fmt=query.format, status=query.status, part=query.part, split=query.split, seed=query.seed,
        max_tokens=query.max_tokens, question_type=query.question_type,
    )
    download = export.export_file(fmt=query.format, stem=agent.slug, part=query.part if query.split else "")
    return StreamingHttpResponse(
        (line.encode("utf-8") for line in lines),
        content_type=download.content_type,
        headers={"Content-Disposition": f'attachment; filename="{download.name}"'},
    )


@router.get("/agents/{int:agent_id}/export/report", response={200: ExportReportOut, **ERRORS}, tags=["agents"])
def agents_export_report(request: HttpRequest, agent_id: Id, query: Query[ExportQuery]) -> dict[str, Any]:
    """What an export would write per part, and what it would skip and why."""
    agent = _export_agent(request, agent_id, query)
    report = export.export_report(
        agent=agent, fmt=query.format, status=query.status, split=query.split, seed=query.seed,
        max_tokens=query.max_tokens, question_type=query.question_type,
    )
    return report.as_dict()


# --- conversations: the multi-turn export ----------------------------------------------------


class ConversationExportQuery(Schema):
    format: Literal["openai-multiturn", "sharegpt-multiturn"] = "openai-multiturn"
    reviewed: Literal["reviewed", "all"] = Field("reviewed", description="Only conversations marked reviewed, or all.")
    tag: Text = Field("", max_length=50, description="Only conversations with this tag.")
    workspace: Id | None = None
    ids: list[Id] = Field(default_factory=list, max_length=1000, description="Only these conversations.")
    max_tokens: int = Field(export.MAX_EXAMPLE_TOKENS, ge=1, le=10_000_000)


def _conversations_chosen(request: HttpRequest, query: ConversationExportQuery) -> QuerySet[Any]:
    rows = conversations_for(user=user_of(request))
    if query.workspace is not None:
        rows = rows.filter(workspace=get_or_404(workspaces_for(user=user_of(request)), query.workspace, "workspace"))
    return conversation_export.conversations_selected(rows, reviewed=query.reviewed, ids=query.ids)


@router.get(
    "/conversations/export",
    response={200: None, **ERRORS},
    tags=["conversations"],
    openapi_extra={"responses": {200: {"description": "The dataset file, streamed.", "content": {
        "application/jsonl": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "string"}},
    }}}},
)
def conversations_export(request: HttpRequest, query: Query[ConversationExportQuery]) -> StreamingHttpResponse:
    """Download whole conversations as multi-turn training data (tool calls and results included).

    Conversations that fail OpenAI's format check are left out; `/conversations/export/report` says which and why.
    """
    lines = conversation_export.conversation_export_lines(
        conversations=_conversations_chosen(request, query), fmt=query.format, tag=query.tag,
        max_tokens=query.max_tokens,
    )
    download = export.export_file(fmt=query.format, stem=f"conversations-{query.format}-{query.reviewed}")
    return StreamingHttpResponse(
        (line.encode("utf-8") for line in lines),
        content_type=download.content_type,
        headers={"Content-Disposition": f'attachment; filename="{download.name}"'},
    )


@router.get("/conversations/export/report", response={200: ExportReportOut, **ERRORS}, tags=["conversations"])
def conversations_export_report(request: HttpRequest, query: Query[ConversationExportQuery]) -> dict[str, Any]:
    """What the multi-turn export would write, and which conversations it would skip and why."""
    report = conversation_export.conversation_export_report(
        conversations=_conversations_chosen(request, query), fmt=query.format, tag=query.tag,
        max_tokens=query.max_tokens,
    )
    return report.as_dict()
