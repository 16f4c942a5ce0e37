"""The review queue: filter, approve, reject, edit, bulk review (reviewers and admins only)."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from agents.models import Agent
from agents.selectors import agents_for
from conversations.selectors import conversations_for
from documents.selectors import documents_for
from masscer.views import get_visible_or_404, id_or_none, int_list, paginate
from workspaces.permissions import changeable
from workspaces.selectors import review_workspace_ids

from .forms import REVIEW_ACTIONS, CompletionEditForm
from .models import Assignment, Completion
from .question_types import QUESTION_TYPES
from .review import assignments_set_rule
from .selectors import completions_for, jobs_for
from .services import completion_review, completions_review_bulk

FILTER_KEYS = (
    "status", "job", "agent", "source_type", "document", "conversation", "question_type", "q", "judge_below", "order"
)
# The judge's criteria the queue sorts by (lowest score first).
ORDERS = ("faithfulness", "answerability", "usefulness")
JOB_CHOICES = 50
NOT_A_REVIEWER = "Only reviewers and admins of a workspace can approve or reject its completions."


def review_filters(data: QueryDict) -> dict[str, Any]:
    """The queue's filters from a query string; pending is the default status, "all" drops it."""
    filters: dict[str, Any] = {key: data.get(key, "").strip() for key in FILTER_KEYS}
    status = filters["status"] or Completion.Status.PENDING
    filters["status"] = "" if status == "all" else status
    for key in ("job", "agent", "document", "conversation"):
        if id_or_none(filters[key]) is None:
            filters[key] = ""
    if filters["status"] and filters["status"] not in Completion.Status.values:
        filters["status"] = Completion.Status.PENDING
    if filters["judge_below"] not in ("2", "3", "4", "5"):
        filters["judge_below"] = ""  # "below 1" would match nothing; anything else is no filter
    if filters["order"] not in ORDERS:
        filters["order"] = ""
    if filters["question_type"] not in QUESTION_TYPES:
        filters["question_type"] = ""  # an unknown kind from a hand-edited URL: no filter
    return filters


def _with_rules(rows: QuerySet[Completion]) -> QuerySet[Completion]:
    """Each completion's assignments, with their agent and context rule (`context_rules`)."""
    assignments = Assignment.objects.select_related("agent").order_by("agent__name", "agent_id")
    return rows.prefetch_related(Prefetch("assignments", queryset=assignments, to_attr="context_rules"))


def review_rows(user: Any, filters: dict[str, Any]) -> QuerySet[Completion]:
    rows = completions_for(user=user, filters=filters).select_related("chunk__document", "chunk__conversation")
    if filters.get("order"):
        # Lowest score first: what most needs a reviewer's eye; unjudged ones last.
        score = F(f"judge__{filters['order']}")
        return _with_rules(rows).order_by(score.asc(nulls_last=True), "created_at", "id")
    return _with_rules(rows).order_by("created_at", "id")


def _rule_agent_ids(user: Any) -> set[int]:
    """The agents whose context rules the user may set (creator or admin): their forms are shown."""
    return set(changeable(Agent.objects.all(), user=user).values_list("pk", flat=True))


def _card_context(completion: Completion, reviewer_ids: set[int], agent_ids: set[int]) -> dict[str, Any]:
    rules = [(a, a.agent_id in agent_ids) for a in getattr(completion, "context_rules", [])]
    return {"c": completion, "can_review": completion.job.workspace_id in reviewer_ids, "rules": rules,
            "rule_choices": Assignment.Rule.choices}


def _card_of(request: HttpRequest, completion: Completion) -> dict[str, Any]:
    return _card_context(completion, review_workspace_ids(user=request.user), _rule_agent_ids(request.user))


def _filter_labels(request: HttpRequest, filters: dict[str, Any]) -> dict[str, str]:
    """Titles of a document or conversation filter (they have no select; they come from links)."""
    labels = {}
    if filters["document"]:
        document = documents_for(user=request.user).filter(pk=filters["document"]).first()
        labels["document"] = document.title if document else f"document {filters['document']}"
    if filters["conversation"]:
        conversation = conversations_for(user=request.user).filter(pk=filters["conversation"]).first()
        labels["conversation"] = str(conversation) if conversation else f"conversation {filters['conversation']}"
    return labels


@login_required
@require_GET
def review_queue(request: HttpRequest) -> HttpResponse:
    filters = review_filters(request.GET)
    page = paginate(request, review_rows(request.user, filters), ids_first=True)
    reviewer_ids = review_workspace_ids(user=request.user)
    agent_ids = _rule_agent_ids(request.user)
    context = {
        "page": page,
        "cards": [_card_context(c, reviewer_ids, agent_ids) for c in page],
        "filters": filters,
        "judge_orders": ORDERS,
        "question_types": QUESTION_TYPES,
        "status_choice": request.GET.get("status") or Completion.Status.PENDING,
        "statuses": Completion.Status.choices,
        "jobs": jobs_for(user=request.user).select_related(None).only("pk", "created_at")[:JOB_CHOICES],
        "agents": agents_for(user=request.user).only("pk", "name"),
        "is_reviewer": bool(reviewer_ids),
        "labels": _filter_labels(request, filters),
    }
    return render(request, "training/review.html", context)


def _visible_completion(request: HttpRequest, pk: int) -> Completion:
    rows = Completion.objects.select_related("chunk__document", "chunk__conversation", "job", "reviewed_by")
    return get_visible_or_404(_with_rules(rows), user=request.user, pk=pk, path="job__workspace")


@login_required
@require_GET
def completion_detail(request: HttpRequest, pk: int) -> HttpResponse:
    completion = _visible_completion(request, pk)
    return render(request, "training/completion.html", {**_card_of(request, completion), "single": True})


def _back(request: HttpRequest, completion: Completion) -> HttpResponse:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("training:completion", args=[completion.pk])
    return redirect(target)


@login_required
@require_POST
def completion_review_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve, reject, or save an edit (then approve with "approve", or keep the status with "save")."""
    completion = _visible_completion(request, pk)
    action = request.POST.get("action", "")
    status = REVIEW_ACTIONS.get(action, completion.status if action == "save" else None)
    if status is None:
        return HttpResponse("Unknown action.", status=400)
    edit = CompletionEditForm(request.POST)
    question = answer = ""
    if "question" in request.POST or "answer" in request.POST:
        if not edit.is_valid():
            return _edit_error(request, completion, edit)
        question, answer = edit.cleaned_data["question"], edit.cleaned_data["answer"]
    try:
        completion = _review(request, completion, status, question, answer)
    except PermissionDenied as exc:
        return _forbidden(request, exc)
    except ValidationError as exc:  # e.g. the edit repeats another question of the job
        return _not_saved(request, completion, " ".join(exc.messages))
    return _saved(request, completion, f"Completion {completion.pk}: {completion.get_status_display().lower()}.")


def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    if request.htmx:
        return HttpResponse(str(exc), status=403)
    return render(request, "403.html", {"reason": str(exc)}, status=403)


def _saved(request: HttpRequest, completion: Completion, note: str) -> HttpResponse:
    """The card again (htmx) or back to the page, with a note."""
    if request.htmx:
        context = _card_of(request, completion)
        # The card's own forms go back to the page it sits on, not to this action's URL.
        context["next_url"] = request.POST.get("next", "")
        return render(request, "training/_completion_card.html", context)
    messages.success(request, note)
    return _back(request, completion)


def _reloaded(completion: Completion) -> Completion:
    rows = Completion.objects.filter(pk=completion.pk).select_related(
        "chunk__document", "chunk__conversation", "job", "reviewed_by"
    )
    return _with_rules(rows).get()


def _review(request: HttpRequest, completion: Completion, status: str, question: str, answer: str) -> Completion:
    completion_review(completion=completion, status=status, reviewer=request.user, question=question, answer=answer)
    return _reloaded(completion)


@login_required
@require_POST
def assignment_rule_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Set the context rule and tags of one of the completion's agents (the agent's creator or an admin)."""
    completion = _visible_completion(request, pk)
    agent_id = id_or_none(request.POST.get("agent"))
    agent = next((a.agent for a in completion.context_rules if a.agent_id == agent_id), None)
    if agent is None:
        return _not_saved(request, completion, "choose one of the agents this completion is assigned to.")
    try:
        assignments_set_rule(
            actor=request.user, agent=agent, completion_ids=[completion.pk], rule=request.POST.get("rule", ""),
            tags=request.POST.get("tags", ""),
        )
    except PermissionDenied as exc:
        return _forbidden(request, exc)
    except ValidationError as exc:
        return _not_saved(request, completion, " ".join(exc.messages))
    return _saved(request, _reloaded(completion), f"Completion {completion.pk}: context rule for {agent.name} saved.")


def _edit_error(request: HttpRequest, completion: Completion, edit: CompletionEditForm) -> HttpResponse:
    problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in edit.errors.items())
    return _not_saved(request, completion, problems)


def _not_saved(request: HttpRequest, completion: Completion, problems: str) -> HttpResponse:
    if request.htmx:
        return HttpResponse(f"Not saved: {problems}", status=400)
    messages.error(request, f"Not saved: {problems}")
    return _back(request, completion)


@login_required
@require_POST
def review_bulk(request: HttpRequest) -> HttpResponse:
    """Approve or reject the selected cards, or everything the filters match."""
    status = REVIEW_ACTIONS.get(request.POST.get("action", ""))
    filters = review_filters(request.POST)
    back = f"{reverse('training:review')}?{request.POST.get('query', '')}"
    if status is None:
        messages.error(request, "Choose approve or reject.")
        return redirect(back)
    if not review_workspace_ids(user=request.user):
        messages.error(request, NOT_A_REVIEWER)
        return HttpResponse(status=403) if request.htmx else render_forbidden(request)
    rows = review_rows(request.user, filters)
    if request.POST.get("scope") != "all":
        rows = rows.filter(pk__in=int_list(request.POST.getlist("ids")))
    total = rows.count()
    try:
        changed = completions_review_bulk(completions=rows, status=status, reviewer=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(back)
    verb = "Approved" if status == Completion.Status.APPROVED else "Rejected"
    note = f" {total - changed} left alone: you do not review their workspace." if total > changed else ""
    messages.success(request, f"{verb} {changed} completion{'s' if changed != 1 else ''}.{note}")
    return redirect(back)


def render_forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "403.html", {"reason": NOT_A_REVIEWER}, status=403)
