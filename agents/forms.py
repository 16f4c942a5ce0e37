"""Forms of the agent pages."""
from __future__ import annotations

from typing import Any

from django import forms

from workspaces.forms import WorkspacePickerMixin

from .dashboard import EDITABLE


class AgentFields(forms.Form):
    name = forms.CharField(max_length=200)
    system_prompt = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="How the agent behaves in chat and in exported training data. Empty: the default prompt.",
    )
    model = forms.CharField(
        max_length=200, required=False, help_text="The model the agent chats with. Empty: the server's default."
    )
    temperature = forms.FloatField(
        min_value=0, max_value=2, required=False, help_text="Randomness of replies, 0–2. Empty: model default."
    )
    top_p = forms.FloatField(
        label="Top p", min_value=0, max_value=1, required=False, help_text="Nucleus sampling, 0–1."
    )
    max_tokens = forms.IntegerField(
        label="Max tokens", min_value=1, max_value=200_000, required=False, help_text="Longest reply, in tokens."
    )
    frequency_penalty = forms.FloatField(
        min_value=-2, max_value=2, required=False, help_text="−2 to 2: positive values discourage repetition."
    )
    context_budget = forms.IntegerField(
        label="Context budget", min_value=0, max_value=200_000, required=False,
        help_text="Tokens of approved material put in the agent's context per turn. Empty: 1,500.",
    )
    log_chats = forms.BooleanField(
        label="Keep chats as conversations", required=False,
        help_text="Chats held with the agent (its /v1 endpoint and the playground) are saved as conversations "
        "of this workspace, to review, train on or export.",
    )

    def params(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {key: data[key] for key in EDITABLE if key != "model"} | {"model": data["model"].strip()}


class AgentCreateForm(WorkspacePickerMixin, AgentFields):
    pass


class AgentEditForm(AgentFields):
    pass


MATERIAL_ACTIONS = {
    "assign": "Assign to this agent",
    "unassign": "Remove from this agent",
    "copy": "Also assign to…",
    "move": "Move to…",
    "rule": "Set the context rule…",
}
