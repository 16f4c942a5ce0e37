"""Conversation pages: write by hand, edit, import with its report, scoping, query counts."""
from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from conversations.models import Conversation
from masscer.tests import web
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture

from .conftest import as_json, sample

pytestmark = pytest.mark.django_db


def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


@pytest.mark.parametrize("url", ["/conversations/", "/conversations/new/", "/conversations/import/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, url) -> None:
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("name", ["conversations:detail", "conversations:edit", "conversations:delete"])
def test_it_sends_anonymous_visitors_from_a_conversation_to_the_login_page(client, alice, name) -> None:
    conv = web.conversation(alice)
    response = client.get(reverse(name, args=[conv.pk]))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_creates_a_conversation_by_hand_with_roles(client, alice) -> None:
    data = {
        "title": "Refund chat",
        "tags": "billing, refunds",
        "messages-TOTAL_FORMS": "3",
        "messages-INITIAL_FORMS": "0",
        "messages-0-role": "user",
        "messages-0-content": "Can I get a refund?",
        "messages-1-role": "assistant",
        "messages-1-content": "Yes, within 14 days.",
        "messages-2-role": "user",
        "messages-2-content": "",
    }
    response = logged_in(client, alice).post("/conversations/new/", data, follow=True)
    conv = Conversation.objects.get()
    assert response.redirect_chain == [(f"/conversations/{conv.pk}/", 302)]
    assert conv.title == "Refund chat" and conv.tags == ["billing", "refunds"]
    assert list(conv.messages.values_list("role", "content")) == [
        ("user", "Can I get a refund?"),
        ("assistant", "Yes, within 14 days."),
    ]
    body = response.content.decode()
    assert "Can I get a refund?" in body and "Yes, within 14 days." in body


def test_a_conversation_without_messages_is_refused_with_a_reason(client, alice) -> None:
    data = {"title": "Empty", "messages-TOTAL_FORMS": "1", "messages-INITIAL_FORMS": "0", "messages-0-role": "user"}
    response = logged_in(client, alice).post("/conversations/new/", data)
    assert response.status_code == 400
    assert "Write at least one message." in response.content.decode()
    assert not Conversation.objects.exists()


def test_it_edits_the_title_and_appends_a_message(client, alice) -> None:
    conv = web.conversation(alice)
    logged_in(client, alice)
    client.post(f"/conversations/{conv.pk}/edit/", {"save_details": "1", "title": "Gold plan", "tags": "plans"})
    response = client.post(
        f"/conversations/{conv.pk}/edit/",
        {"add_message": "1", "new-role": "user", "new-content": "And the Silver plan?"},
        follow=True,
    )
    conv.refresh_from_db()
    assert conv.title == "Gold plan" and conv.tags == ["plans"]
    assert conv.messages.last().content == "And the Silver plan?"
    assert "Added a user message." in response.content.decode()


def test_an_empty_message_is_refused_next_to_its_field(client, alice) -> None:
    conv = web.conversation(alice)
    response = logged_in(client, alice).post(
        f"/conversations/{conv.pk}/edit/", {"add_message": "1", "new-role": "user", "new-content": "  "}
    )
    assert "a message needs text" in response.content.decode()
    assert conv.messages.count() == 2


def test_it_imports_a_sharegpt_file_and_shows_the_report(client, alice) -> None:
    upload = SimpleUploadedFile("sharegpt.json", sample("sharegpt.json"), content_type="application/json")
    response = logged_in(client, alice).post("/conversations/import/", {"files": [upload], "format": ""})
    body = response.content.decode()
    assert response.status_code == 200
    assert "Import report: sharegpt.json" in body and "format: sharegpt" in body
    assert "<strong>2</strong> conversations imported" in body
    assert Conversation.objects.filter(owner=alice).count() == 2
    assert "Train with the imported conversations" in body


def test_the_import_report_lists_problems_with_index_and_reason(client, alice) -> None:
    data = as_json(
        [
            {"id": "good", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
            {"id": "bad", "conversations": [{"from": "alien", "value": "Zorg"}]},
        ]
    )
    upload = SimpleUploadedFile("mixed.json", data, content_type="application/json")
    body = logged_in(client, alice).post("/conversations/import/", {"files": [upload]}).content.decode()
    assert "<strong>1</strong> conversation imported" in body
    assert '<td class="mono">bad</td>' in body


def test_an_unreadable_file_says_why(client, alice) -> None:
    upload = SimpleUploadedFile("notes.json", b"this is not json", content_type="application/json")
    response = logged_in(client, alice).post("/conversations/import/", {"files": [upload]})
    assert response.status_code == 400
    assert "notes.json: not a recognised conversation file" in response.content.decode()
    assert not Conversation.objects.exists()


@pytest.mark.parametrize(
    "url", ["/conversations/{pk}/", "/conversations/{pk}/edit/", "/jobs/chunks/conversation/{pk}/"]
)
def test_it_hides_alices_conversations_from_charlie(client, alice, charlie, url) -> None:
    conv = web.conversation(alice)
    assert logged_in(client, charlie).get(url.format(pk=conv.pk)).status_code == 404


def test_charlie_cannot_add_messages_to_alices_conversation(client, alice, charlie) -> None:
    conv = web.conversation(alice)
    response = logged_in(client, charlie).post(
        f"/conversations/{conv.pk}/edit/", {"add_message": "1", "new-role": "user", "new-content": "hi"}
    )
    assert response.status_code == 404 and conv.messages.count() == 2


def test_the_thread_shows_roles_and_content(client, alice) -> None:
    conv = web.conversation(alice)
    body = logged_in(client, alice).get(f"/conversations/{conv.pk}/").content.decode()
    assert 'class="bubble user"' in body and 'class="bubble assistant"' in body
    assert "What does the Gold plan include?" in body


def test_the_chunks_tab_previews_the_split_of_an_untrained_conversation(client, alice) -> None:
    conv = web.conversation(alice)
    body = logged_in(client, alice).get(f"/jobs/chunks/conversation/{conv.pk}/").content.decode()
    assert "Not split into chunks yet" in body and "messages 0–1" in body


def test_message_text_is_escaped(client, alice) -> None:
    conv = web.conversation(alice, title="<b>bold</b>")
    conv.messages.update(content="<script>alert(1)</script>")
    body = logged_in(client, alice).get(f"/conversations/{conv.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<b>bold</b>" not in body


@pytest.mark.parametrize("rows", [10, 200])
def test_the_list_runs_the_same_queries_for_10_and_200(client, alice, rows, django_assert_num_queries) -> None:
    web.conversations(alice, rows)
    logged_in(client, alice)
    # session, user, count, one page of rows (message counts annotated; owner and workspace joined)
    with django_assert_num_queries(4):
        response = client.get("/conversations/")
    assert response.content.decode().count('<tr id="conversation-') == min(rows, 25)
