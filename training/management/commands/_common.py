"""Shared bits of the command-line entry points (they sit on the top floor, like views)."""
from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

DEFAULT_CLI_USER = "demo"


def cli_user(username: str | None) -> AbstractBaseUser:
    """The account command-line work is done as (created on first use, no password)."""
    name = username or os.environ.get("MASSCER_CLI_USER") or DEFAULT_CLI_USER
    user, created = get_user_model().objects.get_or_create(username=name)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
