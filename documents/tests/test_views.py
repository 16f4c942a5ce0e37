"""Document pages through the Django test client: login, scoping, uploads with per-file results, query counts."""
from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from documents.models import Document
from masscer.tests import web
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from testing.members import add_member
from workspaces.models import Membership
from workspaces.services import workspace_personal

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path


def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


@pytest.mark.parametrize("name", ["documents:detail", "documents:download", "documents:delete"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, alice, name) -> None:
    doc = web.document(alice)
    response = client.get(reverse(name, args=[doc.pk]))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_sends_anonymous_visitors_from_the_list_to_the_login_page(client) -> None:
    response = client.get("/documents/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/documents/"


def test_it_lists_documents_with_status_and_the_error_of_a_failed_one(client, alice) -> None:
    web.document(alice, title="Handbook")
    web.document(alice, title="Scan", status=Document.Status.FAILED)
    response = logged_in(client, alice).get("/documents/")
    body = response.content.decode()
    assert "Handbook" in body and "Ready" in body
    assert "Scan" in body and "The PDF has no extractable text." in body
    assert "Train with this document" in body


def test_it_uploads_several_files_and_says_why_one_failed(client, alice) -> None:
    good = SimpleUploadedFile("notes.txt", b"Some text about brakes.", content_type="text/plain")
    empty = SimpleUploadedFile("empty.txt", b"", content_type="text/plain")
    response = logged_in(client, alice).post("/documents/", {"files": [good, empty]})
    body = response.content.decode()
    assert response.status_code == 200
    assert "notes.txt</strong> uploaded" in body
    assert "empty.txt</strong> was not uploaded: &#x27;empty.txt&#x27; is empty." in body
    assert list(Document.objects.values_list("filename", flat=True)) == ["notes.txt"]


def test_a_fully_successful_upload_redirects_with_a_message(client, alice) -> None:
    files = [SimpleUploadedFile(f"n{i}.md", b"# Title\n\ntext", content_type="text/markdown") for i in range(2)]
    response = logged_in(client, alice).post("/documents/", {"files": files}, follow=True)
    assert response.redirect_chain == [("/documents/", 302)]
    assert "Uploaded n0.md, n1.md" in response.content.decode()
    assert Document.objects.filter(owner=alice).count() == 2


def test_an_upload_over_the_limit_is_refused_with_its_reason(client, alice, settings) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 10
    big = SimpleUploadedFile("big.txt", b"x" * 2048, content_type="text/plain")
    response = logged_in(client, alice).post("/documents/", {"files": [big]})
    assert response.status_code == 400
    assert "the limit is 0.0 MB" in response.content.decode()
    assert not Document.objects.exists()


def test_an_upload_without_files_asks_for_one(client, alice) -> None:
    response = logged_in(client, alice).post("/documents/", {})
    assert "Choose one or more files to upload." in response.content.decode()


def test_the_upload_form_needs_its_csrf_token(alice) -> None:
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    response = strict.post("/documents/", {"files": [SimpleUploadedFile("a.txt", b"abc")]})
    assert response.status_code == 403
    assert 'name="csrfmiddlewaretoken"' in strict.get("/documents/").content.decode()


def test_the_list_polls_while_a_document_is_being_read(client, alice) -> None:
    web.document(alice, status=Document.Status.EXTRACTING)
    body = logged_in(client, alice).get("/documents/").content.decode()
    assert 'hx-trigger="every 2s"' in body
    partial = client.get("/documents/?partial=table", headers={"HX-Request": "true"})
    assert partial.content.decode().lstrip().startswith('<div id="doc-table"')


def test_the_list_stops_polling_when_nothing_is_in_progress(client, alice) -> None:
    web.document(alice)
    assert "every 2s" not in logged_in(client, alice).get("/documents/").content.decode()


def test_a_document_page_shows_its_pages(client, alice) -> None:
    doc = web.document(alice, pages=3)
    body = logged_in(client, alice).get(f"/documents/{doc.pk}/").content.decode()
    assert "Page 3" in body and "149 euros per year" in body


def test_the_chunks_tab_shows_token_counts_and_page_locators(client, alice) -> None:
    the_job = web.job(alice)
    web.completions(the_job, 1)
    doc = the_job.documents.get()
    body = logged_in(client, alice).get(reverse("training:document_chunks", args=[doc.pk])).content.decode()
    assert "Chunk 1" in body and "40 tokens" in body and "p. 1" in body


def test_the_chunks_tab_of_an_unsplit_document_projects_its_chunks(client, alice) -> None:
    doc = web.document(alice)
    body = logged_in(client, alice).get(reverse("training:document_chunks", args=[doc.pk])).content.decode()
    assert "Not split into chunks yet" in body and "about 1 chunk" in body


@pytest.mark.parametrize(
    "url", ["/documents/{pk}/", "/documents/{pk}/download/", "/jobs/chunks/document/{pk}/"]
)
def test_it_hides_alices_documents_from_charlie(client, alice, charlie, url) -> None:
    doc = web.document(alice)
    assert logged_in(client, charlie).get(url.format(pk=doc.pk)).status_code == 404


def test_charlie_cannot_delete_alices_document(client, alice, charlie) -> None:
    doc = web.document(alice)
    assert logged_in(client, charlie).post(f"/documents/{doc.pk}/delete/").status_code == 404
    assert Document.objects.filter(pk=doc.pk).exists()
    assert "Manual" not in client.get("/documents/").content.decode()


def test_bob_sees_alices_document_as_a_member_of_her_workspace(client, alice, bob) -> None:
    doc = web.document(alice, title="Shared handbook")
    add_member(actor=alice, workspace=workspace_personal(user=alice), user=bob, role=Membership.Role.MEMBER)
    assert "Shared handbook" in logged_in(client, bob).get("/documents/").content.decode()
    assert client.get(f"/documents/{doc.pk}/").status_code == 200


def test_it_downloads_the_original_file(client, alice) -> None:
    from documents.services import document_create

    doc = document_create(owner=alice, fileobj=SimpleUploadedFile("a.txt", b"hello"), filename="a.txt", enqueue=False)
    response = logged_in(client, alice).get(f"/documents/{doc.pk}/download/")
    assert response["Content-Disposition"] == 'attachment; filename="a.txt"'
    assert b"".join(response.streaming_content) == b"hello"


def test_it_deletes_a_document(client, alice) -> None:
    doc = web.document(alice)
    response = logged_in(client, alice).post(f"/documents/{doc.pk}/delete/", follow=True)
    assert "Deleted “Manual”." in response.content.decode()
    assert not Document.objects.filter(pk=doc.pk).exists()


def test_it_keeps_a_document_whose_completions_quote_it(client, alice) -> None:
    the_job = web.job(alice)
    web.completions(the_job, 1)
    doc = the_job.documents.get()
    response = logged_in(client, alice).post(f"/documents/{doc.pk}/delete/", follow=True)
    assert "has completions made from it" in response.content.decode()
    assert Document.objects.filter(pk=doc.pk).exists()


@pytest.mark.parametrize("rows", [10, 200])
def test_the_list_runs_the_same_queries_for_10_and_200(client, alice, rows, django_assert_num_queries) -> None:
    web.documents(alice, rows)
    logged_in(client, alice)
    # session, user, the workspace picker's workspaces, count, one page of rows (owner and workspace joined)
    with django_assert_num_queries(5):
        response = client.get("/documents/")
    assert response.status_code == 200
    assert response.content.decode().count('data-status="uploaded"') == min(rows, 25)
