"""Prompt template pages: the list, a template with its version history, new and edit (each with a
"Preview on a chunk" button that renders the prompt on a real chunk before saving), and delete.

Every write is a call to `services.templates`, which checks the workspace rules; templates are
looked up among the user's workspaces, so an outsider gets 404.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.selectors import agents_for
from conversations.models import Conversation
from conversations.selectors import conversations_for
from documents.models import Document
from documents.selectors import documents_for
from masscer.lib.llm import prompts
from masscer.views import get_visible_or_404, id_or_none, paginate, posted
from workspaces.models import Workspace
from workspaces.permissions import NotAllowed, can_change, changeable, require_change
from workspaces.selectors import workspaces_for
from workspaces.services import workspace_personal

from .models import PromptTemplate
from .services.templates import (
    Preview,
    template_create,
    template_current,
    template_delete,
    template_preview,
    template_save,
    templates_for,
)
from .template_forms import TemplateCreateForm, TemplateForm, preview_sources

FORM_PAGE = "training/prompt_template_form.html"


@login_required
@require_GET
def template_list(request: HttpRequest) -> HttpResponse:
    archived = request.GET.get("archived") == "1"
    rows = templates_for(user=request.user, archived=archived).annotate(jobs=Count("versions__jobs"))
    page = paginate(request, rows.order_by("workspace__name", "name", "id"))
    return render(request, "training/prompt_template_list.html", {"page": page, "archived": archived})


def _visible_template(request: HttpRequest, pk: int) -> PromptTemplate:
    rows = PromptTemplate.objects.select_related("workspace", "owner", "agent")
    return get_visible_or_404(rows, user=request.user, pk=pk)


@login_required
@require_GET
def template_detail(request: HttpRequest, pk: int) -> HttpResponse:
    template = _visible_template(request, pk)
    rows = template.versions.select_related("created_by").annotate(job_count=Count("jobs"))
    versions = list(rows.order_by("-number"))
    wanted = id_or_none(request.GET.get("version"))
    shown = next((v for v in versions if v.number == wanted), versions[0] if versions else None)
    context = {
        "template": template,
        "versions": versions,
        "shown": shown,
        "can_change": can_change(user=request.user, obj=template) and not template.archived,
    }
    return render(request, "training/prompt_template_detail.html", context)


def _choices(request: HttpRequest, workspace_ids: list[int]) -> dict[str, Any]:
    """The agents (those the user may change) and preview sources of the given workspaces."""
    agents = changeable(agents_for(user=request.user).filter(workspace_id__in=workspace_ids), user=request.user)
    sources = preview_sources(
        documents_for(user=request.user).filter(workspace_id__in=workspace_ids),
        conversations_for(user=request.user).filter(workspace_id__in=workspace_ids),
    )
    return {"agents": agents, "sources": sources}


def _preview(request: HttpRequest, form: TemplateForm, workspace: Workspace) -> Preview | None:
    """The form's texts rendered on the chosen chunk, or None with the form's errors said."""
    chosen = form.preview_source()
    if chosen is None:
        form.add_error("source", "Choose a document or conversation to preview on.")
        return None
    kind, pk = chosen
    model = Document if kind == "document" else Conversation
    source = get_visible_or_404(model.objects.all(), user=request.user, pk=pk)
    try:
        return template_preview(
            workspace=workspace,
            system=form.cleaned_data["system"],
            user=form.cleaned_data["user"],
            document=source if kind == "document" else None,
            conversation=source if kind == "conversation" else None,
            index=form.cleaned_data["index"] or 0,
            agent=form.cleaned_data["agent"],
        )
    except ValidationError as exc:
        form.add_error(None, exc)
        return None


def _page(request: HttpRequest, form: TemplateForm, template: PromptTemplate | None, preview: Preview | None,
          status: int = 200) -> HttpResponse:
    context = {"form": form, "template": template, "preview": preview, "placeholders": prompts.USER_PLACEHOLDERS,
               "system_placeholders": prompts.SYSTEM_PLACEHOLDERS}  # fmt: skip
    return render(request, FORM_PAGE, context, status=400 if form.errors else status)


@login_required
@require_http_methods(["GET", "POST"])
def template_new(request: HttpRequest) -> HttpResponse:
    workspace_ids = list(workspaces_for(user=request.user).values_list("pk", flat=True))
    initial = {"system": prompts.DEFAULT_SYSTEM_TEMPLATE, "user": prompts.DEFAULT_USER_TEMPLATE}
    form = TemplateCreateForm(posted(request), user=request.user, initial=initial, **_choices(request, workspace_ids))
    if request.method != "POST" or not form.is_valid():
        return _page(request, form, None, None)
    workspace = form.chosen_workspace() or workspace_personal(user=request.user)
    if request.POST.get("action") == "preview":
        return _page(request, form, None, _preview(request, form, workspace))
    data = form.cleaned_data
    try:
        template = template_create(
            actor=request.user, workspace=workspace, name=data["name"], system=data["system"], user=data["user"],
            roles=form.roles(),
        )  # fmt: skip
    except ValidationError as exc:
        form.add_error(None, exc)
        return _page(request, form, None, None)
    except NotAllowed as exc:  # the default (admins) or an agent the user may not change
        form.add_error(None, str(exc))
        return _page(request, form, None, None, status=403)
    messages.success(request, f"Created the prompt template “{template.name}” (version 1).")
    return redirect("training:template", pk=template.pk)


@login_required
@require_http_methods(["GET", "POST"])
def template_edit(request: HttpRequest, pk: int) -> HttpResponse:
    template = _visible_template(request, pk)
    # The form is shown only to those the service will let save it (it checks again).
    require_change(user=request.user, obj=template)
    if template.archived:
        raise Http404("This template is archived.")
    current = template_current(template)
    initial = {"system": current.system if current else "", "user": current.user if current else "",
               "is_default": template.is_default, "agent": template.agent_id}  # fmt: skip
    form = TemplateForm(posted(request), initial=initial, **_choices(request, [template.workspace_id]))
    if request.method != "POST" or not form.is_valid():
        return _page(request, form, template, None)
    if request.POST.get("action") == "preview":
        return _page(request, form, template, _preview(request, form, template.workspace))
    try:
        version = template_save(
            actor=request.user, template=template, system=form.cleaned_data["system"],
            user=form.cleaned_data["user"], roles=form.roles(),
        )  # fmt: skip
    except ValidationError as exc:
        form.add_error(None, exc)
        return _page(request, form, template, None)
    except NotAllowed as exc:
        form.add_error(None, str(exc))
        return _page(request, form, template, None, status=403)
    messages.success(request, f"Saved “{template.name}”: version {version.number} is current.")
    return redirect("training:template", pk=template.pk)


@login_required
@require_POST
def template_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    template = _visible_template(request, pk)
    outcome = template_delete(actor=request.user, template=template)
    if outcome == "archived":
        messages.success(request, f"Archived “{template.name}”: jobs used it, so they keep their version.")
    else:
        messages.success(request, f"Deleted “{template.name}”.")
    return redirect("training:templates")
