"""A big conversation file is imported by a worker, with progress, instead of holding a web thread."""
from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from conversations.models import Conversation, ConversationImport
from conversations.services import conversation_import_run, conversations_import_start
from masscer.tests.web import eager_celery  # noqa: F401 - fixture
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db


def chats(count: int, bad: int = 0) -> bytes:
    good = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(count)]
    broken = [{"messages": [{"role": "wizard", "content": "?"}]} for _ in range(bad)]
    return "\n".join(json.dumps(item) for item in good + broken).encode()


@pytest.fixture(autouse=True)
def small_threshold(settings: Any, tmp_path: Any) -> None:
    settings.MASSCER_IMPORT_BACKGROUND_OVER = 5
    settings.MEDIA_ROOT = tmp_path


def test_a_small_file_is_still_imported_at_once(alice) -> None:
    report = conversations_import_start(owner=alice, data=chats(5), filename="c.jsonl")
    assert len(report.imported) == 5  # type: ignore[union-attr]
    assert not ConversationImport.objects.exists()


@pytest.mark.usefixtures("eager_celery")
def test_a_big_file_is_queued_and_a_worker_imports_all_of_it(
    alice, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        queued = conversations_import_start(owner=alice, data=chats(250, bad=3), filename="c.jsonl")
    assert isinstance(queued, ConversationImport)
    queued.refresh_from_db()
    assert (queued.status, queued.total, queued.done, queued.imported) == ("done", 250, 250, 250)
    assert len(queued.problems) == 3 and not queued.file
    assert Conversation.objects.filter(owner=alice).count() == 250


def test_an_unreadable_big_file_is_refused_and_leaves_no_row(alice) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        conversations_import_start(owner=alice, data=b"{not json", filename="c.json")
    assert not ConversationImport.objects.exists()


def test_running_an_import_twice_imports_nothing_twice(alice) -> None:
    queued = conversations_import_start(owner=alice, data=chats(120), filename="c.jsonl")
    conversation_import_run(import_id=queued.pk)
    again = conversation_import_run(import_id=queued.pk)
    assert again.status == "done" and Conversation.objects.count() == 120


def test_a_dead_workers_import_resumes_after_its_last_batch(alice, settings) -> None:
    from datetime import timedelta

    from django.utils import timezone

    queued = conversations_import_start(owner=alice, data=chats(150), filename="c.jsonl")
    conversation_import_run(import_id=queued.pk)
    # Now as if its worker had died after committing the first batch (and its file still there):
    late = list(Conversation.objects.order_by("id").values_list("id", flat=True)[100:])
    Conversation.objects.filter(id__in=late).delete()
    ConversationImport.objects.filter(pk=queued.pk).update(
        status="running", done=100, imported=100, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    with open(settings.MEDIA_ROOT / "imports.jsonl", "wb") as handle:
        handle.write(chats(150))
    ConversationImport.objects.filter(pk=queued.pk).update(file="imports.jsonl")
    finished = conversation_import_run(import_id=queued.pk)
    assert (finished.status, finished.done, finished.imported) == ("done", 150, 150)
    assert Conversation.objects.count() == 150


@pytest.mark.usefixtures("eager_celery")
def test_the_import_page_shows_the_progress_and_charlie_gets_404(alice, charlie,
                                                                 django_capture_on_commit_callbacks) -> None:
    client = Client()
    client.force_login(alice)
    upload = SimpleUploadedFile("c.jsonl", chats(20), content_type="application/json")
    with django_capture_on_commit_callbacks(execute=True):
        body = client.post("/conversations/import/", {"files": [upload]}).content.decode()
    assert "Importing c.jsonl" in body and "of 20 conversations worked through" in body
    row = ConversationImport.objects.get()
    assert "20</strong> of 20" in client.get(f"/conversations/imports/{row.pk}/").content.decode()
    outsider = Client()
    outsider.force_login(charlie)
    assert outsider.get(f"/conversations/imports/{row.pk}/").status_code == 404


@pytest.mark.usefixtures("eager_celery")
def test_the_api_answers_202_and_the_progress(alice, django_capture_on_commit_callbacks) -> None:
    token = api_token_create(user=alice, name="script")[1]
    headers = {"Authorization": f"Bearer {token}"}
    upload = SimpleUploadedFile("c.jsonl", chats(30), content_type="application/json")
    with django_capture_on_commit_callbacks(execute=True):
        response = Client().post("/api/conversations/import", {"file": upload}, headers=headers)
    assert response.status_code == 202 and response.json()["total"] == 30
    progress = Client().get(f"/api/conversations/imports/{response.json()['id']}", headers=headers).json()
    assert (progress["status"], progress["done"], progress["imported"]) == ("done", 30, 30)


@pytest.mark.usefixtures("eager_celery")
def test_an_import_that_breaks_ends_failed_with_the_reason(alice, django_capture_on_commit_callbacks) -> None:
    from unittest import mock

    from conversations import services

    broken = mock.patch.object(services, "_import_one", side_effect=RuntimeError("disk on fire"))
    with broken, contextlib.suppress(RuntimeError), django_capture_on_commit_callbacks(execute=True):
        conversations_import_start(owner=alice, data=chats(10), filename="c.jsonl")
    row = ConversationImport.objects.get()
    assert row.status == "failed" and "disk on fire" in row.error and not row.file


@pytest.mark.usefixtures("eager_celery")
def test_the_sweeper_resends_an_import_whose_message_was_lost(alice) -> None:
    """Queued, but its task never reached a worker (a broker restart): the sweeper sends it again."""
    from datetime import timedelta

    from django.utils import timezone

    from training.services import sweep

    queued = conversations_import_start(owner=alice, data=chats(40), filename="c.jsonl")  # its task is never sent
    assert queued.status == "queued"
    assert sweep()["conversation_imports"] == 0  # not yet overdue
    ConversationImport.objects.filter(pk=queued.pk).update(enqueued_at=timezone.now() - timedelta(minutes=5))
    assert sweep()["conversation_imports"] == 1
    queued.refresh_from_db()
    assert (queued.status, queued.done, queued.imported) == ("done", 40, 40)
    assert Conversation.objects.count() == 40
