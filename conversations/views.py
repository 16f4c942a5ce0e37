"""Conversation pages: list, write by hand, edit, import with its report, the thread.

Chunks and training live in the training app (this app imports neither training nor agents);
the templates link to them by URL name.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from masscer.views import get_visible_or_404, id_or_none, paginate, posted
from workspaces.permissions import require_change
from workspaces.selectors import can_review

from .forms import ConversationEditForm, ConversationForm, ImportForm, MessageForm, MessageFormSet, tags_from
from .importers import human_size
from .models import Conversation, ConversationImport, Message
from .review import conversation_mark_reviewed, message_review
from .selectors import conversation_messages, conversations_for, imports_for
from .services import (
    ImportReport,
    conversation_create,
    conversation_delete,
    conversation_update,
    conversations_import_start,
    message_add,
)

MESSAGES_PER_PAGE = 100


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    rows = conversations_for(user=request.user).select_related("owner", "workspace")
    return render(request, "conversations/list.html", {"page": paginate(request, rows)})


def _filled_messages(formset: Any) -> list[dict[str, str]]:
    return [
        {"role": form.cleaned_data["role"], "content": form.cleaned_data["content"]}
        for form in formset.forms
        if form.cleaned_data.get("content", "").strip()
    ]


@login_required
@require_http_methods(["GET", "POST"])
def conversation_new(request: HttpRequest) -> HttpResponse:
    form = ConversationForm(posted(request), user=request.user)
    formset = MessageFormSet(posted(request), prefix="messages")
    if request.method == "POST" and form.is_valid() and formset.is_valid():
        if not _filled_messages(formset):
            form.add_error(None, "Write at least one message.")
            return render(request, "conversations/new.html", {"form": form, "formset": formset}, status=400)
        try:
            conversation = conversation_create(
                owner=request.user,
                workspace=form.chosen_workspace(),
                title=form.cleaned_data["title"],
                tags=tags_from(form.cleaned_data["tags"]),
                messages=_filled_messages(formset),
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Saved “{conversation}”.")
            return redirect("conversations:detail", pk=conversation.pk)
    return render(request, "conversations/new.html", {"form": form, "formset": formset})


@login_required
@require_GET
def conversation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_visible_or_404(
        Conversation.objects.select_related("owner", "workspace"), user=request.user, pk=pk
    )
    thread = paginate(request, conversation_messages(conversation=conversation), per_page=MESSAGES_PER_PAGE)
    context = {
        "conversation": conversation, "thread": thread, "tab": "thread",
        "can_review": can_review(user=request.user, workspace_id=conversation.workspace_id),
    }
    return render(request, "conversations/detail.html", context)


@login_required
@require_POST
def conversation_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Mark the conversation reviewed (fit for the multi-turn export) or take the mark back."""
    conversation = get_visible_or_404(Conversation.objects.all(), user=request.user, pk=pk)
    reviewed = request.POST.get("reviewed", "1") != "0"
    conversation_mark_reviewed(reviewer=request.user, conversation=conversation, reviewed=reviewed)
    messages.success(request, "Marked reviewed." if reviewed else "No longer marked reviewed.")
    return redirect("conversations:detail", pk=pk)


def _text(value: str | None) -> str | None:
    # Browsers send a textarea's line breaks as CRLF: an untouched text must not count as an edit.
    return value.replace("\r\n", "\n") if value is not None else None


@login_required
@require_POST
def conversation_turn(request: HttpRequest, pk: int) -> HttpResponse:
    """A reviewer's change to one assistant turn: its weight (learn from it or not) and/or its text."""
    conversation = get_visible_or_404(Conversation.objects.all(), user=request.user, pk=pk)
    position = id_or_none(request.POST.get("position"))
    message = Message.objects.select_related("conversation").filter(conversation=conversation, position=position)
    if not message.exists():
        return HttpResponse("No such message in this conversation.", status=400)
    weight = request.POST.get("weight", "")
    if weight not in ("", "0", "1"):
        return HttpResponse("A weight is 0 (context only) or 1 (learn from it).", status=400)
    try:
        message = message_review(
            reviewer=request.user, message=message.get(), weight=int(weight) if weight else None,
            content=_text(request.POST.get("content")),
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("conversations:detail", pk=pk)
    messages.success(request, f"Saved message #{message.position}.")
    return redirect(reverse("conversations:detail", args=[pk]) + f"#message-{message.position}")


@login_required
@require_http_methods(["GET", "POST"])
def conversation_edit(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_visible_or_404(Conversation.objects.all(), user=request.user, pk=pk)
    # The page is shown only to those the services will let save it (they check again).
    require_change(user=request.user, obj=conversation, action="edit it")
    initial = {"title": conversation.title, "tags": ", ".join(conversation.tags or [])}
    posted = request.POST if request.method == "POST" else None
    details = ConversationEditForm(posted if posted and "save_details" in posted else None, initial=initial)
    message = MessageForm(posted if posted and "add_message" in posted else None, prefix="new")
    if posted and "save_details" in posted and details.is_valid():
        try:
            conversation_update(
                actor=request.user,
                conversation=conversation,
                title=details.cleaned_data["title"],
                tags=tags_from(details.cleaned_data["tags"]),
            )
        except ValidationError as exc:
            details.add_error(None, exc)
        else:
            messages.success(request, "Saved the title and tags.")
            return redirect("conversations:edit", pk=pk)
    if posted and "add_message" in posted and message.is_valid():
        try:
            added = message_add(
                actor=request.user,
                conversation=conversation,
                role=message.cleaned_data["role"],
                content=message.cleaned_data["content"],
            )
        except ValidationError as exc:
            message.add_error("content", exc)
        else:
            messages.success(request, f"Added a {added.role} message.")
            return redirect("conversations:edit", pk=pk)
    thread = paginate(request, conversation_messages(conversation=conversation), per_page=MESSAGES_PER_PAGE)
    context = {"conversation": conversation, "details": details, "message": message, "thread": thread}
    return render(request, "conversations/edit.html", context)


@login_required
@require_POST
def conversation_remove(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_visible_or_404(Conversation.objects.all(), user=request.user, pk=pk)
    title = str(conversation)
    try:
        conversation_delete(actor=request.user, conversation=conversation)
    except ProtectedError:
        messages.error(
            request, f"“{title}” has completions made from it; they keep its text as evidence, so it stays."
        )
        return redirect("conversations:detail", pk=pk)
    messages.success(request, f"Deleted “{title}”.")
    return redirect("conversations:list")


def _import_file(request: HttpRequest, form: ImportForm, upload: Any) -> ImportReport | ConversationImport | str:
    limit = settings.MASSCER_MAX_UPLOAD_BYTES
    if upload.size > limit:
        # Refused before reading it into memory.
        return f"{upload.name}: the file is {human_size(upload.size)}; the limit is {human_size(limit)}."
    try:
        return conversations_import_start(
            owner=request.user,
            data=upload.read(),
            filename=upload.name,
            workspace=form.chosen_workspace(),
            fmt=form.cleaned_data["format"] or None,
        )
    except ValidationError as exc:
        return f"{upload.name}: {' '.join(exc.messages)}"


@login_required
@require_http_methods(["GET", "POST"])
def conversation_import(request: HttpRequest) -> HttpResponse:
    form = ImportForm(posted(request), user=request.user)
    reports: list[ImportReport] = []
    queued: list[ConversationImport] = []
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        uploads = request.FILES.getlist("files")
        if not uploads:
            form.add_error(None, "Choose a file to import.")
        for upload in uploads:
            outcome = _import_file(request, form, upload)
            if isinstance(outcome, str):
                errors.append(outcome)
            elif isinstance(outcome, ConversationImport):
                queued.append(outcome)
            else:
                reports.append(outcome)
    imported_ids = [item.id for report in reports for item in report.imported]
    context = {
        "form": form, "reports": reports, "queued": queued, "file_errors": errors, "imported_ids": imported_ids
    }
    status = 400 if errors and not reports and not queued else 200
    return render(request, "conversations/import.html", context, status=status)


@login_required
@require_GET
def import_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """A background import's progress; the page polls it until the import ends."""
    row = get_visible_or_404(imports_for(user=request.user), user=request.user, pk=pk)
    template = "conversations/_import_progress.html" if request.htmx else "conversations/import_progress.html"
    return render(request, template, {"item": row})
