from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client
from django.urls import reverse

from conversations.services import conversations_import

from .conftest import sample

pytestmark = pytest.mark.django_db


def test_the_admin_lists_and_shows_conversations_with_their_messages(
    admin_client: Client, alice: AbstractBaseUser
) -> None:
    report = conversations_import(owner=alice, data=sample("openai-messages.jsonl"), filename="openai-messages.jsonl")

    listing = admin_client.get(reverse("admin:conversations_conversation_changelist"), {"q": "Warranty"})
    detail = admin_client.get(reverse("admin:conversations_conversation_change", args=[report.imported[0].id]))

    assert listing.status_code == 200
    assert "Warranty on a cracked frame" in listing.content.decode()
    assert detail.status_code == 200
    assert "lookup_policy" in detail.content.decode()
