"""Upload limits on every upload path (documents page, conversation import, API): too many files
or too large a file is refused with the reason, and a refused upload leaves no row and no file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from conversations.models import Conversation
from documents.models import Document
from masscer.tests import web
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db

LIMIT = 3
CHATS = b'[{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}]'


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "uploads"
    return settings.MEDIA_ROOT


@pytest.fixture
def limit(settings: Any) -> int:
    """Three files per request, enforced where production enforces it: Django's parser stops at 4."""
    settings.MASSCER_MAX_UPLOAD_FILES = LIMIT
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = LIMIT
    return LIMIT


def stored_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()] if media.exists() else []


def notes(count: int, data: bytes = b"Some notes about brakes.") -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(f"n{i}.txt", data, content_type="text/plain") for i in range(count)]


def chats(count: int) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(f"c{i}.json", CHATS, content_type="application/json") for i in range(count)]


def logged_in(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def bearer(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token_create(user=user, name='tests')[1]}"}


# --- too many files ------------------------------------------------------------------------------


def test_more_files_than_the_limit_are_refused_on_the_documents_page_and_nothing_is_stored(alice, limit, media) -> None:
    response = logged_in(alice).post("/documents/", {"files": notes(limit + 1)})
    body = response.content.decode()
    assert response.status_code == 400
    assert "More than 3 files were sent; at most 3 can be uploaded at once." in body
    assert "Drop files here to upload" in body  # the upload page itself, to try again
    assert not Document.objects.exists()
    assert stored_files(media) == []


def test_as_many_files_as_the_limit_are_uploaded(alice, limit, media) -> None:
    response = logged_in(alice).post("/documents/", {"files": notes(limit)}, follow=True)
    assert response.redirect_chain == [("/documents/", 302)]
    assert "Uploaded n0.txt, n1.txt, n2.txt." in response.content.decode()
    assert Document.objects.filter(owner=alice).count() == limit
    assert len(stored_files(media)) == limit


def test_a_lowered_limit_counts_the_files_django_has_read(alice, settings, media) -> None:
    # MASSCER_MAX_UPLOAD_FILES below Django's own limit: the middleware counts.
    settings.MASSCER_MAX_UPLOAD_FILES = 2
    response = logged_in(alice).post("/documents/", {"files": notes(3)})
    assert response.status_code == 400
    assert "3 files were sent; at most 2 can be uploaded at once." in response.content.decode()
    assert not Document.objects.exists() and stored_files(media) == []


def test_the_refusal_comes_before_the_csrf_check_and_shows_no_traceback(alice, limit, settings, media) -> None:
    # The CSRF middleware reads the body first in production; with DEBUG on (the default
    # stack) Django would answer TooManyFilesSent with its traceback page.
    settings.DEBUG = True
    client = logged_in(alice, enforce_csrf_checks=True)
    client.get("/documents/")
    token = client.cookies["csrftoken"].value
    response = client.post("/documents/", {"files": notes(limit + 1), "csrfmiddlewaretoken": token})
    body = response.content.decode()
    assert response.status_code == 400
    assert "at most 3 can be uploaded at once" in body
    assert "Traceback" not in body and "TooManyFilesSent" not in body
    assert not Document.objects.exists() and stored_files(media) == []


def test_an_htmx_upload_gets_the_page_with_the_reason_to_swap_in(alice, limit) -> None:
    response = logged_in(alice).post("/documents/", {"files": notes(limit + 1)}, headers={"HX-Request": "true"})
    assert response.status_code == 400  # the page's htmx config swaps 400 answers in
    assert '<main id="main"' in response.content.decode()
    assert "at most 3 can be uploaded at once" in response.content.decode()


def test_more_conversation_files_than_the_limit_are_refused_and_nothing_is_imported(alice, limit) -> None:
    response = logged_in(alice).post("/conversations/import/", {"files": chats(limit + 1), "format": ""})
    body = response.content.decode()
    assert response.status_code == 400
    assert "More than 3 files were sent; at most 3 can be uploaded at once." in body
    assert "Drop conversation files here" in body
    assert not Conversation.objects.exists()


def test_as_many_conversation_files_as_the_limit_are_imported(alice, limit) -> None:
    response = logged_in(alice).post("/conversations/import/", {"files": chats(limit), "format": ""})
    assert response.status_code == 200
    assert response.content.decode().count("data-import-report") == limit
    assert Conversation.objects.filter(owner=alice).count() == limit


def test_a_post_only_page_answers_too_many_files_with_a_page_of_its_own(alice, limit) -> None:
    doc = web.document(alice)
    response = logged_in(alice).post(f"/documents/{doc.pk}/delete/", {"files": notes(limit + 1)})
    assert response.status_code == 400
    assert "at most 3 can be uploaded at once" in response.content.decode()
    assert Document.objects.filter(pk=doc.pk).exists()


@pytest.mark.parametrize(
    ("path", "files"), [("/api/documents", notes), ("/api/conversations/import", chats)], ids=["documents", "import"]
)
def test_the_api_refuses_more_files_than_the_limit_with_a_json_reason(alice, limit, media, path, files) -> None:
    response = Client().post(path, {"file": files(limit + 1)}, headers=bearer(alice))
    assert response.status_code == 400
    assert response.json() == {
        "detail": "More than 3 files were sent; at most 3 can be uploaded at once. Upload them in smaller batches."
    }
    assert not Document.objects.exists() and not Conversation.objects.exists()
    assert stored_files(media) == []


@pytest.mark.parametrize(
    ("path", "files"), [("/api/documents", notes), ("/api/conversations/import", chats)], ids=["documents", "import"]
)
def test_the_api_takes_one_file_per_request_and_says_so(alice, limit, media, path, files) -> None:
    response = Client().post(path, {"file": files(2)}, headers=bearer(alice))
    assert response.status_code == 400
    assert response.json()["detail"] == "Send one file per request (2 were sent)."
    assert not Document.objects.exists() and not Conversation.objects.exists()
    assert stored_files(media) == []
    one = Client().post(path, {"file": files(1)}, headers=bearer(alice))
    assert one.status_code == 201


# --- too large a file ----------------------------------------------------------------------------


def test_an_oversized_file_on_the_documents_page_leaves_no_file(alice, settings, media) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 100
    big = SimpleUploadedFile("big.txt", b"x" * 101, content_type="text/plain")
    response = logged_in(alice).post("/documents/", {"files": [big]})
    assert response.status_code == 400
    assert "&#x27;big.txt&#x27; is 0.0 MB; the limit is 0.0 MB." in response.content.decode()
    assert not Document.objects.exists() and stored_files(media) == []


def test_an_oversized_file_among_good_ones_is_the_only_one_not_stored(alice, settings, media) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 100
    big = SimpleUploadedFile("big.txt", b"x" * 101, content_type="text/plain")
    response = logged_in(alice).post("/documents/", {"files": [*notes(1), big]})
    assert response.status_code == 200
    assert "big.txt</strong> was not uploaded" in response.content.decode()
    assert list(Document.objects.values_list("filename", flat=True)) == ["n0.txt"]
    assert len(stored_files(media)) == 1


def test_an_oversized_file_through_the_api_is_413_and_leaves_no_file(alice, settings, media) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 100
    response = Client().post("/api/documents", {"file": notes(1, b"x" * 101)}, headers=bearer(alice))
    assert response.status_code == 413
    assert response.json()["detail"] == "'n0.txt' is 0.0 MB; the limit is 0.0 MB."
    assert not Document.objects.exists() and stored_files(media) == []


def test_an_oversized_conversation_file_is_refused_and_imports_nothing(alice, settings) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 50
    big = SimpleUploadedFile("big.json", CHATS, content_type="application/json")
    response = logged_in(alice).post("/conversations/import/", {"files": [big], "format": ""})
    assert response.status_code == 400
    assert "big.json: the file is" in response.content.decode() and "the limit is" in response.content.decode()
    assert not Conversation.objects.exists()


# --- other unreadable requests -------------------------------------------------------------------


def test_other_requests_django_cannot_read_get_a_page_in_words(alice, settings) -> None:
    # Django answers these itself (handler400 renders 400.html without a request).
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 2
    response = logged_in(alice).post("/documents/", {"a": "1", "b": "2", "c": "3"})
    assert response.status_code == 400
    assert "The request could not be read." in response.content.decode()
