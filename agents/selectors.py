"""Reads of agents."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from .models import Agent


def agents_for(*, owner: AbstractBaseUser) -> QuerySet[Agent]:
    return Agent.objects.filter(owner=owner).order_by("name", "id")


def agent_by_slug(*, owner: AbstractBaseUser, slug: str) -> Agent | None:
    return Agent.objects.filter(owner=owner, slug=slug).first()
