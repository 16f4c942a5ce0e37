"""Forms of the conversations pages."""
from __future__ import annotations

from django import forms

from workspaces.forms import WorkspacePickerMixin

from .importers import ACCEPTED, FORMATS
from .models import Message

FORMAT_LABELS = {"openai": "OpenAI chat messages", "sharegpt": "ShareGPT", "chatgpt": "ChatGPT data export"}


def tags_from(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


class ConversationForm(WorkspacePickerMixin):
    title = forms.CharField(max_length=300, required=False)
    tags = forms.CharField(required=False, help_text="Comma-separated, e.g. billing, refunds.")


class ConversationEditForm(forms.Form):
    title = forms.CharField(max_length=300, required=False)
    tags = forms.CharField(required=False, help_text="Comma-separated, e.g. billing, refunds.")


class MessageForm(forms.Form):
    role = forms.ChoiceField(choices=Message.Role.choices, initial=Message.Role.USER)
    content = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))

    def has_text(self) -> bool:
        return bool(self.is_valid() and self.cleaned_data.get("content", "").strip())


MessageFormSet = forms.formset_factory(MessageForm, extra=2, max_num=500, absolute_max=1000)


class ImportForm(WorkspacePickerMixin):
    format = forms.ChoiceField(
        choices=[("", "Detect from the file")] + [(f, FORMAT_LABELS.get(f, f)) for f in FORMATS],
        required=False,
        help_text=f"Accepted: {ACCEPTED}.",
    )
