"""Agent pages: the dashboard, create and edit, material (assign, unassign, move) and dataset downloads."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from masscer.views import get_visible_or_404, id_or_none, int_list, paginate, posted
from training import export
from training.models import Assignment, Completion
from training.question_types import QUESTION_TYPES
from training.review import assignments_set_rule, completions_assign, completions_move, completions_unassign
from training.selectors import completions_for, jobs_for
from workspaces.permissions import require_change

from .dashboard import agent_update
from .forms import MATERIAL_ACTIONS, AgentCreateForm, AgentEditForm
from .models import Agent
from .retrieval import context_budget, explain
from .selectors import agents_for, agents_with_counts
from .services import agent_create
from .turns import examples_k

SCOPES = {"assigned": "Assigned to this agent", "unassigned": "Not assigned to it", "all": "All in the workspace"}
MATERIAL_FILTERS = ("status", "job", "source_type", "q")
JOB_CHOICES = 50
EXPLAIN_CHARS = 4000


@login_required
@require_GET
def agent_list(request: HttpRequest) -> HttpResponse:
    page = paginate(request, agents_with_counts(user=request.user))
    return render(request, "agents/list.html", {"page": page, "formats": export.FORMATS})


@login_required
@require_http_methods(["GET", "POST"])
def agent_new(request: HttpRequest) -> HttpResponse:
    form = AgentCreateForm(posted(request), user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            agent = agent_create(
                owner=request.user,
                name=form.cleaned_data["name"],
                workspace=form.chosen_workspace(),
                system_prompt=form.cleaned_data["system_prompt"],
                **form.params(),
            )
        except ValidationError as exc:
            form.add_error("name", exc)
        else:
            messages.success(request, f"Created the agent “{agent.name}”.")
            return redirect("agents:detail", pk=agent.pk)
    return render(request, "agents/form.html", {"form": form, "agent": None})


def _visible_agent(request: HttpRequest, pk: int) -> Agent:
    return get_visible_or_404(Agent.objects.select_related("workspace", "owner"), user=request.user, pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def agent_edit(request: HttpRequest, pk: int) -> HttpResponse:
    agent = _visible_agent(request, pk)
    # The form is shown only to those the service will let save it (it checks again).
    require_change(user=request.user, obj=agent)
    initial = {field: getattr(agent, field) for field in AgentEditForm.base_fields}
    form = AgentEditForm(posted(request), initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            agent_update(
                actor=request.user,
                agent=agent,
                name=form.cleaned_data["name"],
                system_prompt=form.cleaned_data["system_prompt"],
                **form.params(),
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Saved the agent “{agent.name}”.")
            return redirect("agents:detail", pk=agent.pk)
    return render(request, "agents/form.html", {"form": form, "agent": agent})


def material_filters(data: QueryDict) -> dict[str, str]:
    filters = {key: data.get(key, "").strip() for key in MATERIAL_FILTERS}
    filters["scope"] = data.get("scope") if data.get("scope") in SCOPES else "assigned"
    if filters["status"] not in Completion.Status.values:
        filters["status"] = ""
    if id_or_none(filters["job"]) is None:
        filters["job"] = ""
    return filters


def _material(user: Any, agent: Agent, filters: dict[str, str]) -> QuerySet[Completion]:
    selected = {key: filters[key] for key in MATERIAL_FILTERS}
    rows = completions_for(user=user, filters=selected).filter(job__workspace_id=agent.workspace_id)
    if filters["scope"] == "assigned":
        rows = rows.filter(assignments__agent=agent)
    elif filters["scope"] == "unassigned":
        rows = rows.exclude(assignments__agent=agent)
    return rows


def material_rows(user: Any, agent: Agent, filters: dict[str, str]) -> QuerySet[Completion]:
    rows = _material(user, agent, filters)
    # One prefetch for both columns: the agents of each completion, and this agent's rule for it.
    placed = Assignment.objects.select_related("agent").order_by("agent__name", "agent_id")
    return rows.select_related("chunk__document", "chunk__conversation").prefetch_related(
        Prefetch("assignments", queryset=placed, to_attr="placed")
    )


def material_counts(user: Any, agent: Agent) -> dict[str, int]:
    """The agent's material by status (one grouped query over its assignments)."""
    assigned = _material(user, agent, material_filters(QueryDict()))
    counted = dict(assigned.order_by().values_list("status").annotate(n=Count("pk")))
    return {status: counted.get(status, 0) for status in Completion.Status.values}


def _known_count(filters: dict[str, str], counts: dict[str, int]) -> int | None:
    """The list's length when the counts already tell it (the agent's material, by status or
    all of it): at 50,000 assigned completions a second pass over them costs as much as the rest
    of the page."""
    if filters["scope"] != "assigned" or filters["job"] or filters["source_type"] or filters["q"]:
        return None
    return counts[filters["status"]] if filters["status"] else sum(counts.values())


@login_required
@require_GET
def agent_detail(request: HttpRequest, pk: int) -> HttpResponse:
    agent = _visible_agent(request, pk)
    filters = material_filters(request.GET)
    counts = material_counts(request.user, agent)
    page = paginate(
        request, material_rows(request.user, agent, filters), count=_known_count(filters, counts), ids_first=True
    )
    context = {
        "agent": agent,
        "page": page,
        "filters": filters,
        "counts": counts,
        "scopes": SCOPES,
        "statuses": Completion.Status.choices,
        "actions": MATERIAL_ACTIONS,
        "others": agents_for(user=request.user).filter(workspace_id=agent.workspace_id).exclude(pk=agent.pk),
        "jobs": jobs_for(user=request.user)
        .select_related(None)
        .filter(workspace_id=agent.workspace_id)
        .only("pk", "created_at")[:JOB_CHOICES],
        "formats": export.FORMATS,
        "export_statuses": export.STATUSES,
        "question_types": QUESTION_TYPES,
        "rules": Assignment.Rule.choices,
        "budget": context_budget(agent),
    }
    return render(request, "agents/detail.html", context)


def _chosen_ids(request: HttpRequest, agent: Agent) -> list[int]:
    """The completions to act on: ticked ones, or all the filters match; only visible ones of the agent's workspace."""
    rows = material_rows(request.user, agent, material_filters(request.POST))
    if request.POST.get("selection") != "all":
        rows = rows.filter(pk__in=int_list(request.POST.getlist("ids")))
    return list(rows.order_by().values_list("pk", flat=True).distinct())


@login_required
@require_POST
def agent_material(request: HttpRequest, pk: int) -> HttpResponse:
    agent = _visible_agent(request, pk)
    action = request.POST.get("action", "")
    back = f"{reverse('agents:detail', args=[agent.pk])}?{request.POST.get('query', '')}"
    if action not in MATERIAL_ACTIONS:
        messages.error(request, "Choose what to do with the selected completions.")
        return redirect(back)
    ids = _chosen_ids(request, agent)
    if not ids:
        messages.error(request, "Tick one or more completions first (or choose “all matching the filters”).")
        return redirect(back)
    target = None
    if action in ("copy", "move"):
        target = agents_for(user=request.user).filter(
            workspace_id=agent.workspace_id, pk=id_or_none(request.POST.get("target")) or 0
        ).exclude(pk=agent.pk).first()
        if target is None:
            messages.error(request, "Choose the agent to move or assign them to.")
            return redirect(back)
    try:
        messages.success(request, _apply(request, action, ids, agent, target))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect(back)


def _plural(count: int) -> str:
    return f"{count} completion{'s' if count != 1 else ''}"


def _apply(request: HttpRequest, action: str, ids: list[int], agent: Agent, target: Agent | None) -> str:
    """Run the chosen action through the assignment services (which refuse, with a 403, a user
    who may not change the agents involved)."""
    if action == "assign":
        completions_assign(actor=request.user, completion_ids=ids, agent=agent)
        return f"Assigned {_plural(len(ids))} to {agent.name}."
    if action == "unassign":
        removed = completions_unassign(actor=request.user, completion_ids=ids, agent=agent).done
        return f"Removed {_plural(removed)} from {agent.name}."
    if action == "rule":
        return _set_rule(request, ids, agent)
    assert target is not None
    if action == "copy":
        completions_assign(actor=request.user, completion_ids=ids, agent=target)
        return f"Assigned {_plural(len(ids))} to {target.name} as well."
    moved = completions_move(actor=request.user, completion_ids=ids, source=agent, target=target).done
    return f"Moved {_plural(moved)} from {agent.name} to {target.name}."


def _set_rule(request: HttpRequest, ids: list[int], agent: Agent) -> str:
    rule = request.POST.get("rule", "")
    done = assignments_set_rule(
        actor=request.user, agent=agent, completion_ids=ids, rule=rule, tags=request.POST.get("tags", "")
    ).done
    return f"{_plural(done)} of {agent.name}: {Assignment.Rule(rule).label.lower()}."


@login_required
@require_GET
def agent_explain(request: HttpRequest, pk: int) -> HttpResponse:
    """"Why this answer": the material retrieval would put in context for a question (read-only)."""
    agent = _visible_agent(request, pk)
    question = request.GET.get("q", "").strip()[:EXPLAIN_CHARS]
    tags = [tag.strip() for tag in request.GET.get("tags", "").split(",") if tag.strip()]
    k = examples_k()  # as many as a chat turn takes
    found = explain(agent, question, k=k, tags=tags) if question or tags else None
    context = {"agent": agent, "question": question, "tags": ", ".join(tags), "found": found, "k": k}
    return render(request, "agents/explain.html", context)


@login_required
@require_GET
def agent_export(request: HttpRequest, pk: int) -> HttpResponse | StreamingHttpResponse:
    agent = _visible_agent(request, pk)
    fmt = request.GET.get("format", "openai-jsonl")
    status = request.GET.get("status", "approved")
    if fmt not in export.FORMATS or status not in export.STATUSES:
        raise Http404("Unknown export format or status.")
    question_type = request.GET.get("question_type", "")
    if question_type and question_type not in QUESTION_TYPES:
        return HttpResponseBadRequest(
            f"Unknown question type {question_type!r}; the known types are {', '.join(QUESTION_TYPES)}.",
            content_type="text/plain; charset=utf-8",
        )
    stem = f"{agent.slug}-{fmt}-{status}" + (f"-{question_type}" if question_type else "")
    download = export.export_file(fmt=fmt, stem=stem)
    response = StreamingHttpResponse(
        export.export_lines(agent=agent, fmt=fmt, status=status, question_type=question_type),
        content_type=download.content_type,
    )
    response["Content-Disposition"] = f'attachment; filename="{download.name}"'
    return response
