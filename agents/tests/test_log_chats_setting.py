"""The opt-in to keep an agent's chats: set in the edit form and through the API."""
from __future__ import annotations

import json

import pytest
from django.test import Client

from agents.models import Agent
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db


def test_the_edit_form_turns_chat_logging_on_and_off(alice, agent) -> None:
    client = Client()
    client.force_login(alice)
    url = f"/agents/{agent.pk}/edit/"
    assert 'name="log_chats"' in client.get(url).content.decode()
    form = {"name": "Support", "system_prompt": "You help customers.", "log_chats": "on"}
    assert client.post(url, form).status_code == 302
    assert Agent.objects.get(pk=agent.pk).log_chats is True
    del form["log_chats"]
    client.post(url, form)
    assert Agent.objects.get(pk=agent.pk).log_chats is False


def test_the_api_reads_and_changes_chat_logging(alice, agent) -> None:
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_token_create(user=alice, name='x')[1]}"}
    url = f"/api/agents/{agent.pk}"
    assert Client().get(url, **auth).json()["log_chats"] is False
    response = Client().patch(url, json.dumps({"log_chats": True}), content_type="application/json", **auth)
    assert response.status_code == 200 and response.json()["log_chats"] is True
    Client().patch(url, json.dumps({"log_chats": None}), content_type="application/json", **auth)
    assert Agent.objects.get(pk=agent.pk).log_chats is True  # null leaves it as it is
