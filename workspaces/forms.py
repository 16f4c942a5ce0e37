"""Forms of workspaces, and the workspace picker other apps' forms reuse."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from .models import Membership, Workspace
from .selectors import workspaces_for


class WorkspacePickerMixin(forms.Form):
    """Adds a `workspace` choice when the user belongs to more than one workspace.

    With one (or none) the field is left out and the object goes to the personal workspace.
    """

    def __init__(self, *args: Any, user: AbstractBaseUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = workspaces_for(user=user)
        if len(choices) > 1:
            personal = next((w for w in choices if w.personal_for_id == user.pk), None)
            self.fields["workspace"] = forms.ModelChoiceField(
                queryset=choices,
                initial=personal.pk if personal else None,
                empty_label=None,
                help_text="Everyone in the workspace can see and use it.",
            )

    def chosen_workspace(self) -> Workspace | None:
        return self.cleaned_data.get("workspace")


class WorkspaceForm(forms.Form):
    name = forms.CharField(max_length=200)


class MemberForm(forms.Form):
    username = forms.CharField(
        max_length=150, help_text="The person's login name. They join when they accept the invitation."
    )
    role = forms.ChoiceField(
        choices=Membership.Role.choices,
        initial=Membership.Role.MEMBER,
        help_text="Reviewers and admins approve and reject completions; admins also manage members.",
    )


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “nightly export script”.")
