"""Workspace pages: the user's workspaces, members and roles (admins manage members)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .forms import ApiTokenForm, MemberForm, WorkspaceForm
from .models import Membership, Workspace
from .permissions import require_admin
from .selectors import role_in, workspaces_for
from .services import (
    api_token_create,
    api_token_revoke,
    api_tokens_of,
    membership_add,
    membership_remove,
    workspace_create,
    workspace_personal,
)


@login_required
@require_http_methods(["GET", "POST"])
def workspace_list(request: HttpRequest) -> HttpResponse:
    form = WorkspaceForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        workspace = workspace_create(name=form.cleaned_data["name"], admin=request.user)
        messages.success(request, f"Created the workspace “{workspace.name}”. Add members below.")
        return redirect("workspaces:detail", pk=workspace.pk)
    workspace_personal(user=request.user)  # everyone has one to put things in
    rows = (
        workspaces_for(user=request.user)
        .annotate(member_count=Count("memberships", distinct=True))
        .select_related("personal_for")
    )
    roles = dict(Membership.objects.filter(user=request.user).values_list("workspace_id", "role"))
    workspaces = [(workspace, roles.get(workspace.pk, "")) for workspace in rows]
    return render(request, "workspaces/list.html", {"workspaces": workspaces, "form": form})


def _membership_or_404(request: HttpRequest, pk: int) -> tuple[Workspace, str]:
    role = role_in(user=request.user, workspace_id=pk)
    if role is None:
        raise Http404("No such workspace.")
    return Workspace.objects.get(pk=pk), role


@login_required
@require_GET
def workspace_detail(request: HttpRequest, pk: int) -> HttpResponse:
    workspace, role = _membership_or_404(request, pk)
    members = workspace.memberships.select_related("user").order_by("user__username")
    context = {"workspace": workspace, "role": role, "members": members, "form": MemberForm()}
    return render(request, "workspaces/detail.html", context)


@login_required
@require_POST
def member_add(request: HttpRequest, pk: int) -> HttpResponse:
    workspace, role = _membership_or_404(request, pk)
    # Refused before the form is read, so a member cannot probe which login names exist.
    require_admin(user=request.user, workspace_id=workspace.pk, action="add members")
    form = MemberForm(request.POST)
    if form.is_valid():
        user = get_user_model().objects.filter(username=form.cleaned_data["username"]).first()
        if user is None:
            form.add_error("username", "No user has this login name.")
        else:
            try:
                membership_add(actor=request.user, workspace=workspace, user=user, role=form.cleaned_data["role"])
            except ValidationError as exc:
                form.add_error("role", exc)
            else:
                messages.success(request, f"{user.get_username()} is now {form.cleaned_data['role']} here.")
                return redirect("workspaces:detail", pk=pk)
    members = workspace.memberships.select_related("user").order_by("user__username")
    context = {"workspace": workspace, "role": role, "members": members, "form": form}
    return render(request, "workspaces/detail.html", context, status=400)


@login_required
@require_POST
def member_remove(request: HttpRequest, pk: int, user_id: int) -> HttpResponse:
    workspace, _ = _membership_or_404(request, pk)
    try:
        membership_remove(actor=request.user, workspace=workspace, user=get_user_model()(pk=user_id))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Removed the member.")
    return redirect("workspaces:detail", pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    """Personal API tokens: the secret of a new one is shown once, on this response only."""
    form = ApiTokenForm(request.POST if request.method == "POST" else None)
    secret = None
    if request.method == "POST" and form.is_valid():
        try:
            token, secret = api_token_create(user=request.user, name=form.cleaned_data["name"])
        except ValidationError as exc:
            form.add_error("name", exc)
        else:
            messages.success(request, f"Created the token “{token.name}”. Copy it now: it is not shown again.")
            form = ApiTokenForm()
    tokens = api_tokens_of(user=request.user)
    return render(request, "workspaces/tokens.html", {"tokens": tokens, "form": form, "secret": secret})


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = api_tokens_of(user=request.user).filter(pk=pk).first()
    if token is None:
        raise Http404("No such token.")
    api_token_revoke(actor=request.user, token=token)
    messages.success(request, f"Revoked the token “{token.name}”; scripts using it are refused from now on.")
    return redirect("workspaces:tokens")
