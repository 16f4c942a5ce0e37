"""Training pages: the Train dialog with its estimate, jobs (list, live page, cancel, retry) and chunks.

The review queue is in `review_views.py`.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from agents.models import Agent
from agents.selectors import agent_by_slug, agents_for
from agents.services import agent_create
from conversations.models import Conversation
from conversations.selectors import conversations_for
from documents.models import Document
from documents.selectors import documents_for
from masscer.views import get_visible_or_404, int_list, paginate, posted
from workspaces.models import Workspace
from workspaces.permissions import NotAllowed, changeable

from . import estimate as estimating
from .forms import TYPE_PREFIX, TrainForm
from .models import Completion, TrainingJob, WorkItem
from .previews import conversation_preview, conversation_shape
from .question_types import QUESTION_TYPES
from .selectors import chunks_for_conversation, chunks_for_document, job_rejected_samples, job_type_mix, jobs_for
from .services import job_cancel, job_create, job_retry, templates

RECENT_COMPLETIONS = 50
# `job_create`'s error codes that name a Train dialog field (others are shown above the form).
JOB_FIELD_ERRORS = ("count", "style", "audience", "difficulty", "template", "seed_examples")
CHUNKS_PER_PAGE = 20


# --- sources of a Train dialog ---------------------------------------------------------------


class Sources:
    """The documents and conversations a Train dialog is about, all visible to the user."""

    def __init__(self, request: HttpRequest, data: QueryDict) -> None:
        document_ids = set(int_list(data.getlist("document")))
        conversation_ids = set(int_list(data.getlist("conversation")))
        self.documents = list(documents_for(user=request.user).filter(pk__in=document_ids))
        self.conversations = list(conversations_for(user=request.user).filter(pk__in=conversation_ids))
        if len(self.documents) != len(document_ids) or len(self.conversations) != len(conversation_ids):
            raise Http404("No such document or conversation.")
        if not self.documents and not self.conversations:
            raise Http404("Choose a document or a conversation to train with.")

    @property
    def all(self) -> list[Any]:
        return [*self.documents, *self.conversations]

    @property
    def workspace_ids(self) -> set[int]:
        return {source.workspace_id for source in self.all}

    @property
    def failed(self) -> list[Document]:
        return [d for d in self.documents if d.status == Document.Status.FAILED]

    def query(self) -> str:
        pairs = [("document", d.pk) for d in self.documents] + [("conversation", c.pk) for c in self.conversations]
        return "&".join(f"{key}={pk}" for key, pk in pairs)

    def title(self) -> str:
        names = [str(source) for source in self.all]
        return names[0] if len(names) == 1 else f"{len(names)} sources"


def _chunk_shapes(sources: Sources) -> tuple[list[int], list[int], bool, list[str], list[int | None]]:
    """Chunk sizes, user questions per chunk, whether sizes are projected, sources not readable
    yet, and each chunk's document (None for a conversation's: those are never grouped)."""
    tokens: list[int] = []
    caps: list[int] = []
    groups: list[int | None] = []
    projected = False
    waiting: list[str] = []
    for document in sources.documents:
        stored = list(chunks_for_document(document=document).values_list("token_count", flat=True))
        if stored and not document.chunks_partial:  # partial: its first chunks only, still being read
            tokens += stored
        elif document.token_count:
            sizes = estimating.project_chunks(
                document.token_count, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP
            )
            tokens += sizes
            projected = True
        else:
            waiting.append(document.title)
        caps += [0] * (len(tokens) - len(caps))
        groups += [document.pk] * (len(tokens) - len(groups))
    for conversation in sources.conversations:
        stored = list(chunks_for_conversation(conversation=conversation).values_list("token_count", "text"))
        if stored:
            tokens += [count for count, _ in stored]
            caps += [estimating.user_turns(text) for _, text in stored]
        else:
            # Exact: the same splitter the job will run, split once per version of the conversation.
            shapes = conversation_shape(conversation)
            tokens += [shape.tokens for shape in shapes]
            caps += [shape.users for shape in shapes]
        groups += [None] * (len(tokens) - len(groups))
    return tokens, caps, projected, waiting, groups


def _number(value: Any, kind: type, default: Any = None) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def _typed_shares(data: QueryDict | dict[str, Any]) -> dict[str, int]:
    """The question-type shares typed in the Train dialog so far (unreadable ones count as 0)."""
    shares = {key: _number(data.get(TYPE_PREFIX + key), int, 0) or 0 for key in QUESTION_TYPES}
    return {key: share for key, share in shares.items() if share > 0}


def _estimate(sources: Sources, data: QueryDict | dict[str, Any]) -> dict[str, Any]:
    tokens, caps, projected, waiting, groups = _chunk_shapes(sources)
    count = _number(data.get("count"), int, 0) or 0
    model = (data.get("model") or settings.MASSCER_LLM_MODEL).strip()
    context: dict[str, Any] = {"waiting": waiting, "model": model}
    limit = settings.MASSCER_MAX_COMPLETIONS_PER_JOB
    if waiting or not tokens or not 1 <= count <= limit:
        context["invalid_count"] = not 1 <= count <= limit
        context["empty"] = not waiting and not tokens
        return context
    mine = data.get("style") == TrainingJob.Style.MINE
    context["estimate"] = estimating.estimate(
        count=count,
        chunk_tokens=tokens,
        caps=caps if mine else None,
        pairs_per_call=settings.MASSCER_PAIRS_PER_CALL,
        calls_per_batch=settings.MASSCER_CALLS_PER_BATCH,
        max_tokens=_number(data.get("max_tokens"), int),
        price=estimating.price_for(settings.MASSCER_LLM_PRICES, model),
        projected=projected,
        judge=bool(data.get("judge")) and settings.MASSCER_LLM_MODE == "chat",
        sources=groups,
        min_pairs=settings.MASSCER_MIN_PAIRS_PER_CALL,
        span_tokens=settings.MASSCER_SPAN_MAX_TOKENS,
        types=None if mine else _typed_shares(data),
    )
    context["mine"] = mine
    return context


# --- the Train dialog ------------------------------------------------------------------------


def _agent_named(request: HttpRequest, name: str, workspace_id: int) -> Agent:
    """The agent typed in the dialog: the workspace's agent of that name, or a new one."""
    existing = agent_by_slug(workspace_id=workspace_id, slug=slugify(name)[:100])
    if existing is not None:
        return existing
    return agent_create(owner=request.user, name=name, workspace=Workspace.objects.get(pk=workspace_id))


def _start_job(request: HttpRequest, form: TrainForm, sources: Sources, workspace_id: int) -> TrainingJob | None:
    agents = list(form.cleaned_data["agents"])
    try:
        with transaction.atomic():
            new_name = form.cleaned_data["new_agent"].strip()
            if new_name:
                try:
                    agent = _agent_named(request, new_name, workspace_id)
                except ValidationError as exc:
                    form.add_error("new_agent", exc)
                    return None
                if agent not in agents:
                    agents.append(agent)
            return job_create(
                owner=request.user,
                count=form.cleaned_data["count"],
                agents=agents,
                documents=sources.documents,
                conversations=sources.conversations,
                workspace=sources.all[0].workspace,
                **form.job_params(),
            )
    except ValidationError as exc:
        code = getattr(exc, "code", None)
        form.add_error(code if code in JOB_FIELD_ERRORS else None, exc)
        return None
    except NotAllowed as exc:  # the typed name is a teammate's agent
        form.add_error("new_agent", str(exc))
        return None


@login_required
@require_http_methods(["GET", "POST"])
def job_new(request: HttpRequest) -> HttpResponse:
    sources = Sources(request, request.POST if request.method == "POST" else request.GET)
    if len(sources.workspace_ids) > 1:
        messages.error(request, "These sources are in different workspaces; train each workspace's sources separately.")
        url = reverse("training:jobs")
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    workspace_id = next(iter(sources.workspace_ids))
    # Offered: the agents the user may attach material to (job_create checks them again).
    agents = changeable(agents_for(user=request.user).filter(workspace_id=workspace_id), user=request.user)
    form = TrainForm(
        posted(request),
        agents=agents,
        conversations=bool(sources.conversations),
        template_choices=templates.template_choices(workspace_id),
    )
    if request.method == "POST" and form.is_valid() and not sources.failed:
        job = _start_job(request, form, sources, workspace_id)
        if job is not None:
            what = f"{job.requested_count} completions from {sources.title()}"
            messages.success(request, f"Started job {job.pk}: {what}.")
            url = reverse("training:job", args=[job.pk])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    data = form.data if form.is_bound else {
        "count": form.fields["count"].initial,
        "style": "synthesize",
        "judge": "on" if "judge" in form.fields and form.fields["judge"].initial else "",
    }
    context = {"form": form, "sources": sources, **_estimate(sources, data)}
    template = "training/_train_form.html" if request.htmx else "training/train.html"
    return render(request, template, context, status=400 if form.errors else 200)


@login_required
@require_GET
def job_estimate(request: HttpRequest) -> HttpResponse:
    sources = Sources(request, request.GET)
    return render(request, "training/_estimate.html", _estimate(sources, request.GET))


# --- jobs --------------------------------------------------------------------------------------


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    rows = (
        jobs_for(user=request.user)
        .select_related("workspace")
        .prefetch_related("documents", "conversations", "agents")
    )
    page = paginate(request, rows)
    running = any(not job.is_finished for job in page)
    return render(request, "training/job_list.html", {"page": page, "running": running})


def _job_context(job: TrainingJob) -> dict[str, Any]:
    elapsed = None
    if job.started_at:
        elapsed = ((job.finished_at or timezone.now()) - job.started_at).total_seconds()
    item_errors = list(
        WorkItem.objects.filter(job=job).exclude(error="").values_list("error", flat=True).distinct()[:5]
    )
    recent = list(
        Completion.objects.filter(job=job).select_related("chunk").order_by("-id")[:RECENT_COMPLETIONS]
    )
    reasons = {k: v for k, v in (job.shortfall_reasons or {}).items() if k != "errors"}
    return {
        "job": job,
        "elapsed": elapsed,
        "item_errors": item_errors,
        "recent": recent,
        "reasons": reasons,
        "samples": job_rejected_samples(job=job),
        "type_mix": _type_mix(job),
        # Documents still being read while the job is planned from their first pages.
        "reading": [] if job.is_finished else [d for d in job.documents.order_by("pk") if d.progress_label],
        "next_step": job.next_step,
        "can_retry": job.status == TrainingJob.Status.FAILED
        or (job.status == TrainingJob.Status.COMPLETED and job.shortfall > 0),
    }


def _type_mix(job: TrainingJob) -> list[dict[str, Any]]:
    """Asked and made per kind of question, for a job that chose kinds ([] for factual only)."""
    if not job.question_types:
        return []
    mix = job_type_mix(job=job)
    return [{"key": key, "label": QUESTION_TYPES.get(key, key), **counts} for key, counts in mix.items()]


def _visible_job(request: HttpRequest, pk: int) -> TrainingJob:
    return get_visible_or_404(TrainingJob.objects.select_related("owner", "workspace"), user=request.user, pk=pk)


@login_required
@require_GET
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _visible_job(request, pk)
    context = {
        **_job_context(job),
        "documents": list(job.documents.all()),
        "conversations": list(job.conversations.all()),
        "agents": list(job.agents.all()),
    }
    return render(request, "training/job_detail.html", context)


@login_required
@require_GET
def job_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the job page; htmx polls it until the job has finished."""
    job = _visible_job(request, pk)
    return render(request, "training/_job_progress.html", _job_context(job))


@login_required
@require_POST
def job_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _visible_job(request, pk)
    if job_cancel(actor=request.user, job=job):
        messages.success(request, f"Cancelled job {job.pk}. Completions already made are kept.")
    else:
        messages.info(request, f"Job {job.pk} had already finished.")
    return redirect("training:job", pk=job.pk)


@login_required
@require_POST
def job_retry_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _visible_job(request, pk)
    if job_retry(actor=request.user, job=job):
        messages.success(request, f"Retrying job {job.pk}: running again what failed or fell short.")
    else:
        messages.info(request, f"Job {job.pk} has nothing to retry.")
    return redirect("training:job", pk=job.pk)


# --- chunks ------------------------------------------------------------------------------------


@login_required
@require_GET
def document_chunks(request: HttpRequest, pk: int) -> HttpResponse:
    document = get_visible_or_404(Document.objects.select_related("owner", "workspace"), user=request.user, pk=pk)
    chunks = paginate(request, chunks_for_document(document=document), per_page=CHUNKS_PER_PAGE)
    projected = []
    if not chunks.paginator.count and document.token_count:
        projected = estimating.project_chunks(
            document.token_count, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP
        )
    context = {"document": document, "chunks": chunks, "tab": "chunks", "projected": projected}
    return render(request, "documents/chunks.html", context)


@login_required
@require_GET
def conversation_chunks(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_visible_or_404(
        Conversation.objects.select_related("owner", "workspace"), user=request.user, pk=pk
    )
    chunks = paginate(request, chunks_for_conversation(conversation=conversation), per_page=CHUNKS_PER_PAGE)
    preview = None
    if not chunks.paginator.count:
        # Not trained yet: show what the splitter will make, a page at a time, without storing it.
        preview = conversation_preview(conversation, request.GET.get("page"))
    context = {"conversation": conversation, "chunks": chunks, "tab": "chunks", "preview": preview}
    return render(request, "conversations/chunks.html", context)

