"""The form of the prompt template pages: the texts, what the template is the default for, and
the chunk to preview it on. The rules are the service's (`services.templates`); this only reads input."""
from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet

from agents.models import Agent
from conversations.models import Conversation
from documents.models import Document
from masscer.lib.llm import prompts
from workspaces.forms import WorkspacePickerMixin

from .services.templates import MAX_TEMPLATE_CHARS, NAME_CHARS, Roles

# Sources offered to preview on, most recent first.
PREVIEW_SOURCES = 50
PLACEHOLDER_HELP = "Placeholders: " + ", ".join("{" + name + "}" for name in prompts.USER_PLACEHOLDERS) + "."


class TemplateForm(forms.Form):
    system = forms.CharField(
        label="System message",
        required=False,
        max_length=MAX_TEMPLATE_CHARS,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono"}),
        help_text="Empty: the built-in system message. Placeholders: "
        + ", ".join("{" + name + "}" for name in prompts.SYSTEM_PLACEHOLDERS) + ".",
    )
    user = forms.CharField(
        label="User message",
        max_length=MAX_TEMPLATE_CHARS,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 16, "class": "mono"}),
        help_text=PLACEHOLDER_HELP + " {source} and {count} are required.",
    )
    is_default = forms.BooleanField(
        label="Default of the workspace", required=False,
        help_text="Jobs that name no template and whose agents have none use it (admins choose this).",
    )  # fmt: skip
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.none(), required=False, empty_label="No agent",
        help_text="Jobs for this agent use the template unless they name another.",
    )  # fmt: skip
    source = forms.ChoiceField(label="Preview on", required=False, choices=())
    index = forms.IntegerField(label="Chunk", min_value=0, max_value=1_000_000, initial=0, required=False)

    def __init__(self, *args: Any, agents: QuerySet[Agent], sources: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = agents  # type: ignore[attr-defined]
        self.fields["source"].choices = [("", "Choose a document or conversation"), *sources]  # type: ignore[attr-defined]

    def roles(self) -> Roles:
        return Roles(is_default=self.cleaned_data["is_default"], agent=self.cleaned_data["agent"])

    def preview_source(self) -> tuple[str, int] | None:
        """("document" | "conversation", id) of the chosen source, or None."""
        kind, _, pk = (self.cleaned_data.get("source") or "").partition(":")
        return (kind, int(pk)) if kind in ("document", "conversation") and pk.isdigit() else None


class TemplateCreateForm(WorkspacePickerMixin, TemplateForm):
    name = forms.CharField(max_length=NAME_CHARS, help_text="Jobs, the API and `train --template` name it so.")

    field_order = ["name", "workspace"]


def preview_sources(documents: QuerySet[Document], conversations: QuerySet[Conversation]) -> list[tuple[str, str]]:
    """Choices "document:<id>" and "conversation:<id>" among the sources given (scoped by the caller)."""
    ready = documents.filter(status=Document.Status.READY).order_by("-id")[:PREVIEW_SOURCES]
    recent = conversations.order_by("-id")[:PREVIEW_SOURCES]
    return [
        *((f"document:{d.pk}", f"Document: {d.title}") for d in ready),
        *((f"conversation:{c.pk}", f"Conversation: {c.title or c.pk}") for c in recent),
    ]

