"""Workspace pages: the user's workspaces, members and roles (admins manage members)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .forms import ApiTokenForm, MemberForm, WorkspaceForm
from .models import Invitation, Membership, Workspace
from .permissions import require_admin
from .selectors import invitations_for, invitations_of, role_in, roles_of, workspaces_for
from .services import (
    api_token_create,
    api_token_revoke,
    api_tokens_of,
    invitation_accept,
    invitation_decline,
    invitation_revoke,
    membership_invite,
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
    roles = roles_of(user=request.user)
    workspaces = [(workspace, roles.get(workspace.pk, "")) for workspace in rows]
    context = {"workspaces": workspaces, "form": form, "invitations": invitations_for(user=request.user)}
    return render(request, "workspaces/list.html", context)


def _membership_or_404(request: HttpRequest, pk: int) -> tuple[Workspace, str]:
    role = role_in(user=request.user, workspace_id=pk)
    if role is None:
        raise Http404("No such workspace.")
    return Workspace.objects.get(pk=pk), role


@login_required
@require_GET
def workspace_detail(request: HttpRequest, pk: int) -> HttpResponse:
    workspace, role = _membership_or_404(request, pk)
    return render(request, "workspaces/detail.html", _detail_context(workspace, role, MemberForm()))


def _detail_context(workspace: Workspace, role: str, form: MemberForm) -> dict[str, object]:
    members = workspace.memberships.select_related("user").order_by("user__username")
    invitations = invitations_of(workspace_id=workspace.pk) if role == Membership.Role.ADMIN else []
    return {"workspace": workspace, "role": role, "members": members, "form": form, "invitations": invitations}


@login_required
@require_POST
def member_add(request: HttpRequest, pk: int) -> HttpResponse:
    workspace, role = _membership_or_404(request, pk)
    # Refused before the form is read (the service checks it again).
    require_admin(user=request.user, workspace_id=workspace.pk, action="add members")
    form = MemberForm(request.POST)
    if form.is_valid():
        username, new_role = form.cleaned_data["username"], form.cleaned_data["role"]
        try:
            member = membership_invite(actor=request.user, workspace=workspace, username=username, role=new_role)
        except ValidationError as exc:
            form.add_error("role", exc)
        else:
            if member is not None:
                messages.success(request, f"{username} is now {new_role} here.")
            else:
                # The same words whether or not the login exists: the form tells nobody which names do.
                messages.success(
                    request, f"If “{username}” has an account, they are invited as {new_role}: "
                    "they join when they accept it on their Workspaces page."
                )
            return redirect("workspaces:detail", pk=pk)
    return render(request, "workspaces/detail.html", _detail_context(workspace, role, form), status=400)


@login_required
@require_POST
def invitation_answer(request: HttpRequest, pk: int, answer: str) -> HttpResponse:
    invitation = get_object_or_404(invitations_for(user=request.user), pk=pk)
    if answer == "accept":
        invitation_accept(user=request.user, invitation=invitation)
        messages.success(request, f"You joined “{invitation.workspace.name}” as {invitation.role}.")
        return redirect("workspaces:detail", pk=invitation.workspace_id)
    invitation_decline(user=request.user, invitation=invitation)
    messages.success(request, f"Declined the invitation to “{invitation.workspace.name}”.")
    return redirect("workspaces:list")


@login_required
@require_POST
def invitation_withdraw(request: HttpRequest, pk: int, invitation_id: int) -> HttpResponse:
    workspace, _ = _membership_or_404(request, pk)
    invitation = get_object_or_404(Invitation, pk=invitation_id, workspace=workspace)
    invitation_revoke(actor=request.user, invitation=invitation)
    messages.success(request, "Withdrew the invitation.")
    return redirect("workspaces:detail", pk=pk)


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
